"""What a dataset is: the rows of one workbook, their Spanish columns and types."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection

from backup_pipeline.storage import ObjectStore

if TYPE_CHECKING:
    import numpy as np

    # pandas is imported where rows are extracted: importing the package (sensors, the CLI, a
    # run worker's start) does not need it (datasets.export.import_renderer).
    import pandas as pd

    from backup_pipeline.archive.plan import FilePlan


class Kind(enum.Enum):
    TEXT = "text"
    INTEGER = "integer"
    DECIMAL = "decimal"  # a measured number (weight, temperature)
    MONEY = "money"  # two-decimal number format
    DATE = "date"
    DATETIME = "datetime"  # stored as naive UTC, shown in the clinic's time zone
    LOCAL_DATETIME = "local_datetime"  # already local wall-clock time (a CFDI's Fecha): as is
    BOOLEAN = "boolean"  # shown as "Sí" / "No"
    # Typed value by value by the dataset (an anamnesis answer): a date is a date cell, a number
    # a number cell, and anything else, text that did not parse included, is text as written.
    MIXED = "mixed"


@dataclass(frozen=True)
class Column:
    key: str  # the DataFrame column it comes from
    header: str  # Spanish header the clinic reads
    kind: Kind = Kind.TEXT
    width: int | None = None  # characters; None lets the writer choose from the header and kind


@dataclass(frozen=True)
class RecordName:
    """How a row names itself in a long-text file: '<noun>_<id>_<column>.txt'.

    e.g. RecordName("consulta", "consultation_id") -> 'consulta_125_notas.txt'; `key` is the
    column holding the row's record id.
    """

    noun: str
    key: str


@dataclass(frozen=True)
class Sheet:
    """A small extra sheet (e.g. the anamnesis questions), written after the main rows."""

    title: str
    columns: tuple[Column, ...]
    frame: pd.DataFrame


@dataclass
class ExtractContext:
    connection: Connection
    subscription_id: int
    files: ObjectStore  # the platform's files (CFDI XML is read from here)
    timezone: str
    # Rows per chunk: each chunk is held twice (its DataFrame, then its cells) by a worker
    # whose every MB counts (bench/RESULTS.md: 5,000 put the large backup over 350 MB PSS).
    chunksize: int = 2_000
    # The run's staged file plan, the store it is staged in and the archive's part size: what
    # the attachments index (adjuntos.xlsx) lists. Without a plan it plans the files itself.
    # A callable returns the plan once the run has staged it (the run plans while its workers
    # render): only a dataset that lists the files calls it, and waits.
    archives: ObjectStore | None = None
    plan: FilePlan | Callable[[], FilePlan] | None = None
    part_size: int | None = None


@dataclass
class Extraction:
    """What a dataset yields: its columns (known once the extraction starts) and row chunks."""

    columns: tuple[Column, ...]
    chunks: Iterator[pd.DataFrame]
    extra_sheets: list[Sheet] = field(default_factory=list)
    record: RecordName | None = None  # None: long-text files are named by sheet and row


def integer_column(values: Sequence[Any]) -> np.ndarray:
    """A column of integers as read (Python ints, None for NULL), to put in a DataFrame: an object
    column whose values never pass through float64, as pandas would hold a column of ints with a
    NULL (every integer beyond 2**53 then changed: 2**53 + 1 read as 9007199254740992)."""
    import numpy as np

    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def integer_keys(columns: Iterable[Column]) -> frozenset[str]:
    """The keys of the integer columns among `columns`."""
    return frozenset(column.key for column in columns if column.kind is Kind.INTEGER)


class Dataset(Protocol):
    name: str  # code name, e.g. "patients"
    archive_path: str  # e.g. "pacientes.xlsx" or "facturacion/ingresos/comprobantes_emitidos.xlsx"
    sheet_title: str  # e.g. "Pacientes"
    description: str  # one Spanish line for LEEME.txt
    # What the clinic reads when this workbook could not be made: "No se pudo generar el
    # respaldo <failure_subject> …" (services.failures), e.g. "de sus pacientes".
    failure_subject: str
    # Relative cost of rendering this workbook (large synthetic clinic, bench/RESULTS.md): the
    # costliest starts first in the worker pool; only the order matters.
    render_cost: int

    def extract(self, ctx: ExtractContext) -> Extraction: ...
