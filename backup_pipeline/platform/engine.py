"""The engine of the platform's database, and what every query module shares (chunked IN lists)."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    select,
)
from sqlalchemy.pool import NullPool

from backup_pipeline.platform import tables as t
from backup_pipeline.platform.migrations import upgrade as upgrade_our_tables

IN_CHUNK = 500  # ids per IN (...) list: well under every driver's parameter limit


def utcnow() -> datetime:
    """Naive UTC, as every TIMESTAMP in the platform's database."""
    return datetime.now(UTC).replace(tzinfo=None)


@functools.lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine per URL and process (ops, sensors and the CLI share it)."""
    if url.startswith("sqlite"):
        # NullPool: SQLite connections are cheap, and a pooled one must not cross a fork.
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the sensor read while a run writes; the platform's SQLite is dev-only.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def create_schema(engine: Engine) -> None:
    """Create the platform's tables (development and tests only), then ours by our migrations,
    as production gets them: the demo and the tests run the same revisions."""
    t.metadata.create_all(engine, tables=list(t.PLATFORM_TABLES))
    upgrade_our_tables(engine)


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), IN_CHUNK):
        yield ids[start : start + IN_CHUNK]


def select_in(conn: Connection, columns: Sequence, key, ids: Sequence[int]) -> list:
    rows: list = []
    for chunk in _chunks(sorted(set(ids))):
        rows.extend(conn.execute(select(*columns).where(key.in_(chunk))).all())
    return rows
