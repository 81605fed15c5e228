"""Our own tables' schema (backup_*), by Alembic migrations: upgrade, what is pending, and the guard."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from backup_pipeline.platform import tables

MIGRATIONS_DIR = Path(__file__).resolve().parent

# Not alembic_version: the platform may run Alembic on the same database for its own tables.
VERSION_TABLE = "backup_schema_version"

# The key of the PostgreSQL advisory lock every `migrate` takes, so that two pods starting at
# once apply the revisions one after the other (any fixed 64-bit number unique to this purpose).
ADVISORY_LOCK_KEY = 7_318_034_915_220_601_010

_PLATFORM_TABLE_NAMES = frozenset(t.name for t in tables.PLATFORM_TABLES)


class SchemaBehind(Exception):
    """Our backup_* tables are older than this code: `backup-pipeline migrate` has not run."""

    def __init__(self, pending_revisions: list[str]) -> None:
        self.pending_revisions = pending_revisions
        super().__init__(
            f"our tables are behind (pending revisions: {', '.join(pending_revisions)}): "
            "run `backup-pipeline migrate`"
        )


def is_ours(table_name: str) -> bool:
    """A table our migrations may create or change: backup_*, but never the platform's own
    backup_requests (nor any other platform table)."""
    return table_name.startswith("backup_") and table_name not in _PLATFORM_TABLE_NAMES


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's filter for autogenerate and compare: only our tables and what they hold."""
    if type_ == "table":
        return name is not None and is_ours(name) and name != VERSION_TABLE
    table = getattr(obj, "table", None)
    return table is None or is_ours(table.name)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's filter on reflected names: a platform table is never even reflected."""
    if type_ == "table":
        return name is not None and is_ours(name) and name != VERSION_TABLE
    return True


@functools.lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS_DIR))


@functools.lru_cache(maxsize=1)
def revisions() -> tuple[str, ...]:
    """Every revision this code knows, oldest first."""
    return tuple(reversed([r.revision for r in _script().walk_revisions("base", "heads")]))


def head() -> str:
    """The latest revision: what this code expects the database to be at."""
    return revisions()[-1]


def _pending_on(conn: Connection) -> list[str]:
    current = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    heads = current.get_current_heads()
    if any(revision not in revisions() for revision in heads):
        # A revision this code does not know: a newer release already migrated (a rollback).
        # Revisions only add, so this code's tables are all there: nothing is pending for it.
        return []
    applied: set[str] = set()
    for revision in heads:
        applied.update(r.revision for r in _script().iterate_revisions(revision, "base"))
    return [r for r in revisions() if r not in applied]


def pending(engine: Engine) -> list[str]:
    """Revisions not yet applied to the database, oldest first; empty when our tables are current."""
    with engine.connect() as conn:
        return _pending_on(conn)


def require_current(engine: Engine) -> None:
    """Raise SchemaBehind when a migration is pending (sensors, schedules and the job ask first)."""
    waiting = pending(engine)
    if waiting:
        raise SchemaBehind(waiting)


@contextmanager
def _migration_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction holding the migration lock: a second `migrate` waits here, then finds
    nothing left to do. PostgreSQL's DDL is transactional, and so is SQLite's."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # Released by the commit or rollback that ends the transaction, even if the pod dies.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        elif conn.dialect.name == "sqlite":
            # pysqlite would begin a transaction only before DML, leaving DDL in autocommit;
            # IMMEDIATE takes the write lock now, so a concurrent migrate waits (busy timeout).
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn
        conn.commit()


def upgrade(engine: Engine) -> list[str]:
    """Bring our tables to the latest revision; returns the revisions applied (empty: no-op)."""
    with _migration_transaction(engine) as conn:
        waiting = _pending_on(conn)
        if not waiting:
            return []
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        # env.py runs on this connection, inside this transaction and under its lock.
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    return waiting
