"""Every cell of a fixed, hostile set of rows, pinned as the workbook writer rendered it before
issue 23's work on its speed: the same rows must give the same cells and the same sheet XML.

The expected values (`data/workbook_golden.json`) were computed by the writer as it was at
`6c438ed`, then regenerated once for exact integers (the integers a number cell would round,
2**53 + 1, 2**60, int64's ends, are text with all their digits; every other cell as before);
regenerate them only for a change of cells meant to be seen by the clinic:
`PYTHONPATH=. python -m backup_pipeline_tests.rules.test_workbook_golden`.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from openpyxl import load_workbook

from backup_pipeline.datasets.base import Column, Extraction, Kind, RecordName, Sheet
from backup_pipeline.datasets.workbook import render_workbook

GOLDEN = Path(__file__).parent.parent / "data" / "workbook_golden.json"
CREATED = datetime(2026, 1, 2, 3, 4, 5)

COLUMNS = (
    Column("record_id", "ID registro", Kind.INTEGER),
    Column("count", "Cantidad", Kind.INTEGER),
    Column("count_float", "Cantidad (flotante)", Kind.INTEGER),
    Column("weight", "Peso (kg)", Kind.DECIMAL),
    Column("price", "Precio", Kind.MONEY),
    Column("day", "Fecha", Kind.DATE),
    Column("moment", "Fecha y hora", Kind.DATETIME),
    Column("moment_typed", "Fecha y hora (datetime64)", Kind.DATETIME),
    Column("local", "Fecha local", Kind.LOCAL_DATETIME),
    Column("active", "Vigente", Kind.BOOLEAN),
    Column("text", "Texto"),
    Column("notes", "Notas largas"),
    Column("plain", "Texto limpio"),
    Column("lines", "Texto con saltos"),
    Column("mixed", "Respuesta", Kind.MIXED),
)

# 2**53 + 1 is the first integer a double cannot hold; int64's limits are the ends of the column.
_BIG = 2**53 + 1
_LONG = "Evolución 🦷 " * 3_000  # under 32,767 characters, over 32,767 UTF-16 units
_TEXTS: list[Any] = [
    "texto simple",
    "=1+1",
    "+52 55 1234 5678",
    "-1",
    "@SUM(A1)",
    '=HYPERLINK("http://x","y")',
    "#N/A",
    "<r>rico</r>",
    "<r><t>x</t></r></is><f>1+1</f><is><r><t>y</t></r>",
    "<r>sin cierre",
    "control\x00\x01\x08\x0b\x0c\x1f fin",
    "tab\tlínea\r\nretorno\rsolo\nLF",
    "lone \ud800 surrogate and \ufffe\uffff",
    "emoji 🦷😀 y acentos ñáéíóú",
    "literal _x0041_ escape",
    "  espacios  ",
    " ",
    "",
    "\x00\x01",
    "<tag> & 'quotes' \"double\"",
    "a" * 32_767,
    "b" * 32_768,
    _LONG,
    "x" * 40_000 + "\r\nfin\x00",
    None,
    np.nan,
    7,
    1.5,
    Decimal("2.50"),
    True,
    datetime(2024, 5, 6, 7, 8, 9),
]
_MIXED: list[Any] = [
    date(2021, 10, 7),
    date(1899, 12, 31),
    date(1900, 2, 28),
    date(1900, 3, 1),
    15,
    _BIG,
    -(2**63),
    36.5,
    float("nan"),
    float("inf"),
    float("-inf"),
    Decimal("1.10"),
    Decimal("NaN"),
    True,
    "15 aprox.",
    "=1+1",
    "<r>x</r>",
    datetime(2024, 1, 1, 12, 0),
    None,
    "",
    "c" * 40_000,
]


def _column(values: list[Any], n: int) -> list[Any]:
    return [values[i % len(values)] for i in range(n)]


def _frames() -> list[pd.DataFrame]:
    n = 40
    moments = [
        datetime(2024, 3, 10, 9, 59, 59, 999_999),  # America/Tijuana: just before DST starts
        datetime(2024, 3, 10, 10, 0),
        datetime(2024, 11, 3, 8, 59, 59),  # the hour that repeats when it ends
        datetime(2024, 11, 3, 9, 0),
        datetime(2024, 11, 3, 9, 30, 0, 500_000),
        datetime(1899, 12, 31, 23, 59),
        datetime(1900, 1, 1, 7, 59),  # before 1900-03-01 in UTC and locally
        datetime(1900, 3, 1, 7, 59),  # 1900-03-01 in UTC, the day before locally
        datetime(1900, 3, 1, 8, 0, 1),
        datetime(2026, 1, 15, 6, 30, 0, 123_456),
        datetime(2099, 12, 31, 23, 59, 59, 999_999),
        None,
    ]
    frame = pd.DataFrame(
        {
            "record_id": list(range(1, n + 1)),
            # As the readers give a chunk's integer column with a NULL (datasets.base.
            # integer_column): the values themselves, never floats.
            "count": pd.Series(
                _column([72, None, 0, -5, _BIG, 2**63 - 1, np.int64(3)], n), dtype=object
            ),
            "count_float": _column([1.0, np.nan, 2.0**60, -0.0], n),
            "weight": _column(
                [Decimal("70.25"), np.nan, 3, 1e300, float("inf"), None, Decimal("0.1"), 0.1], n
            ),
            "price": _column([Decimal("1234.50"), None, Decimal("-0.005"), 1e-9, -float("inf")], n),
            "day": _column(
                [
                    date(2026, 1, 15),
                    None,
                    pd.Timestamp("2026-02-01"),
                    date(1899, 5, 1),
                    date(1900, 2, 28),
                    date(1900, 3, 1),
                    "2024-02-29",
                    "2024-02-29T23:00:00",
                    datetime(2024, 7, 1, 23, 59),
                    pd.NaT,
                ],
                n,
            ),
            "moment": pd.Series(_column(moments, n), dtype=object),
            "moment_typed": pd.Series(_column(moments, n), dtype="datetime64[ns]"),
            "local": _column(
                [None, "2026-01-15T10:30:00", "1899-06-01T08:00:00", "2026-03-08T02:30:15"], n
            ),
            "active": _column([True, None, False, 0, 1, np.bool_(True)], n),
            "text": _column(_TEXTS, n),
            "notes": _column([None, "corta", "y" * 33_000, "z" * 32_768], n),
            "mixed": pd.Series(_column(_MIXED, n), dtype=object),
            "lines": _column(["a\r\nb", None, "limpio", "", "c\x00d", "e\rf", "<r>\r</r>"], n),
            "plain": _column(
                ["dolor molar", None, "", "<r>rico</r>", "=1+1", "  ", "ñ 🦷", "e" * 16_383], n
            ),
        }
    )
    # Two chunks, the second with its own index, as pandas.read_sql yields them.
    return [frame.iloc[:25], frame.iloc[25:].reset_index(drop=True)]


def _extra_sheet() -> Sheet:
    columns = (Column("section", "Sección"), Column("position", "Posición", Kind.INTEGER))
    frame = pd.DataFrame(
        {"section": ["A", None, "<r>x</r>", "d" * 40_000], "position": [1, 2, None, 4]}
    )
    return Sheet("Preguntas", columns, frame)


def _render(tmp_path: Path) -> tuple[Path, list[tuple[str, str]]]:
    rendered = render_workbook(
        Extraction(
            columns=COLUMNS,
            chunks=iter(_frames()),
            extra_sheets=[_extra_sheet()],
            record=RecordName("registro", "record_id"),
        ),
        path=tmp_path / "golden.xlsx",
        sheet_title="Registros",
        timezone="America/Tijuana",
        archive_path="golden.xlsx",
        overflow_dir=tmp_path / "overflow",
        max_rows_per_sheet=30,
        created=CREATED,
    )
    overflow = [
        (o.archive_path, hashlib.sha256(o.local_path.read_bytes()).hexdigest())
        for o in rendered.overflow_files
    ]
    return rendered.path, overflow


def _plain(value: object) -> object:
    if isinstance(value, float):
        return repr(value) if not math.isfinite(value) else value
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def describe(tmp_path: Path) -> dict[str, Any]:
    """Every cell (value, type, format), each sheet part's SHA-256 and each long-text file."""
    path, overflow = _render(tmp_path)
    with zipfile.ZipFile(path) as archive:
        parts = {
            name: hashlib.sha256(archive.read(name)).hexdigest()
            for name in sorted(archive.namelist())
        }
    book = load_workbook(path)
    sheets = {
        sheet.title: [
            [[_plain(c.value), type(c.value).__name__, c.data_type, c.number_format] for c in row]
            for row in sheet.iter_rows()
        ]
        for sheet in book.worksheets
    }
    return {"parts": parts, "sheets": sheets, "overflow": [list(o) for o in overflow]}


def test_every_cell_and_sheet_part_is_as_before(tmp_path: Path) -> None:
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    actual = json.loads(json.dumps(describe(tmp_path)))

    assert actual["overflow"] == expected["overflow"]
    assert actual["sheets"].keys() == expected["sheets"].keys()
    for title, rows in expected["sheets"].items():
        for number, (got, want) in enumerate(zip(actual["sheets"][title], rows, strict=True)):
            assert got == want, f"{title}, row {number + 1}"
    assert actual["parts"] == expected["parts"]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps(describe(Path(tmp)), indent=1, ensure_ascii=True) + "\n")
