"""anamnesis.xlsx: one row per patient, one column per question, the latest answer in each cell,
typed by the question's answer_type."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Select, and_, select

from backup_pipeline.datasets.base import (
    Column,
    ExtractContext,
    Extraction,
    Kind,
    RecordName,
    Sheet,
    integer_column,
)
from backup_pipeline.datasets.query import (
    PATIENT_COLUMNS,
    live_patient,
    patient_full_name,
)

if TYPE_CHECKING:
    # pandas is imported where rows are extracted: importing the package (sensors, the CLI, a
    # run worker's start) does not need it (datasets.export.import_renderer).
    import pandas as pd
from backup_pipeline.platform.tables import anamnesis_answers as a
from backup_pipeline.platform.tables import anamnesis_questions as q
from backup_pipeline.platform.tables import patients

ANSWER_TYPE_LABELS = {
    "text": "Texto",
    "yes_no": "Sí/No",
    "choice": "Opción múltiple",
    "number": "Número",
    "date": "Fecha",
}
# Answers of these types become date and number cells when they parse; the others stay text.
# A yes_no answer is shown as the platform stores it ("Sí", "No", "No aplica").
TYPED_ANSWERS = ("date", "number")
NO_SECTION = "Sin sección"
ANSWER_ROWS = 5  # answers read per row of the other datasets' chunks
QUESTIONS_SHEET = "Preguntas"

LAST_ANSWER_COLUMN = Column("last_answered_at", "Fecha de la última respuesta", Kind.DATETIME)
QUESTION_COLUMNS = (
    Column("section", "Sección"),
    Column("position", "Posición", Kind.INTEGER),
    Column("question", "Pregunta"),
    Column("answer_type", "Tipo de respuesta"),
    Column("is_active", "Vigente", Kind.BOOLEAN),
)


@dataclass(frozen=True)
class Question:
    id: int
    section: str | None
    position: int
    text: str
    answer_type: str
    is_active: bool

    @property
    def key(self) -> str:
        """The DataFrame column holding this question's answers."""
        return f"q{self.id}"

    @property
    def kind(self) -> Kind:
        return Kind.MIXED if self.answer_type in TYPED_ANSWERS else Kind.TEXT


# --- An answer typed by its question -----------------------------------------------------------

_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_DAY_MONTH_YEAR = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")  # as Mexico writes a date
_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")
_FIRST_EXCEL_DATE = date(1900, 3, 1)  # earlier serials are off by Excel's 1900 leap-year bug
_MAX_SIGNIFICANT_DIGITS = 15  # what an Excel cell shows of a number without changing it
_MAX_EXACT_INT = 2**53


def typed_answer(answer: object, answer_type: str) -> date | int | float | str | None:
    """The value of an answer's cell: a `date` answer a date, a `number` answer a number.

    An answer that does not parse exactly (a date that is no date, "15 aprox.", "1,5", a number
    with more digits than Excel keeps) stays the text as written: nothing is lost or rounded.
    """
    if answer is None or not isinstance(answer, str):
        import pandas as pd

        return None if answer is None or pd.isna(answer) else str(answer)
    if answer_type == "date":
        day = parse_answer_date(answer)
        return day if day is not None else answer
    if answer_type == "number":
        number = parse_answer_number(answer)
        return number if number is not None else answer
    return answer


def parse_answer_date(answer: str) -> date | None:
    """'2021-10-07' or '07/10/2021' -> date(2021, 10, 7); anything else, or before 1900-03-01,
    None."""
    text = answer.strip()
    if match := _ISO_DATE.fullmatch(text):
        year, month, day = (int(part) for part in match.groups())
    elif match := _DAY_MONTH_YEAR.fullmatch(text):
        day, month, year = (int(part) for part in match.groups())
    else:
        return None
    try:
        parsed = date(year, month, day)
    except ValueError:
        return None
    return parsed if parsed >= _FIRST_EXCEL_DATE else None


def parse_answer_number(answer: str) -> int | float | None:
    """'15' -> 15, '36.5' -> 36.5; None unless the cell will hold exactly the number written."""
    text = answer.strip()
    if not _NUMBER.fullmatch(text):
        return None
    try:
        exact = Decimal(text)
    except InvalidOperation:
        return None
    if len(exact.normalize().as_tuple().digits) > _MAX_SIGNIFICANT_DIGITS:
        return None
    if exact == exact.to_integral_value() and abs(exact) < _MAX_EXACT_INT:
        return int(exact)
    number = float(exact)
    # Tiny or huge values could underflow or overflow a double: they stay text.
    return number if Decimal(repr(number)) == exact else None


def questionnaire_order(questions: Iterable[Question]) -> list[Question]:
    """Questions by (section, position, id), sections in the order the questionnaire reaches them.

    A section's rank is its lowest position, then its name: when positions count from 1 in
    every section this is plain (section, position, id); when they run across the whole
    questionnaire the sections keep the questionnaire's order instead of the alphabet's.
    """
    questions = list(questions)
    first_position: dict[str | None, int] = {}
    for question in questions:
        current = first_position.get(question.section, question.position)
        first_position[question.section] = min(current, question.position)

    def rank(question: Question) -> tuple[int, str, int, int]:
        section = question.section
        return (first_position[section], section or "", question.position, question.id)

    return sorted(questions, key=rank)


def question_headers(questions: Sequence[Question], taken: Iterable[str] = ()) -> list[str]:
    """One header per question, its text; a text shared by several gets its section, then its id."""
    texts = [" ".join(question.text.split()) or f"Pregunta {question.id}" for question in questions]
    reserved = Counter(header.casefold() for header in taken)
    counts = Counter(text.casefold() for text in texts) + reserved
    headers = [
        text if counts[text.casefold()] == 1 else f"{text} ({question.section or NO_SECTION})"
        for text, question in zip(texts, questions, strict=True)
    ]
    counts = Counter(header.casefold() for header in headers) + reserved
    return [
        header if counts[header.casefold()] == 1 else f"{header} (pregunta {question.id})"
        for header, question in zip(headers, questions, strict=True)
    ]


def latest_answers_by_patient(
    batches: Iterable[Iterable[Sequence[Any]]],
    questions: Sequence[Question],
    names: Callable[[list[int]], list[str | None]],
) -> Iterator[pd.DataFrame]:
    """Batches of answer rows (patient_id, question_id, answer, answered_at) -> one row per
    patient with the latest answer to each question, one DataFrame per batch.

    The rows must come ordered by patient, question, answered_at and id, so that within a
    (patient, question) the last row is the latest answer. A batch may end in the middle of a
    patient's answers: that patient is carried over and completed with the next batch. `names`
    gives the patients' names for ascending ids (PatientNames).

    Plain Python over the rows as the driver gives them: the ~600,000 answers of a large clinic
    once went through a DataFrame each, then a de-duplication and a pivot, to be turned back into
    Python values for the cells (twice the CPU).
    """
    done: list[tuple[int, dict[Any, Any], Any]] = []
    patient: int | None = None
    latest: dict[Any, Any] = {}
    last_answered_at: Any = None
    for batch in batches:
        for patient_id, question_id, answer, answered_at in batch:
            if patient_id != patient:
                if patient is not None:
                    done.append((patient, latest, last_answered_at))
                patient, latest, last_answered_at = patient_id, {}, answered_at
            latest[question_id] = answer  # a later row is a later answer
            # answered_at is NOT NULL; the latest of each question is its greatest.
            if answered_at > last_answered_at:
                last_answered_at = answered_at
        if done:
            yield _one_row_per_patient(done, questions, names)
            done = []
    if patient is not None:
        yield _one_row_per_patient([(patient, latest, last_answered_at)], questions, names)


def _one_row_per_patient(
    patients_answers: list[tuple[int, dict[Any, Any], Any]],
    questions: Sequence[Question],
    names: Callable[[list[int]], list[str | None]],
) -> pd.DataFrame:
    import pandas as pd

    ids = [patient_id for patient_id, _, _ in patients_answers]
    columns: dict[str, Any] = {
        "patient_id": ids,
        "patient_name": names(ids),
        "last_answered_at": [answered_at for _, _, answered_at in patients_answers],
    }
    for question in questions:
        values = [latest.get(question.id) for _, latest, _ in patients_answers]
        if question.answer_type in TYPED_ANSWERS:
            values = [typed_answer(value, question.answer_type) for value in values]
        # dtype=object keeps each value's own type (an int stays an int, a date a date).
        columns[question.key] = pd.Series(values, dtype=object)
    return pd.DataFrame(columns)


class PatientNames:
    """The names of the patients whose answers are being read, from a second query ordered by
    id and read alongside the answers: each of the ~600,000 answer rows of a large clinic would
    otherwise build and carry its patient's name."""

    def __init__(self, rows: Iterable[Any]) -> None:
        self._rows = iter(rows)
        self._next = next(self._rows, None)

    def __call__(self, ids: list[int]) -> list[str | None]:
        """The names of `ids`, which ascend from one call to the next."""
        names: list[str | None] = []
        for patient_id in ids:
            while self._next is not None and self._next[0] < patient_id:
                self._next = next(self._rows, None)
            found = self._next is not None and self._next[0] == patient_id
            names.append(self._next[1] if found else None)
        return names


def questions_frame(questions: Sequence[Question]) -> pd.DataFrame:
    """The "Preguntas" sheet: every question, retired ones included and marked."""
    import pandas as pd

    return pd.DataFrame(
        {
            "section": [question.section for question in questions],
            "position": integer_column([question.position for question in questions]),
            "question": [question.text for question in questions],
            "answer_type": [
                ANSWER_TYPE_LABELS.get(question.answer_type, question.answer_type)
                for question in questions
            ],
            "is_active": [question.is_active for question in questions],
        },
        columns=[column.key for column in QUESTION_COLUMNS],
    )


def read_questions(connection: Connection, subscription_id: int) -> list[Question]:
    rows = connection.execute(
        select(q.c.id, q.c.section, q.c.position, q.c.question, q.c.answer_type, q.c.is_active)
        .where(q.c.subscription_id == subscription_id)
        .order_by(q.c.id)
    )
    return [
        Question(
            id=row.id,
            section=row.section,
            position=row.position,
            text=row.question,
            answer_type=row.answer_type,
            is_active=bool(row.is_active),
        )
        for row in rows
    ]


def names_query(subscription_id: int) -> Select:
    """The subscription's live patients' names, by id (the order of answers_query)."""
    return (
        select(patients.c.id, patient_full_name().label("patient_name"))
        .where(patients.c.subscription_id == subscription_id, patients.c.deleted_at.is_(None))
        .order_by(patients.c.id)
    )


def answers_query(subscription_id: int) -> Select:
    """Every answer of the subscription's live patients to its questions, in pivot order."""
    return (
        select(a.c.patient_id, a.c.question_id, a.c.answer, a.c.answered_at)
        .select_from(a)
        .join(patients, live_patient(a, subscription_id))
        .join(q, and_(q.c.id == a.c.question_id, q.c.subscription_id == subscription_id))
        .where(a.c.subscription_id == subscription_id)
        .order_by(a.c.patient_id, a.c.question_id, a.c.answered_at, a.c.id)
    )


class AnamnesisDataset:
    name = "anamnesis"
    archive_path = "anamnesis.xlsx"
    sheet_title = "Anamnesis"
    description = "Anamnesis: la respuesta más reciente de cada paciente a cada pregunta."
    failure_subject = "de las respuestas de anamnesis"
    render_cost = 6

    def extract(self, ctx: ExtractContext) -> Extraction:
        # Questions first (a few hundred at most): they decide the columns.
        questions = questionnaire_order(read_questions(ctx.connection, ctx.subscription_id))
        fixed = (*PATIENT_COLUMNS, LAST_ANSWER_COLUMN)
        headers = question_headers(questions, taken=[column.header for column in fixed])
        columns = fixed + tuple(
            Column(question.key, header, question.kind)
            for question, header in zip(questions, headers, strict=True)
        )
        # Answers are narrow rows (five values) that become one row per patient: read them in
        # larger chunks, each pivoted (and its last patient carried over) at a fixed cost.
        answers = _answer_rows(ctx, rows_per_batch=ctx.chunksize * ANSWER_ROWS)
        return Extraction(
            columns=columns,
            chunks=_named_rows(ctx, answers, questions),
            extra_sheets=[Sheet(QUESTIONS_SHEET, QUESTION_COLUMNS, questions_frame(questions))],
            record=RecordName("paciente", "patient_id"),
        )


def _answer_rows(ctx: ExtractContext, rows_per_batch: int) -> Iterator[Sequence[Any]]:
    """answers_query's rows in batches, as SQLAlchemy gives them (stream_results: PostgreSQL
    keeps them in a server-side cursor)."""
    result = ctx.connection.execute(
        answers_query(ctx.subscription_id).execution_options(
            stream_results=True, yield_per=rows_per_batch
        )
    )
    with result:
        yield from result.partitions()


def _named_rows(
    ctx: ExtractContext, answers: Iterable[Sequence[Any]], questions: Sequence[Question]
) -> Iterator[pd.DataFrame]:
    """One row per patient, named from names_query read alongside the answers. The names are
    read by a second statement: a patient deleted between the two keeps its answers' row, with
    an empty name (as every dataset is read at its own moment)."""
    names = ctx.connection.execute(
        names_query(ctx.subscription_id).execution_options(
            stream_results=True, yield_per=ctx.chunksize
        )
    )
    try:
        yield from latest_answers_by_patient(answers, questions, PatientNames(names))
    finally:
        # Usually not read to its end (patients without answers): its cursor closes now.
        names.close()


DATASET = AnamnesisDataset()
