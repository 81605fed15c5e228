"""Loading the code location stays cheap: what only a workbook, a GCS store, `verify` or a
deployment's GraphQL client needs is imported when it is used (issue 23: startup in seconds).
A run imports the renderer once before it forks its workbook workers, which share it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Each costs tens to hundreds of milliseconds to import (bench/startup.py, `-X importtime`).
LAZY = (
    "pandas",  # with pyarrow and numpy: datasets, when rows are extracted
    "xlsxwriter",  # datasets.workbook, when a workbook is rendered
    "openpyxl",  # archive.verify, when `verify` reads a workbook back
    "google.cloud.storage",  # storage.gcs, when a gs:// store is opened
    "google.auth",
    "dagster_graphql",  # operations, when a daemon serves the instance
)

LOAD = f"""
import json, sys
import backup_pipeline.cli, backup_pipeline.definitions, backup_pipeline.operations
from backup_pipeline.settings import Settings
backup_pipeline.definitions.build_definitions(Settings.from_env()).resolve_job_def("backup_job")
print(json.dumps([name for name in {LAZY!r} if name in sys.modules]))
"""

RENDER = """
import json, sys, tempfile
from datetime import date, datetime
from pathlib import Path
from backup_pipeline.datasets.export import import_renderer
import_renderer()
before = set(sys.modules)
import pandas as pd
from backup_pipeline.datasets.base import Column, Extraction, Kind
from backup_pipeline.datasets.workbook import render_workbook
row = {"text": "x", "integer": 1, "decimal": 1.5, "money": 2.25, "date": date(2024, 1, 2),
       "datetime": datetime(2024, 1, 2, 3, 4), "local_datetime": "2024-01-02T03:04:05",
       "boolean": True, "mixed": date(2024, 1, 1)}
frame = pd.DataFrame([row, {key: None for key in row}])
with tempfile.TemporaryDirectory() as tmp:
    render_workbook(
        Extraction(columns=tuple(Column(k.value, k.value, k) for k in Kind), chunks=iter([frame])),
        path=Path(tmp) / "a.xlsx", sheet_title="A", timezone="America/Mexico_City",
        archive_path="a.xlsx", overflow_dir=Path(tmp) / "overflow",
    )
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _run(code: str, tmp_path: Path) -> list[str]:
    # The embedded defaults (file:// stores, an outbox): what `make dev` and the tests load.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "DAGSTER_"))}
    env["BACKUP_VAR_DIR"] = str(tmp_path)
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_loading_the_code_location_imports_no_renderer_cloud_client_or_graphql(tmp_path: Path):
    assert _run(LOAD, tmp_path) == []


def test_the_renderer_import_holds_what_a_forked_worker_renders_with(tmp_path: Path):
    # A module of these imported after the fork would be imported again in every worker, its
    # pages private to each (PSS) and its import paid twice (CPU).
    imported_by_rendering = _run(RENDER, tmp_path)
    heavy = ("pandas", "xlsxwriter", "pyarrow")
    assert [name for name in imported_by_rendering if name.split(".")[0] in heavy] == []
