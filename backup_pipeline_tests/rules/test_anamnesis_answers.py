"""Anamnesis answers typed by their question: dates and numbers as real cells, nothing lost."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from tempfile import TemporaryDirectory

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpyxl import load_workbook

from backup_pipeline.datasets.anamnesis import (
    TYPED_ANSWERS,
    PatientNames,
    Question,
    latest_answers_by_patient,
    parse_answer_date,
    typed_answer,
)
from backup_pipeline.datasets.base import Column, Extraction, Kind
from backup_pipeline.datasets.workbook import DATE_FORMAT, render_workbook
from backup_pipeline_tests.support.oracles import as_the_clinic_wrote_it

ANSWER_TYPES = ("text", "yes_no", "choice", "number", "date")


@pytest.mark.parametrize(
    ("answer", "answer_type", "value"),
    [
        ("2021-10-07", "date", date(2021, 10, 7)),
        ("07/10/2021", "date", date(2021, 10, 7)),  # day first, as Mexico writes it
        (" 2021-10-07 ", "date", date(2021, 10, 7)),
        ("2021-02-30", "date", "2021-02-30"),  # no such day: stays as written
        ("1899-12-31", "date", "1899-12-31"),  # before Excel's calendar: stays as written
        ("ayer", "date", "ayer"),
        ("15", "number", 15),
        ("-3", "number", -3),
        ("36.5", "number", 36.5),
        ("007", "number", 7),
        ("1,5", "number", "1,5"),  # a comma is ambiguous: stays as written
        ("15 aprox.", "number", "15 aprox."),
        ("1e3", "number", "1e3"),
        ("1234567890123456", "number", "1234567890123456"),  # more digits than Excel keeps
        ("Sí", "yes_no", "Sí"),
        ("No aplica", "yes_no", "No aplica"),
        ("2021-10-07", "text", "2021-10-07"),  # only a date question gives a date
        ("15", "choice", "15"),
        (None, "number", None),
    ],
)
def test_an_answer_is_typed_by_its_question(answer, answer_type, value):
    typed = typed_answer(answer, answer_type)
    assert typed == value
    assert type(typed) is type(value)


def _answers() -> st.SearchStrategy[str]:
    days = st.dates(min_value=date(1800, 1, 1), max_value=date(9999, 12, 31))
    return st.one_of(
        st.text(max_size=40),
        days.map(date.isoformat),
        days.map(lambda d: f"{d.day:02d}/{d.month:02d}/{d.year}"),
        st.integers(min_value=-(10**17), max_value=10**17).map(str),
        st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.sampled_from(["Sí", "No", "=1+1", '=HYPERLINK("x")', " 15 ", "0.1", "-0"]),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_answers(), st.sampled_from(ANSWER_TYPES)), min_size=1, max_size=25))
def test_no_answer_is_lost_or_changed_in_meaning(answers: list[tuple[str, str]]) -> None:
    """Read back with openpyxl, each cell is the answer's text, or the same date or number."""
    columns = tuple(Column(f"q{i}", f"Pregunta {i}", Kind.MIXED) for i in range(len(answers)))
    frame = pd.DataFrame(
        {f"q{i}": pd.Series([typed_answer(a, t)], dtype=object) for i, (a, t) in enumerate(answers)}
    )
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "anamnesis.xlsx"
        render_workbook(
            Extraction(columns=columns, chunks=iter([frame])),
            path=path,
            sheet_title="Anamnesis",
            timezone="America/Mexico_City",
            archive_path="anamnesis.xlsx",
            overflow_dir=Path(tmp) / "overflow",
        )
        sheet = load_workbook(path)["Anamnesis"]
        cells = [sheet.cell(row=2, column=i + 1) for i in range(len(answers))]

    for (answer, answer_type), cell in zip(answers, cells, strict=True):
        value = cell.value
        if isinstance(value, datetime):
            assert answer_type == "date"
            assert value.date() == parse_answer_date(answer)
            assert value.time() == datetime.min.time()
            assert cell.number_format == DATE_FORMAT
        elif isinstance(value, int | float):
            assert answer_type == "number"
            assert Decimal(str(value)) == Decimal(answer.strip())
        elif value is None:
            assert as_the_clinic_wrote_it(answer) == ""
        else:
            assert value == as_the_clinic_wrote_it(answer)  # text as written, never a formula
            assert cell.data_type == "s"


def _pandas_pivot(
    rows: list[tuple[int, int, str | None, datetime]],
    questions: list[Question],
    names: dict[int, str],
) -> pd.DataFrame:
    """The pivot as it was before issue 23 (a frame per chunk, drop_duplicates, pivot), on the
    whole of the rows: the oracle of latest_answers_by_patient."""
    answers = pd.DataFrame(rows, columns=["patient_id", "question_id", "answer", "answered_at"])
    latest = answers.drop_duplicates(["patient_id", "question_id"], keep="last")
    wide = latest.pivot(index="patient_id", columns="question_id", values="answer")
    wide = wide.reindex(columns=[question.id for question in questions])
    wide.columns = [question.key for question in questions]
    for question in questions:
        if question.answer_type in TYPED_ANSWERS:
            values = [typed_answer(value, question.answer_type) for value in wide[question.key]]
            wide[question.key] = pd.Series(values, index=wide.index, dtype=object)
    patients_part = latest.groupby("patient_id", sort=True).agg(
        last_answered_at=("answered_at", "max")
    )
    patients_part.insert(0, "patient_name", [names.get(i) for i in patients_part.index])
    return patients_part.join(wide).reset_index()


def _cells(frame: pd.DataFrame) -> list[list[tuple[str, object]]]:
    """Each value with its type, a missing one (None or NaN) as None."""
    return [
        [
            ("", None) if value is None or value != value else (type(value).__name__, value)
            for value in row
        ]
        for row in frame.astype(object).itertuples(index=False)
    ]


_ROWS = st.lists(
    st.tuples(
        st.integers(1, 6),
        st.integers(1, 4),
        st.one_of(st.none(), _answers()),
        st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2026, 1, 1)),
    ),
    max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(_ROWS, st.lists(st.sampled_from(ANSWER_TYPES), min_size=3, max_size=3), st.integers(1, 9))
def test_the_latest_answers_are_those_of_the_pandas_pivot(
    rows: list[tuple[int, int, str | None, datetime]], types: list[str], batch: int
) -> None:
    # Question 4 is not in the questionnaire read (added meanwhile): counted, not shown.
    questions = [Question(i, "S", i, f"P{i}", types[i - 1], True) for i in (1, 2, 3)]
    rows = sorted(rows, key=lambda row: (row[0], row[1], row[3]))  # answers_query's order
    names = {i: f"Paciente {i}" for i in range(1, 7) if i != 4}  # 4: deleted meanwhile
    batches = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    frames = list(
        latest_answers_by_patient(batches, questions, PatientNames(sorted(names.items())))
    )
    if not rows:
        assert frames == []
        return
    got = pd.concat(frames, ignore_index=True)
    expected = _pandas_pivot(rows, questions, names)
    assert list(got.columns) == list(expected.columns)
    assert _cells(got) == _cells(expected)
    assert got["last_answered_at"].dtype == expected["last_answered_at"].dtype
