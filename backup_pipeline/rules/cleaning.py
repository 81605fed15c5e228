"""Cleaning a value for a workbook cell: what XML forbids goes, everything the clinic wrote stays."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

# Excel's hard limit for one cell, counted in UTF-16 code units (an emoji counts twice).
EXCEL_CELL_MAX_CHARS = 32_767
# What a number cell holds exactly: Excel keeps 15 significant digits of a number, and a number
# travels through a double (XlsxWriter writes it so), exact for integers up to 2**53.
EXCEL_NUMBER_DIGITS = 15
_MAX_EXACT_DOUBLE = 2**53
ALWAYS_EXACT_INTEGER = 10**EXCEL_NUMBER_DIGITS - 1  # fewer than 16 digits: always a number
MAX_SHEET_TITLE_CHARS = 31

# XML 1.0 `Char` excludes the C0 controls other than tab, LF and CR, the surrogate block (a lone
# surrogate cannot even be encoded as UTF-8) and the two non-characters U+FFFE and U+FFFF.
# The C0 part is exactly openpyxl's ILLEGAL_CHARACTERS_RE.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

# One search decides whether a value needs any work at all: most cells need none.
_NEEDS_WORK = re.compile("[\x00-\x08\x0b-\x1f\ud800-\udfff\ufffe\uffff]")

_SHEET_TITLE_FORBIDDEN = re.compile(r"[\[\]:*?/\\]")


def clean_text(value: str) -> str:
    """`value` without the characters XML 1.0 forbids; emoji, tabs and line breaks survive."""
    return _XML_FORBIDDEN.sub("", value)


def normalize_line_breaks(value: str) -> str:
    """CRLF and lone CR become LF, the line break of an Excel cell (Alt+Enter)."""
    # An XML parser folds a raw CR into LF anyway; doing it here makes it visible and tested.
    return value.replace("\r\n", "\n").replace("\r", "\n")


def cell_text(value: str) -> str:
    """The string to store in a cell for the text `value`, as the clinic should read it."""
    if _NEEDS_WORK.search(value) is None:
        return value
    return normalize_line_breaks(clean_text(value))


def already_cell_texts(texts: Iterable[str]) -> bool:
    """Whether each of `texts` is its own cell text and fits in a cell: one check for a column.

    True means `cell_text(t) == t` and `fits_in_cell(t)` for every `t`, decided by one search
    over the texts joined by LF (a character that needs no work) instead of one per text.
    """
    texts = list(texts)
    if not texts:
        return True
    if max(map(len, texts)) * 2 > EXCEL_CELL_MAX_CHARS:
        return False
    return _NEEDS_WORK.search("\n".join(texts)) is None


def integer_cell(number: int) -> int | str:
    """An integer's cell value: the number, or its digits as text when a number cell would not
    show it exactly (2**53 + 1 would show as 9007199254740990): every digit stays as it was."""
    if -ALWAYS_EXACT_INTEGER <= number <= ALWAYS_EXACT_INTEGER:
        return number
    size = abs(number)
    if size <= _MAX_EXACT_DOUBLE and len(str(size).rstrip("0")) <= EXCEL_NUMBER_DIGITS:
        return number
    return str(number)


def excel_length(value: str) -> int:
    """Length as Excel counts it (UTF-16 code units)."""
    return len(value.encode("utf-16-le", "surrogatepass")) // 2


def fits_in_cell(value: str) -> bool:
    """Whether a stored cell string is within Excel's per-cell limit."""
    # Each character is at most two UTF-16 units: short strings need no encoding to decide.
    return len(value) * 2 <= EXCEL_CELL_MAX_CHARS or excel_length(value) <= EXCEL_CELL_MAX_CHARS


def sheet_title(title: str, taken: Collection[str] = ()) -> str:
    """A valid, unused sheet title made from `title`.

    Excel allows at most 31 characters, none of []:*?/\\, no leading or trailing apostrophe,
    not the reserved "History", and compares titles ignoring case.
    """
    base = _SHEET_TITLE_FORBIDDEN.sub(" ", clean_text(title))
    base = " ".join(base.split()).strip("'").strip() or "Hoja"
    if base.casefold() == "history":
        base = f"{base} (hoja)"
    used = {t.casefold() for t in taken}
    candidate = base[:MAX_SHEET_TITLE_CHARS].rstrip().rstrip("'")
    number = 2
    while candidate.casefold() in used:
        suffix = f" ({number})"
        candidate = base[: MAX_SHEET_TITLE_CHARS - len(suffix)].rstrip().rstrip("'") + suffix
        number += 1
    return candidate


def continuation_title(title: str, number: int, taken: Collection[str] = ()) -> str:
    """The title of the `number`-th sheet of a dataset: "Consultas", "Consultas (2)", ..."""
    if number == 1:
        return sheet_title(title, taken)
    suffix = f" ({number})"
    base = sheet_title(title)[: MAX_SHEET_TITLE_CHARS - len(suffix)].rstrip().rstrip("'")
    return sheet_title(base + suffix, taken)
