"""The project's SQLAlchemy tables match the platform's schema.sql exactly, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, create_engine, inspect

from backup_pipeline.platform import create_schema, migrations, tables
from backup_pipeline_tests.support.db import create_postgres_database, drop_postgres_database

SHARED_SCHEMA_SQL = Path(__file__).resolve().parents[3] / "shared" / "platform" / "schema.sql"
# A copy kept with the tests, so the comparison runs wherever the repository is cloned alone;
# test_the_copy_of_schema_sql_is_current keeps it equal to the platform's own.
COPIED_SCHEMA_SQL = Path(__file__).resolve().parents[1] / "data" / "platform_schema.sql"


def _schema_sql() -> str:
    source = SHARED_SCHEMA_SQL if SHARED_SCHEMA_SQL.exists() else COPIED_SCHEMA_SQL
    return source.read_text(encoding="utf-8")


def test_the_copy_of_schema_sql_is_current():
    if not SHARED_SCHEMA_SQL.exists():
        pytest.skip(f"the platform's schema is not at {SHARED_SCHEMA_SQL} to compare the copy with")
    assert COPIED_SCHEMA_SQL.read_text(encoding="utf-8") == SHARED_SCHEMA_SQL.read_text(
        encoding="utf-8"
    )


def _load_sql(engine: Engine, sql: str) -> None:
    """Run the file as the platform would: whole, by the database's own script runner."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.connection.driver_connection.executescript(sql)
        else:
            conn.exec_driver_sql(sql)  # psycopg runs a parameterless multi-statement script


def _describe(engine: Engine, names: list[str]) -> dict:
    insp = inspect(engine)
    described = {}
    for name in names:
        columns = [
            (
                c["name"],
                repr(c["type"]),
                c["nullable"],
                (c.get("default") or "").replace("::text", ""),
            )
            for c in insp.get_columns(name)
        ]
        fks = sorted(
            (tuple(fk["constrained_columns"]), fk["referred_table"], tuple(fk["referred_columns"]))
            for fk in insp.get_foreign_keys(name)
        )
        indexes = sorted(
            (ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
            for ix in insp.get_indexes(name)
        )
        described[name] = {
            "columns": columns,
            "primary_key": insp.get_pk_constraint(name)["constrained_columns"],
            "foreign_keys": fks,
            "indexes": indexes,
        }
    return described


def _compare(sql_engine: Engine, ours_engine: Engine) -> None:
    _load_sql(sql_engine, _schema_sql())
    create_schema(ours_engine)
    platform_names = sorted(inspect(sql_engine).get_table_names())
    assert platform_names == sorted(t.name for t in tables.PLATFORM_TABLES)
    expected = _describe(sql_engine, platform_names)
    actual = _describe(ours_engine, platform_names)
    for name in platform_names:
        assert actual[name] == expected[name], f"table {name} differs from schema.sql"
    # Our own tables (and our migrations' version table) exist beside them, all named backup_*.
    ours = set(inspect(ours_engine).get_table_names()) - set(platform_names)
    assert ours == {t.name for t in tables.OUR_TABLES} | {migrations.VERSION_TABLE}
    assert all(name.startswith("backup_") for name in ours)


def test_tables_match_schema_sql_on_sqlite(tmp_path):
    sql_engine = create_engine(f"sqlite:///{tmp_path / 'from_sql.db'}")
    ours_engine = create_engine(f"sqlite:///{tmp_path / 'ours.db'}")
    _compare(sql_engine, ours_engine)


@pytest.mark.postgres
def test_tables_match_schema_sql_on_postgresql():
    url_a, admin_a = create_postgres_database()
    url_b, admin_b = create_postgres_database()
    try:
        sql_engine, ours_engine = create_engine(url_a), create_engine(url_b)
        _compare(sql_engine, ours_engine)
        sql_engine.dispose()
        ours_engine.dispose()
    finally:
        drop_postgres_database(url_a, admin_a)
        drop_postgres_database(url_b, admin_b)


def test_reflected_metadata_has_every_declared_column(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'ours.db'}")
    create_schema(engine)
    reflected = MetaData()
    reflected.reflect(engine)
    for table in tables.metadata.sorted_tables:
        assert [c.name for c in reflected.tables[table.name].columns] == [
            c.name for c in table.columns
        ]
