"""One dataset into the archive: extract it in chunks, render its workbook, stage the workbook
and its long-text files in the archives store."""

from __future__ import annotations

import importlib
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection

from backup_pipeline.archive.plan import FilePlan
from backup_pipeline.archive.staging import stage_file
from backup_pipeline.datasets.base import Dataset, ExtractContext, Extraction
from backup_pipeline.rules.archive_entries import StagedEntry
from backup_pipeline.storage import ObjectNotFound, ObjectStore

if TYPE_CHECKING:
    from backup_pipeline.datasets.workbook import RenderedWorkbook

T = TypeVar("T")

# What extracting and rendering a workbook imports: pandas (with pyarrow) and XlsxWriter, ~0.4 s
# and ~40 MB. Not imported with the package: the sensors, the CLI and a run worker's start do
# not need them.
RENDERER_MODULE = "backup_pipeline.datasets.workbook"


def import_renderer() -> None:
    """Import what rendering needs, in this process. A run calls it before it forks its
    workbook workers, so that they share these pages instead of each importing its own."""
    importlib.import_module(RENDERER_MODULE)


def render_workbook(extraction: Extraction, **options: Any) -> RenderedWorkbook:
    """datasets.workbook.render_workbook, imported when the first workbook is rendered."""
    return importlib.import_module(RENDERER_MODULE).render_workbook(extraction, **options)


@dataclass(frozen=True)
class ExportResult:
    """What one dataset put in staging: its workbook first, then its long-text files."""

    dataset: str
    archive_path: str
    description: str
    rows: int
    sheets: int = 1
    entries: list[StagedEntry] = field(default_factory=list)

    @property
    def long_text_files(self) -> int:
        return len(self.entries) - 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "archive_path": self.archive_path,
            "description": self.description,
            "rows": self.rows,
            "sheets": self.sheets,
            "entries": [entry.to_dict() for entry in self.entries],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportResult:
        """KeyError, ValueError or TypeError when `data` is not one (a damaged manifest)."""
        return cls(
            dataset=data["dataset"],
            archive_path=data["archive_path"],
            description=data["description"],
            rows=int(data["rows"]),
            sheets=int(data["sheets"]),
            entries=[StagedEntry.from_dict(entry) for entry in data["entries"]],
        )


def export_dataset(
    dataset: Dataset,
    *,
    connection: Connection,
    subscription_id: int,
    timezone: str,
    files: ObjectStore,
    archives: ObjectStore,
    staging_prefix: str,
    created: datetime | None = None,
    progress: Callable[[], None] | None = None,
    plan: FilePlan | Callable[[], FilePlan] | None = None,
    part_size: int | None = None,
) -> ExportResult:
    """Render `dataset` for one subscription and stage it under `staging_prefix`; `created`
    (naive UTC) is the workbook's creation date (workbook.render_workbook), `progress` is
    called as each chunk of rows arrives and as each file is staged; `plan` (staged in
    `archives`, or a callable that waits for it) and `part_size` are the run's, for the
    attachments index."""
    with tempfile.TemporaryDirectory(prefix=f"bp-{dataset.name}-") as tmp:
        workdir = Path(tmp)
        extraction = dataset.extract(
            ExtractContext(
                connection=connection,
                subscription_id=subscription_id,
                files=files,
                timezone=timezone,
                archives=archives,
                plan=plan,
                part_size=part_size,
            )
        )
        if progress is not None:
            extraction.chunks = _reporting(extraction.chunks, progress)
        rendered = render_workbook(
            extraction,
            path=workdir / Path(dataset.archive_path).name,
            sheet_title=dataset.sheet_title,
            timezone=timezone,
            archive_path=dataset.archive_path,
            overflow_dir=workdir / "overflow",
            created=created,
        )
        alive = progress or (lambda: None)
        alive()  # the workbook is written; staging may take a while for many long texts
        entries = [stage_file(archives, staging_prefix, dataset.archive_path, rendered.path)]
        for overflow in rendered.overflow_files:
            alive()
            entries.append(
                stage_file(archives, staging_prefix, overflow.archive_path, overflow.local_path)
            )
    return ExportResult(
        dataset=dataset.name,
        archive_path=dataset.archive_path,
        description=dataset.description,
        rows=rendered.rows,
        sheets=len(rendered.sheets),
        entries=entries,
    )


def _manifest_prefix(staging_prefix: str, run_id: str) -> str:
    return f"{staging_prefix.rstrip('/')}/exports/{run_id}/"


def record_staged_export(
    archives: ObjectStore, staging_prefix: str, run_id: str, result: ExportResult, seconds: float
) -> None:
    """Note in staging that this run staged `result` (written once its files are all staged)."""
    manifest = {**result.to_dict(), "seconds": seconds}
    key = f"{_manifest_prefix(staging_prefix, run_id)}{result.dataset}.json"
    archives.put_bytes(key, json.dumps(manifest).encode("utf-8"), "application/json")


def staged_exports(
    archives: ObjectStore, staging_prefix: str, run_id: str
) -> dict[str, tuple[ExportResult, float]]:
    """What earlier attempts of this run staged, by dataset, with the seconds each took."""
    found: dict[str, tuple[ExportResult, float]] = {}
    for info in archives.list(_manifest_prefix(staging_prefix, run_id)):
        try:
            data = json.loads(archives.get_bytes(info.key))
            result = ExportResult.from_dict(data)
        except (ObjectNotFound, ValueError, KeyError, TypeError):
            continue  # unreadable: rendered again
        if result.entries and all(archives.exists(e.staging_key) for e in result.entries):
            found[result.dataset] = (result, float(data.get("seconds", 0.0)))
    return found


def _reporting(chunks: Iterable[T], progress: Callable[[], None]) -> Iterator[T]:
    for chunk in chunks:
        progress()
        yield chunk
