"""Small records about the archive's entries, passed between ops as JSON-safe dicts."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from typing import Any, Self

KIND_ATTACHMENT = "adjunto"
KIND_CFDI_XML = "cfdi_xml"
KIND_CFDI_PDF = "cfdi_pdf"
FILE_KINDS = (KIND_ATTACHMENT, KIND_CFDI_XML, KIND_CFDI_PDF)


class _Serialisable:
    """to_dict/from_dict for flat dataclasses of JSON scalars; from_dict ignores unknown keys
    so that a manifest written by a newer version still loads."""

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict, which deep-copies each value: these are flat, of scalars, and
        # a large clinic's plan writes tens of thousands of them.
        return {name: getattr(self, name) for name in _field_names(type(self))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = _field_names(cls)
        return cls(**{k: v for k, v in data.items() if k in names})


@functools.cache
def _field_names(cls: type) -> dict[str, None]:
    """A record class's field names in declared order, looked up once per class: the plan
    writes each of a large clinic's ~36,000 files once and the zip reads each back twice, and
    dataclasses.fields() on every one of them was ~9% of the plan step's CPU."""
    return dict.fromkeys(f.name for f in fields(cls))


@dataclass(frozen=True)
class StagedEntry(_Serialisable):
    """A file an op already produced (a workbook, a long text) and staged in the archives store."""

    archive_path: str
    staging_key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PlannedFile(_Serialisable):
    """A platform file (attachment, CFDI XML or PDF) to copy into the archive."""

    archive_path: str
    source_key: str
    kind: str  # one of FILE_KINDS
    record_id: int  # attachments.id or cfdi_documents.id
    patient_id: int | None
    expected_size: int | None = None
    expected_sha256: str | None = None
    # For archivos_no_incluidos.xlsx, in Spanish: "Apellidos Nombre", and what the file was.
    patient_name: str | None = None
    description: str | None = None
    # For adjuntos.xlsx (attachments only): the name as uploaded, when (naive UTC, ISO) and
    # its type as the platform recorded them, and whether its archive name was cut to length.
    original_name: str | None = None
    uploaded_at: str | None = None
    content_type: str | None = None
    name_shortened: bool = False


@dataclass(frozen=True)
class MissingFile(_Serialisable):
    """A planned file that could not be copied; reason is Spanish, the clinic reads it."""

    archive_path: str
    kind: str
    record_id: int
    patient_id: int | None
    reason: str
    patient_name: str | None = None
    description: str | None = None


@dataclass
class ArchiveResult:
    """What assembling the zip produced."""

    key: str
    size: int
    sha256: str
    entries: int  # zip entries, LEEME.txt and SHA256SUMS included
    files_copied: int  # planned files that made it into the zip
    file_bytes: int  # their uncompressed bytes
    missing: list[MissingFile] = field(default_factory=list)
    # Files copied whose size or sha256 differs from the platform's record (still included).
    checksum_mismatches: int = 0
