"""The naive pipeline a quick implementation would be, on the same clinic, for the ratios.

Each dataset is read whole with pandas.read_sql (the anamnesis pivot and the CFDI reports, which
need the product's own logic, are its extraction concatenated into one DataFrame), written with
DataFrame.to_excel through openpyxl, and every file is read whole into a zip built in memory,
which is then uploaded in one piece.
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from sqlalchemy import Connection

from backup_pipeline.archive.plan import plan_files
from backup_pipeline.datasets import DATASETS
from backup_pipeline.datasets.base import Dataset, ExtractContext
from backup_pipeline.datasets.query import QueryDataset
from backup_pipeline.storage import ObjectNotFound, ObjectStore


def whole_frame(dataset: Dataset, ctx: ExtractContext) -> pd.DataFrame:
    """Every row of the dataset in one DataFrame, with the Spanish headers."""
    if isinstance(dataset, QueryDataset):
        frame = pd.read_sql(dataset.query(ctx.subscription_id), ctx.connection)
        columns = dataset.columns
    else:
        extraction = dataset.extract(ctx)
        columns = extraction.columns
        chunks = list(extraction.chunks)
        frame = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame()
    keys = [c.key for c in columns]
    frame = frame.reindex(columns=keys)
    frame.columns = [c.header for c in columns]
    return frame


def to_excel(frame: pd.DataFrame, path: Path, sheet_title: str) -> None:
    # The least a quick implementation must do for openpyxl to accept the clinic's data: drop
    # the control characters it refuses (vectorised) and the zone of aware datetimes.
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, pd.DatetimeTZDtype):
            frame[name] = column.dt.tz_localize(None)
        elif column.dtype == object or pd.api.types.is_string_dtype(column.dtype):
            try:
                cleaned = column.str.replace(ILLEGAL_CHARACTERS_RE, "", regex=True)
            except AttributeError:  # no strings in this column
                continue
            frame[name] = cleaned.where(cleaned.notna(), column)
    frame.to_excel(path, sheet_name=sheet_title[:31], index=False, engine="openpyxl")


def naive_backup(
    conn: Connection,
    *,
    files: ObjectStore,
    archives: ObjectStore,
    subscription_id: int,
    timezone: str,
    workdir: Path,
    archive_key: str,
) -> dict[str, Any]:
    """Run the naive pipeline; returns rows and seconds per dataset and for the files."""
    ctx = ExtractContext(
        connection=conn, subscription_id=subscription_id, files=files, timezone=timezone
    )
    report: dict[str, Any] = {"datasets": {}}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for dataset in DATASETS:
            started = time.perf_counter()
            frame = whole_frame(dataset, ctx)
            read = time.perf_counter()
            path = workdir / Path(dataset.archive_path).name
            to_excel(frame, path, dataset.sheet_title)
            rendered = time.perf_counter()
            zf.write(path, dataset.archive_path)
            path.unlink()
            report["datasets"][dataset.name] = {
                "rows": len(frame),
                "read_s": read - started,
                "excel_s": rendered - read,
                "total_s": time.perf_counter() - started,
            }
            del frame
        started = time.perf_counter()
        copied = copied_bytes = 0
        for planned in plan_files(conn, subscription_id):
            try:
                data = files.get_bytes(planned.source_key)
            except ObjectNotFound:
                continue
            zf.writestr(planned.archive_path, data)
            copied += 1
            copied_bytes += len(data)
        report["files"] = {
            "files": copied,
            "bytes": copied_bytes,
            "seconds": time.perf_counter() - started,
        }
    started = time.perf_counter()
    archives.put_bytes(archive_key, buffer.getvalue(), "application/zip")
    report["upload_s"] = time.perf_counter() - started
    report["archive_bytes"] = buffer.tell()
    return report
