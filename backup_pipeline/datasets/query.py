"""A dataset that is one SQL query plus its Spanish columns, streamed in chunks."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Select, Table, Text, and_, func, literal

from backup_pipeline.datasets.base import (
    Column,
    ExtractContext,
    Extraction,
    Kind,
    RecordName,
    integer_column,
    integer_keys,
)
from backup_pipeline.platform.tables import patients

if TYPE_CHECKING:
    # pandas is imported where rows are extracted: importing the package (sensors, the CLI, a
    # run worker's start) does not need it (datasets.export.import_renderer).
    import pandas as pd

PATIENT_COLUMNS = (
    Column("patient_id", "ID paciente", Kind.INTEGER),
    Column("patient_name", "Paciente", Kind.TEXT),
)


@dataclass
class QueryDataset:
    """One workbook whose rows are exactly the rows of `query(subscription_id)`."""

    name: str
    archive_path: str
    sheet_title: str
    description: str
    failure_subject: str  # see datasets.base.Dataset
    render_cost: int
    columns: tuple[Column, ...]
    query: Callable[[int], Select]
    # Per column, what SQL cannot portably do to a value (e.g. decode a SAT catalogue code).
    decode: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    record: RecordName | None = None  # how a long-text file names the row

    def extract(self, ctx: ExtractContext) -> Extraction:
        chunks = stream_query(
            self.query(ctx.subscription_id), ctx, integers=integer_keys(self.columns)
        )
        if self.decode:
            chunks = (self._decoded(chunk) for chunk in chunks)
        return Extraction(columns=self.columns, chunks=chunks, record=self.record)

    def _decoded(self, chunk: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd

        for key, decode in self.decode.items():
            chunk[key] = [None if pd.isna(v) else decode(v) for v in chunk[key].tolist()]
        return chunk


def stream_query(
    statement: Select,
    ctx: ExtractContext,
    rows_per_chunk: int | None = None,
    integers: Collection[str] = (),
) -> Iterator[pd.DataFrame]:
    """The statement's rows in DataFrames of at most ctx.chunksize rows (or rows_per_chunk,
    for narrow rows), typed as `pandas.read_sql` types them, except the `integers` columns: in
    a chunk where one holds a NULL it keeps its values as read (integer_column), where
    read_sql would turn them into floats.

    stream_results makes PostgreSQL use a server-side cursor, so only one chunk is in memory;
    it is set on the statement, not on the shared connection.
    """
    import pandas as pd

    size = rows_per_chunk or ctx.chunksize
    with ctx.connection.execute(statement.execution_options(stream_results=True)) as result:
        keys = list(result.keys())
        exact = [(index, key) for index, key in enumerate(keys) if key in integers]
        read = False
        for rows in result.partitions(size):
            read = True
            # What read_sql does with each chunk (coerce_float: Decimal columns become floats).
            frame = pd.DataFrame.from_records(rows, columns=keys, coerce_float=True)
            for index, key in exact:
                if frame[key].dtype.kind not in "iu":  # a NULL (int64 holds the rest exactly)
                    frame[key] = integer_column([row[index] for row in rows])
            yield frame
        if not read:
            yield pd.DataFrame(columns=keys)  # as read_sql: one empty chunk, with the columns


def patient_full_name(table: Table = patients) -> ColumnElement[str]:
    """ "Apellidos Nombre" in SQL: last_name second_last_name first_name, skipping empty parts.

    Portable: `NULL || ' '` is NULL on SQLite and PostgreSQL alike, so coalesce drops the part
    and its space together.
    """

    def part(column: ColumnElement[str]) -> ColumnElement[str]:
        trimmed = func.nullif(func.trim(column), literal("", Text), type_=Text)
        return func.coalesce(trimmed.concat(" "), literal("", Text), type_=Text)

    name = (
        part(table.c.last_name)
        .concat(part(table.c.second_last_name))
        .concat(func.coalesce(func.trim(table.c.first_name), literal("", Text), type_=Text))
    )
    return func.trim(name, type_=Text)


def live_patient(table: Table, subscription_id: int) -> ColumnElement[bool]:
    """Join condition: the row's patient, of this subscription and not soft-deleted."""
    return and_(
        patients.c.id == table.c.patient_id,
        patients.c.subscription_id == subscription_id,
        patients.c.deleted_at.is_(None),
    )
