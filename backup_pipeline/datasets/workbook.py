"""The workbooks the clinic opens: a dataset's row chunks streamed into one .xlsx file.

XlsxWriter in constant_memory mode writes each row to disk as soon as the next one starts, so
memory stays flat whatever the dataset's size. It was chosen over openpyxl's write-only mode
because it wrote the same cells (types, values, formats as read back by openpyxl) about 1.7 times
faster in a rough measurement (50,000 rows x 17 mixed columns: 5.8-6.6 s against 10.2 s), and its
`write_string` never turns text into a formula. Everything library-specific stays in this module.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path, PurePosixPath
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import xlsxwriter
from slugify import slugify
from xlsxwriter.format import Format
from xlsxwriter.worksheet import Worksheet

from backup_pipeline.datasets.base import Column, Extraction, Kind, RecordName
from backup_pipeline.rules.archive_names import (
    MAX_PATH_UNITS,
    collision_keys,
    safe_component,
    utf16_units,
)
from backup_pipeline.rules.cleaning import (
    ALWAYS_EXACT_INTEGER,
    EXCEL_CELL_MAX_CHARS,
    already_cell_texts,
    cell_text,
    clean_text,
    continuation_title,
    fits_in_cell,
    integer_cell,
)
from backup_pipeline.rules.spanish import spanish_number

MAX_DATA_ROWS = 1_048_575  # Excel's 1,048,576 rows minus the header row
OVERFLOW_FOLDER = "textos_largos"

DATE_FORMAT = "dd/mm/yyyy"
DATETIME_FORMAT = "dd/mm/yyyy hh:mm"
MONEY_FORMAT = "#,##0.00"

# Excel's serial day 0; serials before 1900-03-01 are off by one day (the Lotus 1900 leap-year
# bug) and before 1900 there are none, so such dates are written as text in the same format.
_EXCEL_EPOCH = datetime(1899, 12, 30)
_FIRST_SERIAL_DATE = date(1900, 3, 1)
_EPOCH_ORDINAL = _EXCEL_EPOCH.toordinal()

_MAX_WIDTH = 60  # characters; longer text wraps or is cut off visually, never in the data
_MAX_HEADER_WIDTH = 30  # a long header (an anamnesis question) wraps instead of widening
_FILTER_BUTTON_WIDTH = 3
_KIND_WIDTH = {
    Kind.TEXT: 10,
    Kind.INTEGER: 10,
    Kind.DECIMAL: 10,
    Kind.MONEY: 14,
    Kind.DATE: 12,
    Kind.DATETIME: 17,
    Kind.LOCAL_DATETIME: 17,
    Kind.BOOLEAN: 6,
    Kind.MIXED: 12,
}
_SLUG_MAX_CHARS = 40  # of a column's header in a long-text file's name
_PREVIEW_CHARS = 1_000


@dataclass(frozen=True)
class OverflowFile:
    """A text too long for a cell, written whole to its own file for the archive."""

    archive_path: str
    local_path: Path


@dataclass
class RenderedWorkbook:
    path: Path
    rows: int  # data rows of the dataset itself (all its sheets), not counting extra sheets
    sheets: list[str]
    overflow_files: list[OverflowFile] = field(default_factory=list)


@dataclass(frozen=True)
class _LongText:
    """A cell value longer than Excel holds: it goes to a file and the cell points there."""

    text: str


@dataclass(frozen=True)
class _DateCell:
    """A date in a column whose other cells may be numbers or text: formatted cell by cell."""

    serial: int


CellValue = str | int | float | _LongText | _DateCell | None


def render_workbook(
    extraction: Extraction,
    *,
    path: Path,
    sheet_title: str,
    timezone: str,
    archive_path: str,
    overflow_dir: Path,
    max_rows_per_sheet: int = MAX_DATA_ROWS,
    created: datetime | None = None,
) -> RenderedWorkbook:
    """Write the extraction's rows (then its extra sheets) to `path`, one chunk at a time.

    `archive_path` is where the workbook goes in the archive; long texts are written under
    `overflow_dir` and returned with their own archive paths (under textos_largos/). `created`
    (naive UTC) is the workbook's creation date in its properties: the same rows and date give
    the same bytes, wherever and whenever they are rendered.
    """
    if not 1 <= max_rows_per_sheet <= MAX_DATA_ROWS:
        raise ValueError(f"max_rows_per_sheet must be between 1 and {MAX_DATA_ROWS}")
    zone = ZoneInfo(timezone)
    path.parent.mkdir(parents=True, exist_ok=True)
    book = xlsxwriter.Workbook(
        str(path),
        {
            "constant_memory": True,
            # Row data is spooled next to the workbook, not in a possibly small /tmp.
            "tmpdir": str(path.parent),
            # ZIP64 records are only written for members that need them (> 4 GiB).
            "use_zip64": True,
        },
    )
    if created is not None:
        book.set_properties({"created": created})
    writer = _WorkbookWriter(
        book,
        zone=zone,
        overflow_prefix=f"{OVERFLOW_FOLDER}/{PurePosixPath(archive_path).with_suffix('')}",
        overflow_dir=overflow_dir,
        max_rows_per_sheet=max_rows_per_sheet,
    )
    try:
        rows = writer.write_table(
            sheet_title, extraction.columns, extraction.chunks, record=extraction.record
        )
        for sheet in extraction.extra_sheets:
            writer.write_table(sheet.title, sheet.columns, iter([sheet.frame]))
        book.close()
    except BaseException:
        # Close to release the spooled row files, and leave no half-written workbook behind.
        with suppress(Exception):
            book.close()
        path.unlink(missing_ok=True)
        raise
    return RenderedWorkbook(
        path=path, rows=rows, sheets=writer.sheet_titles, overflow_files=writer.overflow_files
    )


@dataclass
class _OpenSheet:
    title: str
    worksheet: Worksheet
    rows: int = 0  # data rows written so far


@dataclass
class _Table:
    """One table being written: the dataset's rows, or an extra sheet."""

    title: str
    columns: Sequence[Column]
    widths: list[int]
    formats: list[Format | None]
    record: RecordName | None = None
    record_index: int | None = None  # the column holding the row's record id
    sheet: _OpenSheet = field(init=False)  # the sheet rows go to now
    sheets: int = 0
    rows: int = 0


class _WorkbookWriter:
    def __init__(
        self,
        book: xlsxwriter.Workbook,
        *,
        zone: ZoneInfo,
        overflow_prefix: str,
        overflow_dir: Path,
        max_rows_per_sheet: int,
    ) -> None:
        self._book = book
        self._zone = zone
        self._overflow_prefix = overflow_prefix
        self._overflow_dir = overflow_dir
        self._max_rows = max_rows_per_sheet
        self._header_format = book.add_format(
            {"bold": True, "text_wrap": True, "valign": "top", "bottom": 1}
        )
        self._kind_formats: dict[Kind, Format | None] = {
            Kind.DATE: book.add_format({"num_format": DATE_FORMAT}),
            Kind.DATETIME: book.add_format({"num_format": DATETIME_FORMAT}),
            Kind.LOCAL_DATETIME: book.add_format({"num_format": DATETIME_FORMAT}),
            Kind.MONEY: book.add_format({"num_format": MONEY_FORMAT}),
        }
        self._date_format = self._kind_formats[Kind.DATE]
        self.sheet_titles: list[str] = []
        self.overflow_files: list[OverflowFile] = []
        self._overflow_names: set[tuple[int, str]] = set()
        # 'textos_largos/<workbook>/<name>' within the archive's path limit.
        self._overflow_units = min(MAX_PATH_UNITS - utf16_units(overflow_prefix) - 1, 255)

    def write_table(
        self,
        title: str,
        columns: Sequence[Column],
        chunks: Iterable[pd.DataFrame],
        *,
        record: RecordName | None = None,
    ) -> int:
        """Write one table over as many sheets as it needs; returns its number of data rows."""
        if not columns:
            raise ValueError("a workbook table needs at least one column")
        prepared = (self._prepare(columns, chunk) for chunk in chunks)
        first = next(prepared, None)
        # Widths are set once per table, from the headers and the first chunk's values.
        sample = first if first is not None else [[] for _ in columns]
        table = _Table(
            title=title,
            columns=columns,
            widths=[_width(column, values) for column, values in zip(columns, sample, strict=True)],
            formats=[self._kind_formats.get(column.kind) for column in columns],
            record=record,
            record_index=next(
                (i for i, c in enumerate(columns) if record and c.key == record.key), None
            ),
        )
        table.sheet = self._open_sheet(table, number=1)
        if first is not None:
            self._write_chunk(table, first)
        del first, sample  # only one chunk's values are held at a time
        for values in prepared:
            self._write_chunk(table, values)
        self._finish_sheet(table)
        return table.rows

    def _write_chunk(self, table: _Table, values: list[list[CellValue]]) -> None:
        rows: Iterator[tuple[CellValue, ...]] = zip(*values, strict=True)
        while True:
            room = self._max_rows - table.sheet.rows
            if room == 0:
                # The sheet is full: another one only for another row.
                following = next(rows, None)
                if following is None:
                    return
                self._finish_sheet(table)
                table.sheet = self._open_sheet(table, number=table.sheets + 1)
                rows = itertools.chain([following], rows)
                continue
            written = self._write_rows(table, itertools.islice(rows, room))
            table.rows += written
            if written < room:
                return

    def _prepare(self, columns: Sequence[Column], chunk: pd.DataFrame) -> list[list[CellValue]]:
        missing = [column.key for column in columns if column.key not in chunk.columns]
        if missing:
            raise KeyError(f"the dataset's rows lack the declared columns {missing}")
        return [_cell_values(column.kind, chunk[column.key], self._zone) for column in columns]

    def _open_sheet(self, table: _Table, number: int) -> _OpenSheet:
        name = continuation_title(table.title, number, self.sheet_titles)
        worksheet = self._book.add_worksheet(name)
        self.sheet_titles.append(name)
        table.sheets = number
        worksheet.freeze_panes(1, 0)
        for index, width in enumerate(table.widths):
            worksheet.set_column(index, index, width)
        for index, column in enumerate(table.columns):
            _write_text(worksheet, 0, index, cell_text(column.header), self._header_format)
        return _OpenSheet(title=name, worksheet=worksheet)

    def _finish_sheet(self, table: _Table) -> None:
        sheet = table.sheet
        sheet.worksheet.autofilter(0, 0, sheet.rows, len(table.columns) - 1)

    def _write_rows(self, table: _Table, rows: Iterable[tuple[CellValue, ...]]) -> int:
        """Write rows to the table's current sheet, which has room for them; returns how many.

        The innermost loop of every workbook (millions of cells): its lookups are hoisted. The
        typed writers are XlsxWriter's public ones (not its undecorated private twins, which
        would pin us to one XlsxWriter): each cell's type is known here, so the generic
        `write()`'s guessing is not needed.
        """
        sheet = table.sheet
        worksheet = sheet.worksheet
        write_string, write_number = worksheet.write_string, worksheet.write_number
        formats, date_format = table.formats, self._date_format
        first = sheet.rows
        index = first
        for row in rows:
            index += 1
            for col, value in enumerate(row):
                if value is None:
                    continue
                kind = type(value)
                if kind is str:
                    if value.startswith("<r>"):
                        _write_text(worksheet, index, col, value)
                    else:
                        write_string(index, col, value)
                elif kind is _LongText:
                    name = self._overflow_name(table, row, index + 1, table.columns[col])
                    pointer = self._write_overflow(value, name)
                    _write_text(worksheet, index, col, pointer)
                elif kind is _DateCell:
                    write_number(index, col, value.serial, date_format)
                else:
                    write_number(index, col, value, formats[col])
        sheet.rows = index
        return index - first

    def _overflow_name(
        self, table: _Table, row: tuple[CellValue, ...], excel_row: int, column: Column
    ) -> str:
        """'consulta_125_notas.txt': the row's record and the column's header, in Spanish.

        A row without a record id (an extra sheet) is named by its sheet and row instead:
        'preguntas_fila3_pregunta.txt'. Unique within the workbook.
        """
        header = slugify(
            column.header, separator="_", max_length=_SLUG_MAX_CHARS, word_boundary=True
        )
        header = header or slugify(column.key, separator="_") or "texto"
        record_id = row[table.record_index] if table.record_index is not None else None
        if table.record is not None and isinstance(record_id, int | str) and record_id != "":
            stem = f"{slugify(table.record.noun, separator='_')}_{record_id}_{header}"
        else:
            sheet = slugify(table.sheet.title, separator="_") or "hoja"
            stem = f"{sheet}_fila{excel_row}_{header}"
        units = self._overflow_units
        name = safe_component(f"{stem}.txt", fallback="texto.txt", max_units=units)
        number = 2
        while not self._overflow_names.isdisjoint(collision_keys(name)):
            # The stem is cut before the number is added, so that a long one keeps its number.
            tail = f"_{number}.txt"
            kept = safe_component(stem, fallback="texto", max_units=units - len(tail))
            name = safe_component(f"{kept}{tail}", fallback="texto.txt", max_units=units)
            number += 1
        self._overflow_names.update(collision_keys(name))
        return name

    def _write_overflow(self, value: _LongText, name: str) -> str:
        archive_path = f"{self._overflow_prefix}/{name}"
        local_path = self._overflow_dir.joinpath(*archive_path.split("/"))
        local_path.parent.mkdir(parents=True, exist_ok=True)
        # newline="" writes the text's own line breaks unchanged.
        with local_path.open("w", encoding="utf-8", newline="") as out:
            out.write(value.text)
        self.overflow_files.append(OverflowFile(archive_path=archive_path, local_path=local_path))
        return overflow_pointer(archive_path, cell_text(value.text[:_PREVIEW_CHARS]))


def overflow_pointer(archive_path: str, preview: str) -> str:
    """What the cell of a text too long for Excel says instead (Spanish, for the clinic)."""
    return (
        f"Este texto es más largo de lo que cabe en una celda de Excel "
        f"({spanish_number(EXCEL_CELL_MAX_CHARS)} caracteres). El texto completo está en el "
        f"archivo {archive_path} de este respaldo.\nInicio del texto:\n{preview}…"
    )


def _write_text(
    worksheet: Worksheet, row: int, col: int, text: str, cell_format: Format | None = None
) -> None:
    """Write text as a text cell, whatever it looks like (a formula, a number, markup).

    XlsxWriter itself escapes control characters and literal `_xHHHH_` sequences. One exception
    needs care: in constant_memory mode it passes a string that starts with "<r>" and ends with
    "</r>" into the XML unescaped, taking it for a pre-rendered rich string. Such text is written
    as a real rich string of plain runs, which Excel shows exactly as the text.
    """
    if text.startswith("<r>") and text.endswith("</r>"):
        runs: list[str | Format] = [text[:1], text[1:3], text[3:]]
        if cell_format is not None:
            runs.append(cell_format)
        result = worksheet.write_rich_string(row, col, *runs)
        if result != 0:
            raise RuntimeError(f"XlsxWriter refused a rich string (code {result})")
    else:
        worksheet.write_string(row, col, text, cell_format)


def _width(column: Column, values: Sequence[CellValue]) -> int:
    if column.width is not None:
        return column.width
    header = min(len(column.header), _MAX_HEADER_WIDTH) + _FILTER_BUTTON_WIDTH
    content = _KIND_WIDTH[column.kind]
    if column.kind in (Kind.TEXT, Kind.MIXED):
        longest = max((len(v) for v in values if type(v) is str), default=0)
        content = max(content, longest + 2)
    return min(max(header, content), _MAX_WIDTH)


# --- One column of a chunk -> the values its cells get (vectorised where pandas can) ---------


def _cell_values(kind: Kind, series: pd.Series, zone: ZoneInfo) -> list[CellValue]:
    return _CONVERTERS[kind](series, zone)


def _text_values(series: pd.Series, _zone: ZoneInfo) -> list[CellValue]:
    values = series.tolist()
    if set(map(type, values)) <= _TEXT_OR_NULL:
        # The common column: text and NULLs only. Usually none of it needs cleaning or a file:
        # that is checked once for the whole column, and each cell is then the text itself.
        if already_cell_texts(filter(None, values)):
            return [value or None for value in values]  # "" is an empty cell
        return [_text_cell(value) if value else None for value in values]
    return [
        None if missing else _text_cell(value)
        for value, missing in zip(values, series.isna().tolist(), strict=True)
    ]


_TEXT_OR_NULL = {str, type(None)}


def _text_cell(value: object) -> CellValue:
    raw = value if isinstance(value, str) else str(value)
    text = cell_text(raw)
    if not text:
        return None
    if fits_in_cell(text):
        return text
    return _LongText(clean_text(raw))


def _mixed_values(series: pd.Series, _zone: ZoneInfo) -> list[CellValue]:
    """Each value by its own type: a date a date cell, a number a number cell, the rest text."""
    out: list[CellValue] = []
    for value, missing in zip(series.tolist(), series.isna().tolist(), strict=True):
        if missing:
            out.append(None)
        elif isinstance(value, date) and not isinstance(value, datetime):
            day = _date_cell(value)
            out.append(_DateCell(day) if isinstance(day, int) else day)
        elif isinstance(value, int | float | Decimal) and not isinstance(value, bool):
            number = float(value)
            # An int stays an int: it is written exactly as it was read (as text when a number
            # cell would round it).
            out.append(_integer_cell(value) if isinstance(value, int) else number)
            if not math.isfinite(number):
                out[-1] = None
        else:
            # Text is text, whatever it looks like: it never becomes a number or a formula.
            out.append(_text_cell(value))
    return out


def _integer_values(series: pd.Series, _zone: ZoneInfo) -> list[CellValue]:
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iu":
        # No NULL in this chunk: Python ints already, exact.
        if len(series) and (
            series.max() > ALWAYS_EXACT_INTEGER or series.min() < -ALWAYS_EXACT_INTEGER
        ):
            return [_integer_cell(value) for value in series.tolist()]
        return series.tolist()
    values = series.tolist()
    if set(map(type, values)) <= _INT_OR_NULL:
        # The readers' column of ints with a NULL (datasets.base.integer_column): as read.
        top = ALWAYS_EXACT_INTEGER
        return [
            None if value is None else value if -top <= value <= top else _integer_cell(value)
            for value in values
        ]
    # Anything else (floats, text digits, Decimals): numbers as pandas reads them, but an
    # integer value itself, never its float.
    numbers = pd.to_numeric(series)
    return [
        None if missing else _integer_cell(raw if isinstance(raw, int | np.integer) else number)
        for raw, number, missing in zip(
            values, numbers.tolist(), numbers.isna().tolist(), strict=True
        )
    ]


_INT_OR_NULL = {int, type(None)}


def _integer_cell(value: object) -> int | str:
    return integer_cell(int(value))  # type: ignore[call-overload]


def _number_values(series: pd.Series, _zone: ZoneInfo) -> list[CellValue]:
    # Decimal values from the database become floats here: Excel numbers are doubles.
    numbers = pd.to_numeric(series).astype("float64")
    return [value if math.isfinite(value) else None for value in numbers.tolist()]


def _date_values(series: pd.Series, _zone: ZoneInfo) -> list[CellValue]:
    return [
        None if missing else _date_cell(value)
        for value, missing in zip(series.tolist(), series.isna().tolist(), strict=True)
    ]


def _date_cell(value: object) -> CellValue:
    if isinstance(value, datetime):  # also pandas Timestamps
        day = value.date()
    elif isinstance(value, date):
        day = value
    elif isinstance(value, str):
        day = date.fromisoformat(value[:10])
    else:
        raise TypeError(f"a date column holds a {type(value).__name__}")
    if day < _FIRST_SERIAL_DATE:
        return f"{day.day:02d}/{day.month:02d}/{day.year:04d}"
    return day.toordinal() - _EPOCH_ORDINAL


def _datetime_values(series: pd.Series, zone: ZoneInfo) -> list[CellValue]:
    # Stored naive UTC -> the clinic's wall-clock time, for the whole column at once. A column
    # pandas already holds as naive datetimes (the usual one) is only localized: to_datetime
    # would do the same, at the cost of parsing it again.
    if pd.api.types.is_datetime64_dtype(series.dtype):
        utc = series.dt.tz_localize("UTC")
    else:
        utc = pd.to_datetime(series, utc=True)
    stamps = utc.dt.tz_convert(zone).dt.tz_localize(None)
    return _wall_clock_values(stamps)


def _local_datetime_values(series: pd.Series, _zone: ZoneInfo) -> list[CellValue]:
    # Already wall-clock time where it happened: shown as is (an offset, if any, is dropped).
    stamps = pd.to_datetime(series)
    if stamps.dt.tz is not None:
        stamps = stamps.dt.tz_localize(None)
    return _wall_clock_values(stamps)


def _wall_clock_values(stamps: pd.Series) -> list[CellValue]:
    delta = stamps - pd.Timestamp(_EXCEL_EPOCH)
    # Days and seconds apart, as Excel's own serials are built, to keep whole seconds exact.
    serials = delta.dt.days + (delta.dt.seconds + delta.dt.microseconds / 1e6) / 86_400
    out: list[CellValue] = [None if serial != serial else serial for serial in serials.tolist()]
    early = stamps < pd.Timestamp(_FIRST_SERIAL_DATE)
    if early.any():
        # Rare: only these become Timestamps, to be written as text.
        for position in early.to_numpy().nonzero()[0].tolist():
            stamp = stamps.iloc[position]
            out[position] = (
                f"{stamp.day:02d}/{stamp.month:02d}/{stamp.year:04d} "
                f"{stamp.hour:02d}:{stamp.minute:02d}"
            )
    return out


def _boolean_values(series: pd.Series, _zone: ZoneInfo) -> list[CellValue]:
    return [
        None if missing else ("Sí" if bool(value) else "No")
        for value, missing in zip(series.tolist(), series.isna().tolist(), strict=True)
    ]


_CONVERTERS: dict[Kind, Callable[[pd.Series, ZoneInfo], list[CellValue]]] = {
    Kind.TEXT: _text_values,
    Kind.INTEGER: _integer_values,
    Kind.DECIMAL: _number_values,
    Kind.MONEY: _number_values,
    Kind.DATE: _date_values,
    Kind.DATETIME: _datetime_values,
    Kind.LOCAL_DATETIME: _local_datetime_values,
    Kind.BOOLEAN: _boolean_values,
    Kind.MIXED: _mixed_values,
}
