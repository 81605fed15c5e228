"""The workbook writer, pinned by reading every file back with openpyxl."""

from __future__ import annotations

import gc
import re
import weakref
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from openpyxl import load_workbook
from openpyxl.worksheet.worksheet import Worksheet

from backup_pipeline.datasets.base import Column, Extraction, Kind, RecordName, Sheet
from backup_pipeline.datasets.workbook import (
    DATE_FORMAT,
    DATETIME_FORMAT,
    MONEY_FORMAT,
    RenderedWorkbook,
    render_workbook,
)

FORMULA_LOOKALIKES = [
    "=1+1",
    "+1",
    "-1",
    "@SUM(A1)",
    "=cmd|' /C calc'!A0",
    '=HYPERLINK("http://x","y")',
    "#N/A",
    "<r><t>x</t></r></is><f>1+1</f><is><r><t>y</t></r>",
]

TEXT_COLUMNS = (Column("a", "Nombre"), Column("b", "Notas"))


def render(
    tmp_path: Path,
    columns: tuple[Column, ...],
    *frames: pd.DataFrame,
    extra_sheets: list[Sheet] | None = None,
    title: str = "Consultas",
    timezone: str = "America/Mexico_City",
    max_rows_per_sheet: int | None = None,
) -> RenderedWorkbook:
    extraction = Extraction(columns=columns, chunks=iter(frames), extra_sheets=extra_sheets or [])
    options = {} if max_rows_per_sheet is None else {"max_rows_per_sheet": max_rows_per_sheet}
    return render_workbook(
        extraction,
        path=tmp_path / "consultas.xlsx",
        sheet_title=title,
        timezone=timezone,
        archive_path="consultas.xlsx",
        overflow_dir=tmp_path / "overflow",
        **options,
    )


def excel_shows(stored: str) -> str:
    """The text Excel shows for a stored string: it decodes `_xHHHH_`; openpyxl does not."""
    return re.sub("_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m.group(1), 16)), stored)


def data_rows(sheet: Worksheet) -> list[list[object]]:
    return [[cell.value for cell in row] for row in sheet.iter_rows(min_row=2)]


def headers(sheet: Worksheet) -> list[object]:
    return [cell.value for cell in sheet[1]]


def test_headers_are_spanish_frozen_and_filtered_over_the_data(tmp_path: Path) -> None:
    columns = (
        Column("patient_id", "ID paciente", Kind.INTEGER),
        Column("notes", "Notas"),
        Column("started_at", "Fecha y hora", Kind.DATETIME),
    )
    frame = pd.DataFrame(
        {
            "patient_id": [1, 2, 3],
            "notes": ["corta", "x" * 500, None],
            "started_at": [datetime(2026, 1, 15, 6, 30)] * 3,
        }
    )
    rendered = render(tmp_path, columns, frame)

    sheet = load_workbook(rendered.path)["Consultas"]
    assert headers(sheet) == ["ID paciente", "Notas", "Fecha y hora"]
    assert all(cell.font.b for cell in sheet[1])
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == "A1:C4"
    widths = {letter: sheet.column_dimensions[letter].width for letter in "ABC"}
    assert 10 <= widths["A"] <= 20
    assert 55 <= widths["B"] <= 61  # long notes: capped, not 500 wide
    assert widths["C"] >= 16  # "dd/mm/yyyy hh:mm" fits
    assert rendered.rows == 3 and rendered.sheets == ["Consultas"]


@pytest.mark.parametrize("value", FORMULA_LOOKALIKES)
def test_formula_text_stays_text(tmp_path: Path, value: str) -> None:
    frame = pd.DataFrame({"a": [value], "b": [f"{value} "]})
    rendered = render(tmp_path, (*TEXT_COLUMNS, Column("c", value)), frame.assign(c=value))

    sheet = load_workbook(rendered.path)["Consultas"]
    cells = [cell for row in sheet.iter_rows() for cell in row]
    assert [cell.data_type for cell in cells] == ["s"] * 6
    assert [cell.value for cell in cells] == ["Nombre", "Notas", value, value, f"{value} ", value]


def test_forbidden_characters_are_removed_and_everything_else_kept(tmp_path: Path) -> None:
    values = [
        "Dolor 🦷\tmolar\ninferior",
        "bell\x07 null\x00 vt\x0b lone\ud800 fin",
        "línea\r\nsiguiente\rotra",
        "literal _x0041_ escape",
        "  espacios  ",
    ]
    rendered = render(tmp_path, TEXT_COLUMNS, pd.DataFrame({"a": values, "b": values}))

    rows = data_rows(load_workbook(rendered.path)["Consultas"])
    shown = [excel_shows(row[0]) for row in rows]
    assert shown == [
        "Dolor 🦷\tmolar\ninferior",
        "bell null vt lone fin",
        "línea\nsiguiente\notra",
        "literal _x0041_ escape",
        "  espacios  ",
    ]
    assert [row[1] for row in rows] == [row[0] for row in rows]


def test_each_kind_becomes_a_real_excel_value(tmp_path: Path) -> None:
    columns = (
        Column("day", "Fecha", Kind.DATE),
        Column("moment", "Fecha y hora", Kind.DATETIME),
        Column("price", "Precio", Kind.MONEY),
        Column("weight", "Peso (kg)", Kind.DECIMAL),
        Column("count", "Frecuencia", Kind.INTEGER),
        Column("active", "Vigente", Kind.BOOLEAN),
        Column("text", "Texto"),
    )
    frame = pd.DataFrame(
        {
            "day": [date(2026, 1, 15), None, pd.Timestamp("2026-02-01")],
            "moment": [datetime(2026, 1, 15, 6, 30), None, datetime(2026, 7, 1, 12, 0, 59)],
            "price": [Decimal("1234.50"), None, Decimal("0.10")],
            "weight": [Decimal("70.25"), np.nan, 3],
            "count": [72, None, 0],
            "active": [True, None, False],
            "text": ["x", np.nan, None],
        }
    )
    rendered = render(tmp_path, columns, frame)

    sheet = load_workbook(rendered.path)["Consultas"]
    first, empty, last = list(sheet.iter_rows(min_row=2))
    assert [c.value for c in first] == [
        datetime(2026, 1, 15),
        datetime(2026, 1, 15, 0, 30),  # 06:30 UTC is 00:30 in Mexico City (UTC-6)
        1234.5,
        70.25,
        72,
        "Sí",
        "x",
    ]
    assert [c.value for c in last][:6] == [
        datetime(2026, 2, 1),
        datetime(2026, 7, 1, 6, 0, 59),  # no daylight saving time in Mexico City since 2022
        0.1,
        3,
        0,
        "No",
    ]
    assert [c.number_format for c in first][:3] == [DATE_FORMAT, DATETIME_FORMAT, MONEY_FORMAT]
    assert [c.data_type for c in first] == ["d", "d", "n", "n", "n", "s", "s"]
    assert isinstance(first[4].value, int)
    assert all(cell.value is None for cell in empty)
    assert last[6].value is None


def test_datetimes_follow_the_clinic_time_zone_and_its_daylight_saving(tmp_path: Path) -> None:
    columns = (Column("moment", "Fecha y hora", Kind.DATETIME),)
    frame = pd.DataFrame({"moment": [datetime(2026, 1, 15, 6, 30), datetime(2026, 7, 15, 6, 30)]})
    rendered = render(tmp_path, columns, frame, timezone="America/Tijuana")

    rows = data_rows(load_workbook(rendered.path)["Consultas"])
    assert rows == [[datetime(2026, 1, 14, 22, 30)], [datetime(2026, 7, 14, 23, 30)]]


def test_local_datetimes_are_shown_as_they_are(tmp_path: Path) -> None:
    columns = (Column("fecha", "Fecha de emisión", Kind.LOCAL_DATETIME),)
    frame = pd.DataFrame({"fecha": [None, "2026-01-15T10:30:00"]})
    rendered = render(tmp_path, columns, frame, timezone="America/Tijuana")

    sheet = load_workbook(rendered.path)["Consultas"]
    assert data_rows(sheet) == [[None], [datetime(2026, 1, 15, 10, 30)]]
    assert sheet["A3"].number_format == DATETIME_FORMAT


def test_dates_before_excel_s_calendar_are_written_as_text(tmp_path: Path) -> None:
    columns = (Column("day", "Fecha", Kind.DATE), Column("moment", "Registro", Kind.DATETIME))
    frame = pd.DataFrame(
        {"day": [date(1899, 5, 1), date(1900, 3, 1)], "moment": [datetime(1900, 1, 2, 12), None]}
    )
    rendered = render(tmp_path, columns, frame, timezone="UTC")

    rows = data_rows(load_workbook(rendered.path)["Consultas"])
    assert rows == [["01/05/1899", "02/01/1900 12:00"], [datetime(1900, 3, 1), None]]


def test_text_longer_than_a_cell_goes_whole_to_a_file(tmp_path: Path) -> None:
    long_text = ("Evolución 🦷 " * 4_000) + "\r\nfin"
    at_limit = "a" * 32_767
    frame = pd.DataFrame({"a": ["corto", at_limit], "b": [long_text, "x"]})
    rendered = render(tmp_path, TEXT_COLUMNS, frame)

    assert [o.archive_path for o in rendered.overflow_files] == [
        "textos_largos/consultas/consultas_fila2_notas.txt"  # no record id: sheet and row
    ]
    overflow = rendered.overflow_files[0]
    assert overflow.local_path.read_bytes() == long_text.encode("utf-8")
    rows = data_rows(load_workbook(rendered.path)["Consultas"])
    assert "textos_largos/consultas/consultas_fila2_notas.txt" in rows[0][1]
    assert "(32,767 caracteres)" in rows[0][1]
    assert "texto completo" in rows[0][1]
    assert rows[1][0] == at_limit  # exactly at the limit: stays in its cell


def test_a_long_text_file_is_named_in_spanish_after_its_record_and_column(
    tmp_path: Path,
) -> None:
    long_text = "x" * 40_000
    columns = (
        Column("consultation_id", "ID consulta", Kind.INTEGER),
        Column("notes", "Notas"),
        Column("exam", "Exploración física"),
        Column("exam2", "Exploración  física"),  # the same slug: both files survive
    )
    frame = pd.DataFrame(
        {"consultation_id": [125, 126], "notes": [long_text, "corta"],
         "exam": [long_text, long_text], "exam2": [long_text, None]}
    )  # fmt: skip
    extraction = Extraction(
        columns=columns, chunks=iter([frame]), record=RecordName("consulta", "consultation_id")
    )
    rendered = render_workbook(
        extraction,
        path=tmp_path / "consultas.xlsx",
        sheet_title="Consultas",
        timezone="UTC",
        archive_path="consultas.xlsx",
        overflow_dir=tmp_path / "overflow",
    )

    assert [o.archive_path for o in rendered.overflow_files] == [
        "textos_largos/consultas/consulta_125_notas.txt",
        "textos_largos/consultas/consulta_125_exploracion_fisica.txt",
        "textos_largos/consultas/consulta_125_exploracion_fisica_2.txt",
        "textos_largos/consultas/consulta_126_exploracion_fisica.txt",
    ]


def test_long_text_files_of_a_hostile_record_id_stay_within_the_path_limit(
    tmp_path: Path,
) -> None:
    uuid = "ＡＢＣ😀" * 60  # a hostile folio fiscal: wide characters and emoji
    columns = (
        Column("uuid", "UUID"),
        Column("a", "Observaciones " * 10),  # one header slug for both: numbered
        Column("b", "Observaciones " * 10 + "!"),
    )
    frame = pd.DataFrame({"uuid": [uuid], "a": ["x" * 40_000], "b": ["y" * 40_000]})
    extraction = Extraction(
        columns=columns, chunks=iter([frame]), record=RecordName("comprobante", "uuid")
    )
    rendered = render_workbook(
        extraction,
        path=tmp_path / "comprobantes_recibidos.xlsx",
        sheet_title="Comprobantes",
        timezone="UTC",
        archive_path="facturacion/gastos/comprobantes_recibidos.xlsx",
        overflow_dir=tmp_path / "overflow",
    )

    paths = [o.archive_path for o in rendered.overflow_files]
    assert len(paths) == 2 and len({p.casefold() for p in paths}) == 2
    assert all(len(p.encode("utf-16-le")) // 2 <= 140 for p in paths)  # Windows' limit
    assert all(
        p.startswith("textos_largos/facturacion/gastos/comprobantes_recibidos/comprobante_ＡＢＣ😀")
        for p in paths
    )
    assert paths[1].endswith("_2.txt")


def test_a_mixed_column_types_each_cell_and_keeps_text_text(tmp_path: Path) -> None:
    columns = (Column("answer", "Respuesta", Kind.MIXED),)
    values = [date(2021, 10, 7), 15, 36.5, "=1+1", "ayer", None, *FORMULA_LOOKALIKES]
    frame = pd.DataFrame({"answer": pd.Series(values, dtype=object)})
    rendered = render(tmp_path, columns, frame)

    sheet = load_workbook(rendered.path)["Consultas"]
    cells = [sheet.cell(row=row, column=1) for row in range(2, 2 + len(values))]
    assert [c.value for c in cells] == [
        datetime(2021, 10, 7), 15, 36.5, "=1+1", "ayer", None, *FORMULA_LOOKALIKES
    ]  # fmt: skip
    assert cells[0].number_format == DATE_FORMAT
    assert cells[1].number_format == "General"
    assert all(c.data_type == "s" for c in cells[3:5] + cells[6:])


def test_rows_beyond_the_sheet_limit_continue_on_more_sheets(tmp_path: Path) -> None:
    columns = (Column("n", "Número", Kind.INTEGER), Column("t", "Texto"))
    chunks = [pd.DataFrame({"n": range(i, i + 4), "t": ["=x"] * 4}) for i in (0, 4, 8)]
    rendered = render(tmp_path, columns, *chunks, max_rows_per_sheet=5)

    book = load_workbook(rendered.path)
    assert rendered.sheets == book.sheetnames == ["Consultas", "Consultas (2)", "Consultas (3)"]
    assert rendered.rows == 12
    numbers = []
    for sheet, expected_rows in zip(book.worksheets, (5, 5, 2), strict=True):
        assert headers(sheet) == ["Número", "Texto"]
        assert sheet.freeze_panes == "A2"
        assert sheet.auto_filter.ref == f"A1:B{expected_rows + 1}"
        numbers += [row[0] for row in data_rows(sheet)]
    assert numbers == list(range(12))


def test_extra_sheets_follow_the_data_with_the_same_rules(tmp_path: Path) -> None:
    extra = Sheet(
        "Preguntas",
        (Column("q", "Pregunta"), Column("active", "Vigente", Kind.BOOLEAN)),
        pd.DataFrame({"q": ["=¿Fuma?", "Alergias"], "active": [True, False]}),
    )
    frame = pd.DataFrame({"a": ["x", "y", "z"], "b": ["y", "z", "x"]})
    rendered = render(tmp_path, TEXT_COLUMNS, frame, extra_sheets=[extra], max_rows_per_sheet=2)

    book = load_workbook(rendered.path)
    assert book.sheetnames == rendered.sheets == ["Consultas", "Consultas (2)", "Preguntas"]
    sheet = book["Preguntas"]
    assert sheet.freeze_panes == "A2" and sheet.auto_filter.ref == "A1:B3"
    assert data_rows(sheet) == [["=¿Fuma?", "Sí"], ["Alergias", "No"]]
    assert rendered.rows == 3  # the dataset's own rows only


def test_a_sheet_filled_exactly_opens_the_next_only_for_another_row(tmp_path: Path) -> None:
    columns = (Column("n", "Número", Kind.INTEGER),)
    # 3 + 2 rows fill the first sheet at a chunk's end; 5 more fill the second at the table's end.
    chunks = [pd.DataFrame({"n": range(i, j)}) for i, j in ((0, 3), (3, 5), (5, 10))]
    rendered = render(tmp_path, columns, *chunks, max_rows_per_sheet=5)

    book = load_workbook(rendered.path)
    assert rendered.sheets == book.sheetnames == ["Consultas", "Consultas (2)"]
    assert rendered.rows == 10
    assert [[r[0] for r in data_rows(sheet)] for sheet in book.worksheets] == [
        [0, 1, 2, 3, 4],
        [5, 6, 7, 8, 9],
    ]


def test_a_dataset_without_rows_gives_headers_only(tmp_path: Path) -> None:
    empty = pd.DataFrame({"a": [], "b": []})
    for frames in ((), (empty,)):
        rendered = render(tmp_path, TEXT_COLUMNS, *frames)
        sheet = load_workbook(rendered.path)["Consultas"]
        assert headers(sheet) == ["Nombre", "Notas"]
        assert sheet.max_row == 1 and rendered.rows == 0
        assert sheet.auto_filter.ref == "A1:B1"


def test_sheet_titles_are_made_valid(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": ["x"], "b": ["y"]})
    rendered = render(
        tmp_path, TEXT_COLUMNS, frame, title="Notas: [médicas] / 2026 * del consultorio?"
    )
    assert rendered.sheets == ["Notas médicas 2026 del consulto"]
    assert load_workbook(rendered.path).sheetnames == rendered.sheets


def test_chunks_are_written_one_at_a_time(tmp_path: Path) -> None:
    """Memory stays flat: a chunk is released before the one after next is even read."""
    alive: list[weakref.ref[pd.DataFrame]] = []

    def chunks() -> Iterator[pd.DataFrame]:
        for i in range(5):
            if sum(ref() is not None for ref in alive) > 1:
                gc.collect()  # only if reference cycles keep a frame alive
            assert sum(ref() is not None for ref in alive) <= 1
            frame = pd.DataFrame({"a": [f"fila {i}"] * 100, "b": ["x"] * 100})
            alive.append(weakref.ref(frame))
            yield frame

    extraction = Extraction(columns=TEXT_COLUMNS, chunks=chunks())
    rendered = render_workbook(
        extraction,
        path=tmp_path / "big.xlsx",
        sheet_title="Datos",
        timezone="UTC",
        archive_path="big.xlsx",
        overflow_dir=tmp_path,
    )
    assert rendered.rows == 500


def test_a_failed_extraction_leaves_no_workbook(tmp_path: Path) -> None:
    def chunks() -> Iterator[pd.DataFrame]:
        yield pd.DataFrame({"a": ["x"], "b": ["y"]})
        raise ConnectionError("database went away")

    with pytest.raises(ConnectionError):
        render_workbook(
            Extraction(columns=TEXT_COLUMNS, chunks=chunks()),
            path=tmp_path / "consultas.xlsx",
            sheet_title="Consultas",
            timezone="UTC",
            archive_path="consultas.xlsx",
            overflow_dir=tmp_path,
        )
    assert not (tmp_path / "consultas.xlsx").exists()


def test_a_column_missing_from_the_rows_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="'b'"):
        render(tmp_path, TEXT_COLUMNS, pd.DataFrame({"a": ["x"]}))
