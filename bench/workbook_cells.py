"""Times render_workbook on consultation rows made up in memory: cells written per second.

Not part of the test suite. The rows are made before the clock starts (fixed seed, the
consultations dataset's own columns), so that two checkouts write the same cells:

    PYTHONPATH=. python -m bench.workbook_cells --rows 100000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from backup_pipeline.datasets.base import Extraction, Kind
from backup_pipeline.datasets.consultations import DATASET
from backup_pipeline.datasets.workbook import render_workbook

CHUNK_ROWS = 5_000
WORDS = (
    "dolor", "molar", "sensibilidad", "al", "frío", "encía", "inflamada", "caries", "profunda",
    "resina", "extracción", "control", "en", "quince", "días", "radiografía", "periapical",
    "paciente", "refiere",
)  # fmt: skip


def _value(rng: random.Random, kind: Kind, n: int) -> object:
    if kind is Kind.INTEGER:
        return n if rng.random() < 0.9 else None
    if kind is Kind.DECIMAL:
        return round(rng.uniform(35, 110), 1)
    if kind is Kind.DATETIME:
        return datetime(2024, 1, 1) + timedelta(minutes=rng.randrange(900_000))
    return " ".join(rng.choices(WORDS, k=rng.randrange(1, 12))) if rng.random() < 0.8 else None


def chunks(rows: int) -> list[pd.DataFrame]:
    rng = random.Random(19)
    out = []
    for start in range(0, rows, CHUNK_ROWS):
        count = min(CHUNK_ROWS, rows - start)
        out.append(
            pd.DataFrame(
                {
                    column.key: [_value(rng, column.kind, start + i) for i in range(count)]
                    for column in DATASET.columns
                }
            ).astype({c.key: "datetime64[ns]" for c in DATASET.columns if c.kind is Kind.DATETIME})
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    made = chunks(args.rows)
    with tempfile.TemporaryDirectory(prefix="bench-cells-") as tmp:
        started = time.perf_counter()
        rendered = render_workbook(
            Extraction(columns=DATASET.columns, chunks=iter(made)),
            path=Path(tmp) / "consultas.xlsx",
            sheet_title=DATASET.sheet_title,
            timezone="America/Mexico_City",
            archive_path=DATASET.archive_path,
            overflow_dir=Path(tmp) / "overflow",
            created=datetime(2026, 1, 2),
        )
        seconds = time.perf_counter() - started
    cells = rendered.rows * len(DATASET.columns)
    print(
        json.dumps(
            {
                "rows": rendered.rows,
                "cells": cells,
                "seconds": round(seconds, 3),
                "cells_per_s": round(cells / seconds),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
