"""The plan of platform files to copy into the archive: attachments and CFDI XML/PDF, safely named."""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, select

from backup_pipeline.archive.zipper import ArchiveCancelled
from backup_pipeline.platform.tables import attachments, cfdi_documents, patients
from backup_pipeline.rules.archive_entries import (
    KIND_ATTACHMENT,
    KIND_CFDI_PDF,
    KIND_CFDI_XML,
    PlannedFile,
)
from backup_pipeline.rules.archive_names import (
    MAX_PATH_UNITS,
    PATIENT_FOLDER_MAX_UNITS,
    Named,
    UniqueNames,
    named_patient_folder,
)
from backup_pipeline.rules.cfdi import cfdi_archive_paths
from backup_pipeline.storage import ObjectNotFound, ObjectStore

ATTACHMENT_FALLBACK = "archivo"
_CFDI_LABELS = {
    ("issued", KIND_CFDI_XML): "XML del comprobante emitido",
    ("issued", KIND_CFDI_PDF): "PDF del comprobante emitido",
    ("received", KIND_CFDI_XML): "XML del comprobante recibido",
    ("received", KIND_CFDI_PDF): "PDF del comprobante recibido",
}

_ROWS_PER_FETCH = 1_000
_SHA256 = re.compile(r"[0-9a-f]{64}")


def plan_files(connection: Connection, subscription_id: int) -> Iterator[PlannedFile]:
    """Every file of the subscription's backup, attachments first (by patient, upload time,
    id), then CFDI XML and PDF (by direction, id). Streams: rows are fetched in batches
    through a server-side cursor where the database has one."""
    yield from _attachments(connection, subscription_id)
    yield from _cfdi_files(connection, subscription_id)


def _attachments(connection: Connection, subscription_id: int) -> Iterator[PlannedFile]:
    query = (
        select(
            attachments.c.id,
            attachments.c.patient_id,
            attachments.c.storage_key,
            attachments.c.file_name,
            attachments.c.content_type,
            attachments.c.size_bytes,
            attachments.c.sha256,
            attachments.c.uploaded_at,
            patients.c.last_name,
            patients.c.second_last_name,
            patients.c.first_name,
        )
        .select_from(
            attachments.join(
                patients,
                and_(
                    patients.c.id == attachments.c.patient_id,
                    # A patient of another subscription would leak its name into this backup.
                    patients.c.subscription_id == subscription_id,
                    patients.c.deleted_at.is_(None),
                ),
            )
        )
        .where(
            attachments.c.subscription_id == subscription_id,
            attachments.c.deleted_at.is_(None),
        )
        .order_by(attachments.c.patient_id, attachments.c.uploaded_at, attachments.c.id)
        .execution_options(yield_per=_ROWS_PER_FETCH)
    )
    current_patient: int | None = None
    folder = Named(path="", shortened=False)
    names = UniqueNames(max_path_units=MAX_PATH_UNITS)
    for row in connection.execute(query):
        if row.patient_id != current_patient:
            # Rows come grouped by patient, so each folder's names can be forgotten after it.
            current_patient = row.patient_id
            folder = named_patient_folder(
                row.last_name,
                row.second_last_name,
                row.first_name,
                row.patient_id,
                max_units=PATIENT_FOLDER_MAX_UNITS,
            )
            names = UniqueNames(max_path_units=MAX_PATH_UNITS)
        named = names.named(folder.path, row.file_name or "", fallback=ATTACHMENT_FALLBACK)
        yield PlannedFile(
            archive_path=named.path,
            source_key=row.storage_key,
            kind=KIND_ATTACHMENT,
            record_id=int(row.id),
            patient_id=int(row.patient_id),
            expected_size=_size(row.size_bytes),
            expected_sha256=_sha256(row.sha256),
            patient_name=full_name(row.last_name, row.second_last_name, row.first_name),
            description=attachment_description(row.file_name),
            original_name=row.file_name,
            uploaded_at=_timestamp(row.uploaded_at),
            content_type=row.content_type,
            name_shortened=folder.shortened or named.shortened,
        )


def _cfdi_files(connection: Connection, subscription_id: int) -> Iterator[PlannedFile]:
    # The patient id reaches archivos_no_incluidos.xlsx: only the subscription's own, live
    # patient's, as in the invoice reports (a deleted or foreign patient leaves it empty).
    live_patient = and_(
        patients.c.id == cfdi_documents.c.patient_id,
        patients.c.subscription_id == subscription_id,
        patients.c.deleted_at.is_(None),
    )
    query = (
        select(
            cfdi_documents.c.id,
            cfdi_documents.c.direction,
            cfdi_documents.c.uuid,
            cfdi_documents.c.xml_storage_key,
            cfdi_documents.c.pdf_storage_key,
            patients.c.id.label("patient_id"),
            patients.c.last_name,
            patients.c.second_last_name,
            patients.c.first_name,
        )
        .select_from(cfdi_documents.outerjoin(patients, live_patient))
        .where(
            cfdi_documents.c.subscription_id == subscription_id,
            cfdi_documents.c.direction.in_(("issued", "received")),
        )
        .order_by(cfdi_documents.c.direction, cfdi_documents.c.id)
        .execution_options(yield_per=_ROWS_PER_FETCH)
    )
    yield from cfdi_planned_files(connection.execute(query))


def cfdi_planned_files(rows: Iterable[Any]) -> Iterator[PlannedFile]:
    """The XML (and PDF) of each cfdi_documents row, named by backup_pipeline.rules.cfdi."""
    for _row, files in cfdi_files_by_row(rows):
        yield from files


def cfdi_files_by_row(rows: Iterable[Any]) -> Iterator[tuple[Any, list[PlannedFile]]]:
    """Each cfdi_documents row with its planned files: its XML, then its PDF when it has one.

    The platform may hold one UUID twice (a received invoice uploaded twice), or twice in
    different case: the second copy becomes '<UUID> (2).xml' and its PDF '<UUID> (2).pdf', so
    both survive and stay paired.
    """
    names = UniqueNames(max_path_units=MAX_PATH_UNITS)
    for row in rows:
        has_pdf = bool(row.pdf_storage_key)
        xml_path, pdf_path = cfdi_archive_paths(row.direction, row.uuid, row.id, has_pdf)
        xml_folder, xml_name = xml_path.rsplit("/", 1)
        unique_xml = names.path(xml_folder, xml_name, fallback=f"sin_uuid_{int(row.id)}.xml")
        # The report's own query (invoices.archive_names) needs only the names: no patient.
        patient_name = (
            full_name(row.last_name, row.second_last_name, row.first_name)
            if row.patient_id is not None and hasattr(row, "last_name")
            else None
        )
        files = [_cfdi_file(row, KIND_CFDI_XML, unique_xml, row.xml_storage_key, patient_name)]
        if pdf_path is not None:
            pdf_folder = pdf_path.rsplit("/", 1)[0]
            stem = unique_xml.rsplit("/", 1)[1].removesuffix(".xml")
            pdf_name = names.path(pdf_folder, f"{stem}.pdf", fallback=f"{stem}.pdf")
            files.append(
                _cfdi_file(row, KIND_CFDI_PDF, pdf_name, row.pdf_storage_key, patient_name)
            )
        yield row, files


def _cfdi_file(
    row: Any, kind: str, archive_path: str, source_key: str, patient_name: str | None
) -> PlannedFile:
    return PlannedFile(
        archive_path=archive_path,
        source_key=source_key,
        kind=kind,
        record_id=int(row.id),
        patient_id=int(row.patient_id) if row.patient_id is not None else None,
        patient_name=patient_name,
        description=cfdi_description(row.direction, kind, row.uuid),
    )


def full_name(last: str | None, second_last: str | None, first: str | None) -> str | None:
    """ "Apellidos Nombre", as every workbook and the attachment folders name a patient."""
    parts = [" ".join(part.split()) for part in (last, second_last, first) if part]
    return " ".join(part for part in parts if part) or None


def attachment_description(file_name: str | None) -> str:
    """What an attachment was, for archivos_no_incluidos.xlsx: its name as the user uploaded it."""
    name = " ".join((file_name or "").split())
    return f"Archivo adjunto del paciente: «{name}»" if name else "Archivo adjunto del paciente"


def cfdi_description(direction: str, kind: str, uuid: str | None) -> str:
    """'XML del comprobante emitido <UUID>', with the folio fiscal as the platform recorded it."""
    label = _CFDI_LABELS.get((direction, kind), "Archivo de un comprobante")
    folio = " ".join((uuid or "").split())
    return f"{label} {folio}" if folio else f"{label} (sin folio fiscal)"


def _timestamp(value: Any) -> str | None:
    """A naive UTC timestamp as ISO text, as the plan's JSON lines carry it."""
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _size(value: Any) -> int | None:
    return int(value) if value is not None and int(value) >= 0 else None


def _sha256(value: Any) -> str | None:
    text = str(value).strip().lower() if value else ""
    return text if _SHA256.fullmatch(text) else None


@dataclass(frozen=True)
class FilePlan:
    """The plan as staged for the zip: JSON lines of PlannedFile under `key`, and its totals."""

    key: str
    files: int
    expected_bytes: int
    by_kind: dict[str, int] = field(default_factory=dict)
    # Attachments whose folder or file name was cut to keep its path short (LEEME says so).
    names_shortened: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "files": self.files,
            "expected_bytes": self.expected_bytes,
            "by_kind": dict(self.by_kind),
            "names_shortened": self.names_shortened,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilePlan:
        """KeyError, ValueError or TypeError when `data` is not one (a damaged summary)."""
        return cls(
            key=str(data["key"]),
            files=int(data["files"]),
            expected_bytes=int(data["expected_bytes"]),
            by_kind={str(kind): int(count) for kind, count in dict(data["by_kind"]).items()},
            names_shortened=int(data["names_shortened"]),
        )


# Rows planned between two looks at `cancelled` (stage_plan).
_CANCEL_CHECK_ROWS = 1_000


def stage_plan(
    connection: Connection,
    subscription_id: int,
    store: ObjectStore,
    key: str,
    cancelled: threading.Event | None = None,
) -> FilePlan:
    """Write the subscription's plan to `key` in the archives store, one file per line: the zip
    step streams it back instead of the run holding every file's record in memory. Its totals
    go beside it (summary_key) once the plan is whole, so that staged_plan finds it again.

    Setting `cancelled` stops it between two batches of rows (archive.zipper.ArchiveCancelled).
    """
    count = expected = shortened = 0
    by_kind: dict[str, int] = {}
    with store.open_write(key, "application/jsonl") as out:
        for planned in plan_files(connection, subscription_id):
            if cancelled is not None and count % _CANCEL_CHECK_ROWS == 0 and cancelled.is_set():
                raise ArchiveCancelled("the archive was no longer wanted")
            out.write(json.dumps(planned.to_dict(), ensure_ascii=False).encode() + b"\n")
            count += 1
            expected += planned.expected_size or 0
            by_kind[planned.kind] = by_kind.get(planned.kind, 0) + 1
            shortened += planned.name_shortened
    plan = FilePlan(
        key=key,
        files=count,
        expected_bytes=expected,
        by_kind=by_kind,
        names_shortened=shortened,
    )
    store.put_bytes(summary_key(key), json.dumps(plan.to_dict()).encode(), "application/json")
    return plan


def summary_key(key: str) -> str:
    """Where a staged plan's totals go, beside it: written last, so it marks the plan whole."""
    return f"{key.removesuffix('.jsonl')}.summary.json"


def staged_plan(store: ObjectStore, key: str) -> FilePlan | None:
    """The plan stage_plan staged under `key`, whole (its summary written), or None: none yet,
    or an unreadable one (it is planned again)."""
    try:
        plan = FilePlan.from_dict(json.loads(store.get_bytes(summary_key(key))))
    except (ObjectNotFound, ValueError, KeyError, TypeError):
        return None
    return plan if plan.key == key and store.exists(key) else None


def read_plan(store: ObjectStore, plan: FilePlan) -> Iterator[PlannedFile]:
    """The staged plan, one PlannedFile at a time."""
    # Through a text wrapper, which reads in chunks: iterating the GCS reader's lines directly
    # asks it for one byte at a time (about 4 s for a large clinic's plan, per the benchmark).
    with store.open_read(plan.key) as src, io.TextIOWrapper(src, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield PlannedFile.from_dict(json.loads(line))
