"""The two invoice reports: one row per CFDI issued (ingresos) or received (gastos), read from its XML."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Select, and_, select

from backup_pipeline.archive.plan import cfdi_files_by_row
from backup_pipeline.datasets.base import (
    Column,
    ExtractContext,
    Extraction,
    Kind,
    RecordName,
    integer_column,
)
from backup_pipeline.datasets.query import patient_full_name
from backup_pipeline.platform.tables import cfdi_documents, patients
from backup_pipeline.rules import cfdi, sat_catalogs
from backup_pipeline.rules.archive_entries import KIND_CFDI_PDF, KIND_CFDI_XML
from backup_pipeline.rules.cfdi import cfdi_archive_paths
from backup_pipeline.storage import ObjectNotFound, ObjectStore

# XML read at once for a report: the store's reads in flight, up to this many. At 40 ms per read,
# 64 in flight bring ~1,600 XML a second, more than a worker parses (~1,150 alone, ~500 beside
# the other worker and the zip); each of GCS's 128 took a thread, its stack and a share of the
# heaps, and both reports usually render last, side by side, at the run's peak of memory.
XML_READS_IN_FLIGHT = 64

if TYPE_CHECKING:
    # pandas is imported where rows are extracted: importing the package (sensors, the CLI, a
    # run worker's start) does not need it (datasets.export.import_renderer).
    import pandas as pd

PROBLEM_XML_MISSING = "El archivo XML no se encontró en el almacenamiento"
STATUS_NAMES = {"vigente": "Vigente", "cancelado": "Cancelado"}


def _columns(with_pdf: bool, with_patient: bool = True) -> tuple[Column, ...]:
    columns = (
        Column("uuid", "UUID", width=38),
        Column("serie", "Serie"),
        Column("folio", "Folio"),
        # The XML's Fecha and FechaTimbrado are local times of issue as written, not UTC: shown
        # as they are, where the platform's own timestamps are converted to the clinic's zone.
        Column("fecha_emision", "Fecha de emisión", Kind.LOCAL_DATETIME),
        Column("fecha_timbrado", "Fecha de timbrado", Kind.LOCAL_DATETIME),
        Column("issued_at", "Fecha de emisión registrada en la plataforma", Kind.DATETIME),
        Column("version", "Versión CFDI"),
        Column("emisor_rfc", "RFC emisor", width=15),
        Column("emisor_nombre", "Nombre emisor", width=40),
        Column("emisor_regimen", "Régimen fiscal emisor", width=40),
        Column("receptor_rfc", "RFC receptor", width=15),
        Column("receptor_nombre", "Nombre receptor", width=40),
        Column("uso_cfdi", "Uso CFDI", width=40),
        Column("tipo", "Tipo de comprobante", width=14),
        Column("forma_pago", "Forma de pago", width=30),
        Column("metodo_pago", "Método de pago", width=30),
        Column("moneda", "Moneda"),
        Column("tipo_cambio", "Tipo de cambio", Kind.DECIMAL),
        Column("subtotal", "Subtotal", Kind.MONEY),
        Column("descuento", "Descuento", Kind.MONEY),
        Column("impuestos_trasladados", "Impuestos trasladados", Kind.MONEY),
        Column("impuestos_retenidos", "Impuestos retenidos", Kind.MONEY),
        # The implocal complement (lodging tax, cedular): with them the row adds up to Total.
        Column("impuestos_locales_trasladados", "Impuestos locales trasladados", Kind.MONEY),
        Column("impuestos_locales_retenidos", "Impuestos locales retenidos", Kind.MONEY),
        Column("total", "Total", Kind.MONEY),
        Column("estatus", "Estatus"),
        Column("fecha_cancelacion", "Fecha de cancelación", Kind.DATETIME),
    )
    if with_patient:
        columns += (
            Column("patient_id", "ID paciente", Kind.INTEGER),
            Column("paciente", "Paciente", width=35),
        )
    columns += (Column("archivo_xml", "Archivo XML", width=60),)
    if with_pdf:
        columns += (Column("archivo_pdf", "Archivo PDF", width=60),)
    return (*columns, Column("observaciones", "Observaciones", width=60))


@dataclass(frozen=True)
class InvoiceDataset:
    """A CFDI report for one direction ('issued' or 'received') of cfdi_documents."""

    name: str
    archive_path: str
    sheet_title: str
    description: str
    failure_subject: str  # see datasets.base.Dataset
    render_cost: int
    direction: str
    # True: the "Archivo PDF" column always; None: only when some row of the report has a PDF
    # (the platform rarely stores one for a received invoice: an always-empty column misleads).
    with_pdf: bool | None
    # The patient invoiced. A received invoice (an expense of the clinic) has none, so its
    # report has no patient columns rather than two always empty.
    with_patient: bool

    def extract(self, ctx: ExtractContext) -> Extraction:
        # The archive's names first: whether any invoice has a PDF decides the columns.
        names = archive_names(ctx.connection, ctx.subscription_id, self.direction)
        with_pdf = self.with_pdf
        if with_pdf is None:
            with_pdf = names.any_pdf
        columns = _columns(with_pdf, self.with_patient)
        return Extraction(
            columns=columns,
            chunks=self._chunks(ctx, columns, names),
            record=RecordName("comprobante", "uuid"),
        )

    def _chunks(
        self,
        ctx: ExtractContext,
        columns: Sequence[Column],
        names: CfdiNames,
    ) -> Iterator[pd.DataFrame]:
        import pandas as pd

        query = report_query(ctx.subscription_id, self.direction).execution_options(
            yield_per=ctx.chunksize  # implies stream_results: a server-side cursor on PostgreSQL
        )
        keys = [column.key for column in columns]
        # Reading an XML is a request to the store: as many in flight as the store wants (dozens
        # on GCS, where each waits tens of milliseconds; one from a local folder, where parsing
        # is the work and threads would only contend for the interpreter), up to
        # XML_READS_IN_FLIGHT.
        workers = min(max(ctx.files.reads_in_flight, 1), XML_READS_IN_FLIGHT)
        with (
            ThreadPoolExecutor(workers, thread_name_prefix=f"read-{self.name}") as pool,
            ctx.connection.execute(query) as result,
        ):
            mapper = pool.map if workers > 1 else map
            for rows in result.partitions():
                records = mapper(lambda row: read_cfdi(ctx.files, row.xml_storage_key), rows)
                report = [
                    report_row(row, record, names.paths(row))
                    for row, record in zip(rows, records, strict=True)
                ]
                frame = pd.DataFrame.from_records(report)[keys]
                if "patient_id" in frame and frame["patient_id"].dtype.kind not in "iu":
                    # A CFDI without a patient: the ids as read, not through floats.
                    frame["patient_id"] = integer_column([r["patient_id"] for r in report])
                yield frame


def report_query(subscription_id: int, direction: str) -> Select[Any]:
    """The subscription's CFDI of one direction, oldest first, with the patient when it is live."""
    c = cfdi_documents.c
    p = patients.c
    # The patient must be the subscription's own and not soft-deleted; otherwise the row stays
    # and the patient columns are empty.
    live_patient = and_(
        p.id == c.patient_id, p.subscription_id == c.subscription_id, p.deleted_at.is_(None)
    )
    return (
        select(
            c.id,
            c.uuid,
            c.xml_storage_key,
            c.pdf_storage_key,
            c.issued_at,
            c.status,
            c.cancelled_at,
            p.id.label("patient_id"),
            patient_full_name().label("patient_name"),
        )
        .select_from(cfdi_documents.outerjoin(patients, live_patient))
        .where(c.subscription_id == subscription_id, c.direction == direction)
        .order_by(c.issued_at.asc().nulls_last(), c.id)
    )


@dataclass(frozen=True)
class CfdiNames:
    """Where the archive puts each invoice's XML and PDF, as the archive plan names them.

    Almost every invoice's files keep their natural names ('<UUID>.xml', cfdi_archive_paths);
    only those the plan had to rename (a UUID held twice becomes '<UUID> (2).xml') are kept
    here, so that the report holds a few names, not two per invoice.
    """

    direction: str
    renamed: dict[int, tuple[str | None, str | None]]
    any_pdf: bool
    last_id: int | None  # the highest id named; None: there was no row

    def paths(self, row: Any) -> tuple[str | None, str | None]:
        """(XML path, PDF path) of a cfdi_documents row with id, uuid and pdf_storage_key;
        (None, None) for a row recorded after the names were read (its name is unknown)."""
        if self.last_id is None or row.id > self.last_id:
            return None, None
        found = self.renamed.get(row.id)
        if found is not None:
            return found
        return cfdi_archive_paths(self.direction, row.uuid, row.id, bool(row.pdf_storage_key))


def archive_names(connection: Connection, subscription_id: int, direction: str) -> CfdiNames:
    """The archive's names of the direction's invoices, exactly as the archive plan makes them.

    The plan numbers a repeated UUID ('<UUID> (2).xml') in id order, so the names are taken
    from it over every row of the direction rather than recomputed row by row: the report and
    the archive cannot disagree. Only the names that differ from the natural ones are kept.
    """
    c = cfdi_documents.c
    query = (
        select(c.id, c.direction, c.uuid, c.xml_storage_key, c.pdf_storage_key, c.patient_id)
        .where(c.subscription_id == subscription_id, c.direction == direction)
        .order_by(c.id)
    )
    renamed: dict[int, tuple[str | None, str | None]] = {}
    any_pdf = False
    last_id: int | None = None
    for row, files in cfdi_files_by_row(connection.execute(query)):
        last_id = int(row.id)  # the query reads in id order
        xml = next(f.archive_path for f in files if f.kind == KIND_CFDI_XML)
        pdf = next((f.archive_path for f in files if f.kind == KIND_CFDI_PDF), None)
        any_pdf = any_pdf or pdf is not None
        if (xml, pdf) != cfdi_archive_paths(direction, row.uuid, row.id, bool(row.pdf_storage_key)):
            renamed[last_id] = (xml, pdf)
    return CfdiNames(direction=direction, renamed=renamed, any_pdf=any_pdf, last_id=last_id)


def read_cfdi(files: ObjectStore, key: str) -> cfdi.CfdiRecord | None:
    """The parsed XML at key, or None when the store has no such object.

    Only a missing object is an observation; any other storage error propagates so that the
    op fails and is retried instead of reporting a transient outage as a missing invoice.
    """
    try:
        # One request; one byte over the cap is enough for parse_cfdi to refuse a larger file.
        data = files.read_head(key, cfdi.MAX_CFDI_BYTES + 1)
    except (ObjectNotFound, ValueError):  # ValueError: a key no store can hold ('..', '/x')
        return None
    return cfdi.parse_cfdi(data)


def report_row(
    row: Any, record: cfdi.CfdiRecord | None, paths: tuple[str | None, str | None]
) -> dict[str, Any]:
    """One report row from the platform's row, its parsed XML (None: missing) and archive paths."""
    observations: list[str] = []
    xml_path, pdf_path = paths
    if record is None:
        observations.append(PROBLEM_XML_MISSING)
        record = cfdi.CfdiRecord()
        xml_path = None  # the archive will not hold it (archivos_no_incluidos.xlsx says so)
    else:
        observations.extend(record.problems)
        mismatch = cfdi.compare_uuid(record, row.uuid)
        if mismatch:
            observations.append(mismatch)
    status = (row.status or "").strip()
    return {
        "uuid": row.uuid,
        "serie": record.serie,
        "folio": record.folio,
        "fecha_emision": record.fecha,
        "fecha_timbrado": record.fecha_timbrado,
        "issued_at": row.issued_at,
        "version": record.version,
        "emisor_rfc": record.emisor_rfc,
        "emisor_nombre": record.emisor_nombre,
        "emisor_regimen": sat_catalogs.describe_regimen(record.emisor_regimen),
        "receptor_rfc": record.receptor_rfc,
        "receptor_nombre": record.receptor_nombre,
        "uso_cfdi": sat_catalogs.describe_uso_cfdi(record.uso_cfdi),
        "tipo": sat_catalogs.describe_tipo_comprobante(record.tipo),
        "forma_pago": sat_catalogs.describe_forma_pago(record.forma_pago),
        "metodo_pago": sat_catalogs.describe_metodo_pago(record.metodo_pago),
        "moneda": record.moneda,
        "tipo_cambio": record.tipo_cambio,
        "subtotal": record.subtotal,
        "descuento": record.descuento,
        "impuestos_trasladados": record.total_impuestos_trasladados,
        "impuestos_retenidos": record.total_impuestos_retenidos,
        "impuestos_locales_trasladados": record.impuestos_locales_trasladados,
        "impuestos_locales_retenidos": record.impuestos_locales_retenidos,
        "total": record.total,
        "estatus": STATUS_NAMES.get(status.lower(), status or None),
        "fecha_cancelacion": row.cancelled_at,
        "patient_id": row.patient_id,
        # "Apellidos Nombre", as every other workbook and the attachment folders name a patient.
        "paciente": (row.patient_name or None) if row.patient_id is not None else None,
        "archivo_xml": xml_path,
        "archivo_pdf": pdf_path,
        "observaciones": "; ".join(observations) or None,
    }


ISSUED = InvoiceDataset(
    name="invoices_issued",
    archive_path="facturacion/ingresos/comprobantes_emitidos.xlsx",
    sheet_title="Comprobantes emitidos",
    description="Reporte de los comprobantes fiscales (CFDI) emitidos, uno por renglón, leído de cada XML.",
    failure_subject="de sus comprobantes emitidos",
    render_cost=2,
    direction="issued",
    with_pdf=True,
    with_patient=True,
)

RECEIVED = InvoiceDataset(
    name="invoices_received",
    archive_path="facturacion/gastos/comprobantes_recibidos.xlsx",
    sheet_title="Comprobantes recibidos",
    description="Reporte de los comprobantes fiscales (CFDI) recibidos, uno por renglón, leído de cada XML.",
    failure_subject="de sus comprobantes recibidos",
    render_cost=1,
    direction="received",
    with_pdf=None,
    with_patient=False,
)
