"""The invoice reports on SQLite and PostgreSQL: one row per CFDI, read from the XML in the store."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
import pytest
from sqlalchemy import Connection, create_engine, insert, select, update

from backup_pipeline.archive.plan import plan_files
from backup_pipeline.datasets.base import ExtractContext, Kind
from backup_pipeline.datasets.invoices import (
    ISSUED,
    PROBLEM_XML_MISSING,
    RECEIVED,
    archive_names,
)
from backup_pipeline.platform import tables as t
from backup_pipeline.rules.archive_entries import KIND_CFDI_PDF, KIND_CFDI_XML
from backup_pipeline.rules.cfdi import PROBLEM_BROKEN, PROBLEM_TOTALS_PREFIX
from backup_pipeline.storage import ObjectInfo, ObjectNotFound, ObjectStore

SAMPLES = Path(__file__).parents[1] / "data" / "cfdi"
CREATED = datetime(2025, 1, 1)

UUID_INGRESO = "A1D3E6C1-580A-4265-BF6F-A682314EDCA4"
UUID_EGRESO = "07F9E439-4389-4B7C-AB76-830C1CC2C909"
UUID_PAGO = "298EDCE9-7F1A-47A8-B657-1B8D0D4865AD"
UUID_33 = "616E169A-4845-4EB1-AEE4-A8586306529F"
UUID_BOM = "6A271CA8-DAFB-4D00-937D-04F7B8DBB9C5"
UUID_MISSING = "11111111-2222-3333-4444-555555555555"
UUID_BROKEN = "66666666-7777-8888-9999-AAAAAAAAAAAA"
UUID_USD_PLATFORM = "FFFFFFFF-050B-4AA3-94AD-755E63B5EC4A"  # not the XML's FD5FAC76-...
UUID_OTHER_CLINIC = "8502C8A6-1AA1-42AA-8668-BB48CFC1603B"
UUID_CEDULAR = "C7E19B52-0A3F-4D6C-8B2E-91F4A6D3E805"  # 4.0, fees with cedular withheld
UUID_ISH = "3F2A9C1E-7B4D-4E8A-9F61-2C5D8E0B7A13"  # 3.3, lodging with the 3% ISH


class DictStore(ObjectStore):
    """Objects in a dict: the store interface with nothing behind it."""

    url = "memory://platform-files"

    def __init__(self, objects: dict[str, bytes] | None = None) -> None:
        self.objects = dict(objects or {})

    def check_reachable(self) -> None:
        return None

    def open_read(self, key: str) -> BinaryIO:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError("invalid object key")
        if key not in self.objects:
            raise ObjectNotFound("no object at the requested key")
        return io.BytesIO(self.objects[key])

    def open_write(
        self, key: str, content_type: str | None = None
    ) -> AbstractContextManager[BinaryIO]:
        @contextmanager
        def writer() -> Iterator[BinaryIO]:
            buffer = io.BytesIO()
            yield buffer
            self.objects[key] = buffer.getvalue()

        return writer()

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for key, data in sorted(self.objects.items()):
            if key.startswith(prefix):
                yield ObjectInfo(key=key, size=len(data), updated=CREATED)

    def delete(self, key: str) -> bool:
        return self.objects.pop(key, None) is not None

    def signed_url(self, key: str, expires_in: timedelta, download_name: str) -> str:
        return f"{self.url}/{key}"


class BrokenStore(DictStore):
    """A store whose backend is down: every read fails with something other than 'not found'."""

    def open_read(self, key: str) -> BinaryIO:
        raise ConnectionError("storage backend unavailable")


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def cfdi_row(id: int, subscription_id: int, direction: str, uuid: str, **values: Any) -> dict:
    row = {
        "id": id,
        "subscription_id": subscription_id,
        "direction": direction,
        "uuid": uuid,
        "xml_storage_key": f"cfdi/{subscription_id}/{id}.xml",
        "pdf_storage_key": None,
        "issued_at": None,
        "status": "vigente",
        "cancelled_at": None,
        "patient_id": None,
        "created_at": CREATED,
    }
    return row | values


@pytest.fixture
def platform(db_url: str) -> Iterator[tuple[Connection, DictStore]]:
    """Two clinics with patients, issued and received CFDI, and their XML in a store."""
    engine = create_engine(db_url)
    t.metadata.create_all(engine)
    store = DictStore()
    with engine.begin() as conn:
        conn.execute(
            insert(t.subscriptions),
            [
                {"id": 1, "name": "Clínica Uno", "status": "active", "created_at": CREATED},
                {"id": 2, "name": "Clínica Dos", "status": "active", "created_at": CREATED},
            ],
        )
        patient = {"created_at": CREATED, "deleted_at": None, "second_last_name": None}
        conn.execute(
            insert(t.patients),
            [
                patient
                | {
                    "id": 10,
                    "subscription_id": 1,
                    "first_name": "María José",
                    "last_name": "López",
                    "second_last_name": "Hernández",
                },
                patient
                | {
                    "id": 11,
                    "subscription_id": 1,
                    "first_name": "Borrado",
                    "last_name": "Secreto",
                    "deleted_at": datetime(2025, 3, 1),
                },
                patient
                | {"id": 20, "subscription_id": 2, "first_name": "Otra", "last_name": "Clínica"},
            ],
        )
        rows = [
            cfdi_row(
                1,
                1,
                "issued",
                UUID_INGRESO,
                issued_at=datetime(2025, 3, 14, 16, 32, 5),
                patient_id=10,
                pdf_storage_key="cfdi/1/1.pdf",
            ),
            cfdi_row(
                2,
                1,
                "issued",
                UUID_EGRESO,
                issued_at=datetime(2025, 3, 20, 22, 5),
                status="cancelado",
                cancelled_at=datetime(2025, 3, 21, 10, 0),
                patient_id=11,
            ),
            cfdi_row(3, 1, "issued", UUID_MISSING, issued_at=datetime(2025, 4, 1), patient_id=10),
            cfdi_row(4, 1, "issued", UUID_BROKEN, issued_at=None),
            cfdi_row(5, 1, "issued", UUID_USD_PLATFORM, issued_at=datetime(2025, 2, 1, 5, 59)),
            # A patient id of another clinic must not bring that clinic's patient along.
            cfdi_row(6, 1, "issued", UUID_PAGO, issued_at=datetime(2025, 4, 2), patient_id=20),
            cfdi_row(7, 1, "received", UUID_33.lower(), issued_at=datetime(2021, 12, 1)),
            cfdi_row(8, 1, "received", UUID_BOM, issued_at=datetime(2025, 6, 10)),
            # The same received invoice uploaded twice: both rows, both files.
            cfdi_row(9, 1, "received", UUID_BOM, issued_at=datetime(2025, 6, 11)),
            cfdi_row(10, 1, "received", "../../x", xml_storage_key="../etc/passwd", issued_at=None),
            # Local taxes (implocal): the clinic's fees with cedular withheld, a hotel's ISH.
            cfdi_row(14, 1, "issued", UUID_CEDULAR, issued_at=datetime(2025, 5, 9, 23, 20)),
            cfdi_row(15, 1, "received", UUID_ISH, issued_at=datetime(2022, 10, 16, 17, 4)),
            cfdi_row(
                30,
                2,
                "issued",
                UUID_OTHER_CLINIC,
                issued_at=datetime(2025, 1, 1),
                patient_id=20,
                pdf_storage_key="cfdi/2/30.pdf",
            ),
            cfdi_row(31, 2, "received", UUID_OTHER_CLINIC, issued_at=datetime(2025, 1, 2)),
        ]
        conn.execute(insert(t.cfdi_documents), rows)
    store.objects.update(
        {
            "cfdi/1/1.xml": sample("cfdi40_ingreso.xml"),
            "cfdi/1/1.pdf": b"%PDF-1.7",
            "cfdi/1/2.xml": sample("cfdi40_egreso.xml"),
            "cfdi/1/4.xml": sample("broken_truncated.xml"),
            "cfdi/1/5.xml": sample("cfdi40_usd.xml"),
            "cfdi/1/6.xml": sample("cfdi40_pago.xml"),
            "cfdi/1/7.xml": sample("cfdi33_ingreso_retenciones.xml"),
            "cfdi/1/8.xml": sample("cfdi40_bom.xml"),
            "cfdi/1/9.xml": sample("cfdi40_bom.xml"),
            "cfdi/1/14.xml": sample("cfdi40_honorarios_cedular.xml"),
            "cfdi/1/15.xml": sample("cfdi33_hospedaje_ish.xml"),
            "cfdi/2/30.xml": sample("cfdi40_ingreso.xml"),
            "cfdi/2/31.xml": sample("cfdi40_ingreso.xml"),
        }
    )
    with engine.connect() as conn:
        yield conn, store
    engine.dispose()


def extract(dataset, conn: Connection, store: ObjectStore, chunksize: int = 5_000):
    ctx = ExtractContext(
        connection=conn,
        subscription_id=1,
        files=store,
        timezone="America/Mexico_City",
        chunksize=chunksize,
    )
    extraction = dataset.extract(ctx)
    frames = list(extraction.chunks)
    return extraction, frames


MONEY = (
    "subtotal",
    "descuento",
    "impuestos_trasladados",
    "impuestos_retenidos",
    "impuestos_locales_trasladados",
    "impuestos_locales_retenidos",
    "total",
)


def records(frames: list[pd.DataFrame]) -> list[dict[str, Any]]:
    frame = pd.concat(frames, ignore_index=True)
    plain = frame.astype(object).where(frame.notna(), None)
    return plain.to_dict("records")


def by_uuid(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["uuid"]: row for row in rows}


def test_issued_report_has_one_row_per_clinic_invoice_oldest_first(platform):
    conn, store = platform

    _, frames = extract(ISSUED, conn, store)

    assert [row["uuid"] for row in records(frames)] == [
        UUID_USD_PLATFORM,
        UUID_INGRESO,
        UUID_EGRESO,
        UUID_MISSING,
        UUID_PAGO,
        UUID_CEDULAR,
        UUID_BROKEN,  # no issue date: last
    ]


def test_issued_row_is_filled_from_the_xml_and_the_platform(platform):
    conn, store = platform

    extraction, frames = extract(ISSUED, conn, store)
    row = by_uuid(records(frames))[UUID_INGRESO]

    assert row == {
        "uuid": UUID_INGRESO,
        "serie": "A",
        "folio": "1024",
        "fecha_emision": datetime(2025, 3, 14, 10, 32, 5),
        "fecha_timbrado": datetime(2025, 3, 14, 10, 33, 41),
        "issued_at": datetime(2025, 3, 14, 16, 32, 5),
        "version": "4.0",
        "emisor_rfc": "EKU9003173C9",
        "emisor_nombre": "ESCUELA KEMPER URGATE",
        "emisor_regimen": "601 - General de Ley Personas Morales",
        "receptor_rfc": "XOJI740919U48",
        "receptor_nombre": "INGRID XODAR JIMENEZ",
        "uso_cfdi": "D01 - Honorarios médicos, dentales y gastos hospitalarios",
        "tipo": "I - Ingreso",
        "forma_pago": "04 - Tarjeta de crédito",
        "metodo_pago": "PUE - Pago en una sola exhibición",
        "moneda": "MXN",
        "tipo_cambio": None,
        "subtotal": Decimal("1500.00"),
        "descuento": Decimal("100.00"),
        "impuestos_trasladados": Decimal("64.00"),
        "impuestos_retenidos": None,
        "impuestos_locales_trasladados": None,
        "impuestos_locales_retenidos": None,
        "total": Decimal("1464.00"),
        "estatus": "Vigente",
        "fecha_cancelacion": None,
        "patient_id": 10,
        "paciente": "López Hernández María José",
        "archivo_xml": f"facturacion/ingresos/xml/{UUID_INGRESO}.xml",
        "archivo_pdf": f"facturacion/ingresos/pdf/{UUID_INGRESO}.pdf",
        "observaciones": None,
    }
    assert [column.key for column in extraction.columns] == list(row)


def test_cancelled_invoice_shows_status_and_date_without_a_deleted_patient(platform):
    conn, store = platform

    _, frames = extract(ISSUED, conn, store)
    row = by_uuid(records(frames))[UUID_EGRESO]

    assert (row["estatus"], row["fecha_cancelacion"]) == ("Cancelado", datetime(2025, 3, 21, 10))
    assert (row["patient_id"], row["paciente"]) == (None, None)
    assert (row["tipo"], row["archivo_pdf"]) == ("E - Egreso", None)


def test_patient_of_another_clinic_is_not_shown(platform):
    conn, store = platform

    _, frames = extract(ISSUED, conn, store)
    row = by_uuid(records(frames))[UUID_PAGO]

    assert (row["patient_id"], row["paciente"]) == (None, None)
    assert (row["tipo"], row["uso_cfdi"]) == ("P - Pago", "CP01 - Pagos")
    assert row["impuestos_trasladados"] == Decimal("160.00")


def test_missing_xml_is_observed_and_has_no_archive_file(platform):
    conn, store = platform

    _, frames = extract(ISSUED, conn, store)
    row = by_uuid(records(frames))[UUID_MISSING]

    assert row["observaciones"] == PROBLEM_XML_MISSING
    assert row["archivo_xml"] is None
    assert (row["serie"], row["total"], row["paciente"]) == (
        None,
        None,
        "López Hernández María José",
    )


def test_broken_xml_is_observed_and_still_named_in_the_archive(platform):
    conn, store = platform

    _, frames = extract(ISSUED, conn, store)
    row = by_uuid(records(frames))[UUID_BROKEN]

    assert row["observaciones"] == PROBLEM_BROKEN
    assert row["archivo_xml"] == f"facturacion/ingresos/xml/{UUID_BROKEN}.xml"
    assert row["total"] is None


def test_uuid_that_differs_from_the_platform_is_observed(platform):
    conn, store = platform

    _, frames = extract(ISSUED, conn, store)
    row = by_uuid(records(frames))[UUID_USD_PLATFORM]

    assert row["observaciones"] == (
        "El UUID del XML (FD5FAC76-050B-4AA3-94AD-755E63B5EC4A) no coincide con el registrado "
        "en la plataforma"
    )
    assert (row["moneda"], row["tipo_cambio"]) == ("USD", Decimal("20.5123"))
    # Named by the platform's UUID, as the archive plan names the file.
    assert row["archivo_xml"] == f"facturacion/ingresos/xml/{UUID_USD_PLATFORM}.xml"


def test_received_report_reads_3_3_and_has_no_pdf_column_when_no_pdf_is_stored(platform):
    conn, store = platform

    extraction, frames = extract(RECEIVED, conn, store)
    rows = records(frames)

    # None of these has a PDF stored: no always-empty "Archivo PDF" column.
    assert "archivo_pdf" not in [column.key for column in extraction.columns]
    assert all("archivo_pdf" not in row for row in rows)
    assert [row["uuid"] for row in rows] == [
        UUID_33.lower(), UUID_ISH, UUID_BOM, UUID_BOM, "../../x"
    ]  # fmt: skip
    first = rows[0]
    assert (first["version"], first["observaciones"]) == ("3.3", None)
    assert first["impuestos_retenidos"] == Decimal("2066.67")
    assert first["forma_pago"] == "99 - Por definir"
    assert first["metodo_pago"] == "PPD - Pago en parcialidades o diferido"
    assert first["archivo_xml"] == f"facturacion/gastos/xml/{UUID_33}.xml"


def store_a_pdf_for_received_invoice_8(conn: Connection) -> None:
    """Row 8 (received, the first copy of UUID_BOM) gets the PDF a received invoice rarely has."""
    conn.execute(
        update(t.cfdi_documents)
        .where(t.cfdi_documents.c.id == 8)
        .values(pdf_storage_key="cfdi/1/8.pdf")
    )


def test_received_report_names_a_pdf_where_one_is_stored_and_leaves_the_others_empty(platform):
    conn, store = platform
    store_a_pdf_for_received_invoice_8(conn)

    extraction, frames = extract(RECEIVED, conn, store)
    rows = records(frames)

    assert [column.header for column in extraction.columns][-3:] == [
        "Archivo XML", "Archivo PDF", "Observaciones"
    ]  # fmt: skip
    assert [row["archivo_pdf"] for row in rows] == [
        None, None, f"facturacion/gastos/pdf/{UUID_BOM}.pdf", None, None
    ]  # fmt: skip


def test_invoice_recorded_twice_names_both_files_as_the_archive_does(platform):
    conn, store = platform

    _, frames = extract(RECEIVED, conn, store)
    twice = [row for row in records(frames) if row["uuid"] == UUID_BOM]

    assert [row["archivo_xml"] for row in twice] == [
        f"facturacion/gastos/xml/{UUID_BOM}.xml",
        f"facturacion/gastos/xml/{UUID_BOM} (2).xml",
    ]


def test_report_keeps_only_the_names_the_plan_changed_and_agrees_with_it_on_all(platform):
    conn, _store = platform
    store_a_pdf_for_received_invoice_8(conn)
    conn.execute(
        insert(t.cfdi_documents),
        [
            # The same UUID again, in lower case and with a PDF: both files renamed '(2)'.
            cfdi_row(
                11, 1, "issued", UUID_INGRESO.lower(), issued_at=None,
                pdf_storage_key="cfdi/1/11.pdf",
            ),
            # No UUID left once cleaned: named by its id.
            cfdi_row(12, 1, "issued", "", issued_at=None),
        ],
    )  # fmt: skip
    planned: dict[tuple[int, str], str] = {}
    for file in plan_files(conn, 1):  # the archive plan itself, attachments and all
        if file.kind in (KIND_CFDI_XML, KIND_CFDI_PDF):
            planned[(file.record_id, file.kind)] = file.archive_path

    for direction in ("issued", "received"):
        names = archive_names(conn, 1, direction)
        rows = conn.execute(
            select(t.cfdi_documents).where(
                t.cfdi_documents.c.subscription_id == 1,
                t.cfdi_documents.c.direction == direction,
            )
        ).all()
        for row in rows:
            assert names.paths(row) == (
                planned[(row.id, KIND_CFDI_XML)],
                planned.get((row.id, KIND_CFDI_PDF)),
            )
        # Only the second copies of a UUID recorded twice were renamed by the plan.
        assert sorted(names.renamed) == ([9] if direction == "received" else [11])
        assert names.any_pdf == any(row.pdf_storage_key for row in rows)
    assert planned[(11, KIND_CFDI_PDF)] == f"facturacion/ingresos/pdf/{UUID_INGRESO} (2).pdf"
    assert planned[(12, KIND_CFDI_XML)] == "facturacion/ingresos/xml/sin_uuid_12.xml"

    # A row recorded after the names were read: not in the archive, so no name in the report.
    names = archive_names(conn, 1, "issued")
    conn.execute(insert(t.cfdi_documents), [cfdi_row(99, 1, "issued", UUID_INGRESO)])
    later = conn.execute(select(t.cfdi_documents).where(t.cfdi_documents.c.id == 99)).one()
    assert names.paths(later) == (None, None)


def test_hostile_storage_key_is_a_missing_file_not_a_crash(platform):
    conn, store = platform

    _, frames = extract(RECEIVED, conn, store)
    row = records(frames)[-1]

    assert row["observaciones"] == PROBLEM_XML_MISSING
    assert row["archivo_xml"] is None


def test_rows_arrive_in_chunks_of_the_requested_size(platform):
    conn, store = platform

    _, frames = extract(ISSUED, conn, store, chunksize=4)

    assert [len(frame) for frame in frames] == [4, 3]
    # Ids as read (a CFDI without a patient beside them), never through floats.
    assert {type(value) for value in frames[0]["patient_id"].tolist()} == {int, type(None)}


def test_money_columns_hold_exact_decimals(platform):
    conn, store = platform

    extraction, frames = extract(ISSUED, conn, store)
    money = [column.key for column in extraction.columns if column.kind is Kind.MONEY]

    assert money == [
        "subtotal",
        "descuento",
        "impuestos_trasladados",
        "impuestos_retenidos",
        "impuestos_locales_trasladados",
        "impuestos_locales_retenidos",
        "total",
    ]
    values = [v for key in money for v in pd.concat(frames)[key].tolist() if v is not None]
    assert values and all(type(value) is Decimal for value in values)


def test_storage_outage_fails_the_extraction_instead_of_reporting_missing_files(platform):
    conn, _ = platform

    with pytest.raises(ConnectionError):
        extract(ISSUED, conn, BrokenStore())


def test_clinic_without_invoices_yields_no_rows_but_its_columns(platform):
    conn, store = platform
    ctx = ExtractContext(
        connection=conn, subscription_id=999, files=store, timezone="America/Mexico_City"
    )

    extraction = RECEIVED.extract(ctx)

    assert list(extraction.chunks) == []
    assert extraction.columns[-1].header == "Observaciones"


def test_xml_issue_date_shows_as_written_while_platform_times_move_to_the_clinic_zone(
    platform, tmp_path: Path
):
    import openpyxl

    from backup_pipeline.datasets.workbook import render_workbook

    conn, store = platform
    extraction, frames = extract(ISSUED, conn, store)
    rendered = render_workbook(
        extraction.__class__(columns=extraction.columns, chunks=iter(frames)),
        path=tmp_path / "emitidos.xlsx",
        sheet_title=ISSUED.sheet_title,
        timezone="America/Mexico_City",
        archive_path=ISSUED.archive_path,
        overflow_dir=tmp_path / "overflow",
    )
    sheet = openpyxl.load_workbook(rendered.path).active
    headers = [cell.value for cell in sheet[1]]
    row = next(r for r in sheet.iter_rows(min_row=2, values_only=True) if r[0] == UUID_INGRESO)
    values = dict(zip(headers, row, strict=True))
    assert values["Fecha de emisión"] == datetime(2025, 3, 14, 10, 32, 5)  # as in the XML
    expected = by_uuid(records(frames))[UUID_INGRESO]["issued_at"]
    assert values["Fecha de emisión registrada en la plataforma"] == expected - timedelta(hours=6)


def test_received_report_has_no_patient_columns_while_the_issued_one_names_the_patient(platform):
    conn, store = platform
    # Even a received row that names a patient: an expense of the clinic is nobody's invoice.
    conn.execute(update(t.cfdi_documents).where(t.cfdi_documents.c.id == 8).values(patient_id=10))

    received, received_frames = extract(RECEIVED, conn, store)
    issued, _ = extract(ISSUED, conn, store)

    received_headers = [column.header for column in received.columns]
    assert "ID paciente" not in received_headers and "Paciente" not in received_headers
    assert all("patient_id" not in frame and "paciente" not in frame for frame in received_frames)
    issued_headers = [column.header for column in issued.columns]
    assert issued_headers[issued_headers.index("ID paciente") + 1] == "Paciente"


def test_local_tax_invoices_show_their_local_taxes_and_add_up_to_their_total(platform):
    conn, store = platform

    issued = by_uuid(records(extract(ISSUED, conn, store)[1]))
    received = by_uuid(records(extract(RECEIVED, conn, store)[1]))

    fees, lodging = issued[UUID_CEDULAR], received[UUID_ISH]
    assert (fees["version"], lodging["version"]) == ("4.0", "3.3")
    assert fees["impuestos_locales_retenidos"] == Decimal("200.00")
    assert lodging["impuestos_locales_trasladados"] == Decimal("90.00")
    rows = [row for row in [*issued.values(), *received.values()] if row["total"] is not None]
    for row in rows:
        if row["tipo"] == "P - Pago":
            continue  # its taxes are those of the invoices it pays; its total is 0
        figures = {key: row[key] or Decimal(0) for key in MONEY}
        parts = figures["subtotal"] - figures["descuento"]
        parts += figures["impuestos_trasladados"] - figures["impuestos_retenidos"]
        parts += figures["impuestos_locales_trasladados"] - figures["impuestos_locales_retenidos"]
        assert parts == figures["total"], row["uuid"]
        assert PROBLEM_TOTALS_PREFIX not in (row["observaciones"] or ""), row["uuid"]


def test_invoice_whose_figures_do_not_add_up_says_so_in_observaciones(platform):
    conn, store = platform
    # The hotel's XML with its local tax left out: 3000 + 480 is not the 3570 it charged.
    store.objects["cfdi/1/16.xml"] = sample("cfdi33_hospedaje_ish.xml").replace(
        b'TotaldeTraslados="90.00"', b'TotaldeTraslados="0.00"'
    )
    conn.execute(insert(t.cfdi_documents), [cfdi_row(16, 1, "received", "ABC-16")])

    _, frames = extract(RECEIVED, conn, store)
    row = by_uuid(records(frames))["ABC-16"]

    assert row["observaciones"] == (
        f"{PROBLEM_TOTALS_PREFIX} (diferencia: $90.00); "
        "El UUID del XML (3F2A9C1E-7B4D-4E8A-9F61-2C5D8E0B7A13) no coincide con el registrado "
        "en la plataforma"
    )


def test_local_tax_columns_are_money_cells_beside_the_federal_ones(platform, tmp_path: Path):
    import openpyxl

    from backup_pipeline.datasets.workbook import render_workbook

    conn, store = platform
    extraction, frames = extract(ISSUED, conn, store)
    rendered = render_workbook(
        extraction.__class__(columns=extraction.columns, chunks=iter(frames)),
        path=tmp_path / "emitidos.xlsx",
        sheet_title=ISSUED.sheet_title,
        timezone="America/Mexico_City",
        archive_path=ISSUED.archive_path,
        overflow_dir=tmp_path / "overflow",
    )
    sheet = openpyxl.load_workbook(rendered.path).active
    headers = [cell.value for cell in sheet[1]]
    assert headers[headers.index("Subtotal") : headers.index("Total") + 1] == [
        "Subtotal", "Descuento", "Impuestos trasladados", "Impuestos retenidos",
        "Impuestos locales trasladados", "Impuestos locales retenidos", "Total",
    ]  # fmt: skip
    row = next(r for r in sheet.iter_rows(min_row=2) if r[0].value == UUID_CEDULAR)
    cedular = row[headers.index("Impuestos locales retenidos")]
    assert (cedular.value, cedular.number_format) == (200, "#,##0.00")
    assert row[headers.index("Total")].value == 9333.33
