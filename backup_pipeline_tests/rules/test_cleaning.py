"""Cleaning a value for a cell: only what XML 1.0 forbids is removed."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from backup_pipeline.rules.cleaning import (
    EXCEL_CELL_MAX_CHARS,
    MAX_SHEET_TITLE_CHARS,
    already_cell_texts,
    cell_text,
    clean_text,
    continuation_title,
    excel_length,
    fits_in_cell,
    integer_cell,
    sheet_title,
)
from backup_pipeline_tests.support.oracles import as_the_clinic_wrote_it


def is_xml_char(ch: str) -> bool:
    """XML 1.0's Char production, written out from the specification."""
    code = ord(ch)
    return (
        code in (0x9, 0xA, 0xD)
        or 0x20 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    )


any_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=200)
xml_text = st.text(alphabet=st.characters().filter(is_xml_char), max_size=200)


@given(any_text)
def test_cleaned_text_is_accepted_by_an_xml_parser(value: str) -> None:
    cleaned = clean_text(value)
    element = etree.Element("t")
    element.text = cleaned  # lxml refuses any character XML cannot hold
    assert ILLEGAL_CHARACTERS_RE.search(cleaned) is None
    assert all(is_xml_char(ch) for ch in cleaned)


@given(any_text)
def test_cleaning_removes_exactly_the_forbidden_characters(value: str) -> None:
    assert clean_text(value) == "".join(ch for ch in value if is_xml_char(ch))


@given(xml_text)
def test_text_xml_can_hold_is_unchanged(value: str) -> None:
    assert clean_text(value) == value


@given(any_text)
def test_cleaning_is_idempotent(value: str) -> None:
    assert clean_text(clean_text(value)) == clean_text(value)


def test_emoji_tabs_and_line_breaks_survive_while_controls_and_lone_surrogates_go() -> None:
    value = "Dolor 🦷\tmuela\nizquierda\r\nfin\x00\x07\x0b\x1f\ud800\udfff\ufffe\uffff."
    assert clean_text(value) == "Dolor 🦷\tmuela\nizquierda\r\nfin."


@given(xml_text)
def test_cell_text_changes_only_line_endings(value: str) -> None:
    assert cell_text(value) == value.replace("\r\n", "\n").replace("\r", "\n")


@given(any_text)
def test_cell_text_is_what_the_clinic_wrote_without_what_xml_cannot_hold(value: str) -> None:
    assert cell_text(value) == as_the_clinic_wrote_it(value)


def test_cell_text_keeps_formula_looking_text_as_written() -> None:
    for value in ("=1+1", "+1", "-1", "@SUM(A1)", "=cmd|' /C calc'!A0", "_x0041_"):
        assert cell_text(value) == value


# Mostly text that needs no work, sometimes a character that does, sometimes a long text.
mostly_clean_texts = st.lists(
    st.one_of(
        xml_text.filter(lambda t: "\r" not in t),
        xml_text,
        any_text,
        st.builds(lambda n, c: c * n, st.integers(16_000, 33_000), st.sampled_from("a🦷")),
    ),
    max_size=6,
)


@given(mostly_clean_texts)
def test_a_column_found_clean_is_each_text_unchanged_and_within_a_cell(texts: list[str]) -> None:
    each = all(cell_text(t) == t and fits_in_cell(t) for t in texts)
    if already_cell_texts(texts):
        assert each
    elif all(len(t) * 2 <= EXCEL_CELL_MAX_CHARS for t in texts):
        assert not each  # only a long text may send a clean column the slow way


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=50))
def test_excel_length_counts_utf16_units(value: str) -> None:
    assert excel_length(value) == len(value) + sum(1 for ch in value if ord(ch) > 0xFFFF)


def test_cell_limit_counts_emoji_twice() -> None:
    assert fits_in_cell("a" * EXCEL_CELL_MAX_CHARS)
    assert not fits_in_cell("a" * (EXCEL_CELL_MAX_CHARS + 1))
    half = EXCEL_CELL_MAX_CHARS // 2
    assert fits_in_cell("🦷" * half)
    assert not fits_in_cell("🦷" * (half + 1))


@given(any_text, st.lists(st.text(max_size=40), max_size=5))
def test_sheet_titles_are_valid_for_excel_and_unused(title: str, taken: list[str]) -> None:
    result = sheet_title(title, taken)
    assert 1 <= len(result) <= MAX_SHEET_TITLE_CHARS
    assert re.search(r"[\[\]:*?/\\]", result) is None
    assert not result.startswith("'") and not result.endswith("'")
    assert result == clean_text(result)
    assert result.casefold() not in {t.casefold() for t in taken}


def test_continuation_sheets_number_the_title_within_31_characters() -> None:
    assert continuation_title("Consultas", 1) == "Consultas"
    assert continuation_title("Consultas", 2) == "Consultas (2)"
    long = continuation_title("Tratamientos odontológicos del paciente", 12)
    assert long.endswith(" (12)") and len(long) == MAX_SHEET_TITLE_CHARS
    assert sheet_title("Notas: [2026]/*?") == "Notas 2026"


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_an_integer_is_a_number_cell_only_where_excel_shows_every_digit(number: int) -> None:
    cell = integer_cell(number)
    if isinstance(cell, str):
        assert cell == str(number)  # every digit, as text
    else:
        assert cell == number
        assert float(number) == number  # a double holds it
        assert len(str(abs(number)).rstrip("0")) <= 15  # Excel shows 15 significant digits


def test_the_first_integer_a_double_cannot_hold_is_written_whole() -> None:
    assert integer_cell(2**53 + 1) == "9007199254740993"
    assert integer_cell(2**53) == "9007199254740992"  # a double, but Excel would show ...990
    assert integer_cell(999_999_999_999_999) == 999_999_999_999_999
    assert integer_cell(-(10**15)) == -(10**15)
    assert integer_cell(-(2**63)) == "-9223372036854775808"
