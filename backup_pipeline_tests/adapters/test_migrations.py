"""Our backup_* tables by migrations, onto a platform database built from schema.sql alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, select, text

from backup_pipeline import cli
from backup_pipeline.platform import create_schema, migrations
from backup_pipeline.platform import tables as t
from backup_pipeline.resources.storage import open_store
from backup_pipeline.synthetic import file_backup_request, seed_platform

SHARED_SCHEMA_SQL = Path(__file__).resolve().parents[3] / "shared" / "platform" / "schema.sql"
COPIED_SCHEMA_SQL = Path(__file__).resolve().parents[1] / "data" / "platform_schema.sql"
PLATFORM_NAMES = sorted(table.name for table in t.PLATFORM_TABLES)
OUR_NAMES = {table.name for table in t.OUR_TABLES}
# Every revision this code knows, oldest first: what a database built from schema.sql lacks.
ALL = list(migrations.revisions())
LISTED = ", ".join(ALL)


def _schema_sql() -> str:
    # test_schema.py keeps the copy equal to the platform's own when ../shared is there.
    source = SHARED_SCHEMA_SQL if SHARED_SCHEMA_SQL.exists() else COPIED_SCHEMA_SQL
    return source.read_text(encoding="utf-8")


@pytest.fixture
def platform_only(db_url: str) -> Iterator[Engine]:
    """The platform's database as it exists: schema.sql run as it is, none of our tables."""
    engine = create_engine(db_url)
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.connection.driver_connection.executescript(_schema_sql())
        else:
            conn.exec_driver_sql(_schema_sql())
    yield engine
    engine.dispose()


def _platform_schema(engine: Engine) -> dict[str, Any]:
    """Every platform table as the database describes it: columns, types, nullability, defaults,
    keys, indexes and constraints; on SQLite also the stored CREATE statements, byte for byte."""
    insp = inspect(engine)
    described: dict[str, Any] = {}
    for name in PLATFORM_NAMES:
        described[name] = {
            "columns": [
                (c["name"], repr(c["type"]), c["nullable"], c.get("default"))
                for c in insp.get_columns(name)
            ],
            "primary_key": insp.get_pk_constraint(name),
            "foreign_keys": sorted(map(repr, insp.get_foreign_keys(name))),
            "indexes": sorted(map(repr, insp.get_indexes(name))),
            "unique": sorted(map(repr, insp.get_unique_constraints(name))),
            "checks": sorted(map(repr, insp.get_check_constraints(name))),
        }
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            described["sqlite_master"] = conn.execute(
                text("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
            ).all()
    return described


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_migrate_creates_our_tables_and_leaves_every_platform_table_as_it_was(
    platform_only: Engine,
):
    before = _platform_schema(platform_only)
    assert _tables(platform_only) == set(PLATFORM_NAMES)
    assert migrations.pending(platform_only) == ALL

    assert migrations.upgrade(platform_only) == ALL

    assert _tables(platform_only) == set(PLATFORM_NAMES) | OUR_NAMES | {"backup_schema_version"}
    assert migrations.pending(platform_only) == []
    after = _platform_schema(platform_only)
    if platform_only.dialect.name == "sqlite":
        # Our tables' own entries are new in sqlite_master; every platform entry is unchanged.
        after["sqlite_master"] = [row for row in after["sqlite_master"] if row[2] in PLATFORM_NAMES]
    assert after == before


def test_migrate_twice_is_a_no_op(platform_only: Engine):
    assert migrations.upgrade(platform_only) == ALL
    with platform_only.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM backup_schema_version")).all()
    our_schema = {name: repr(inspect(platform_only).get_columns(name)) for name in OUR_NAMES}

    assert migrations.upgrade(platform_only) == []

    with platform_only.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM backup_schema_version")).all() == versions
    assert versions == [(migrations.head(),)]
    assert {
        name: repr(inspect(platform_only).get_columns(name)) for name in OUR_NAMES
    } == our_schema


def test_the_revisions_create_exactly_the_tables_declared_in_tables_py(platform_only: Engine):
    migrations.upgrade(platform_only)
    with platform_only.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_name": migrations.include_name,
                "include_object": migrations.include_object,
            },
        )
        # A column or table added to tables.py without a new revision shows up here.
        assert compare_metadata(context, t.metadata) == []


def test_older_code_finds_nothing_pending_on_tables_a_newer_release_migrated(
    platform_only: Engine,
):
    migrations.upgrade(platform_only)
    # A rollback: the database is at a revision this code has never heard of.
    with platform_only.begin() as conn:
        conn.execute(text("UPDATE backup_schema_version SET version_num = '0999'"))

    assert migrations.pending(platform_only) == []
    migrations.require_current(platform_only)
    assert migrations.upgrade(platform_only) == []
    with platform_only.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM backup_schema_version")).all() == [
            ("0999",)
        ]


def test_the_platforms_own_alembic_version_table_is_left_alone(platform_only: Engine):
    with platform_only.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('platform_rev_42')"))

    assert migrations.upgrade(platform_only) == ALL

    with platform_only.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [
            ("platform_rev_42",)
        ]


def test_only_backup_tables_that_are_not_the_platforms_count_as_ours():
    assert migrations.is_ours("backup_quota_windows")
    assert not migrations.is_ours("backup_requests")  # the platform's, though named backup_
    assert not migrations.is_ours("patients")
    for table in t.PLATFORM_TABLES:
        assert not migrations.include_object(table, table.name, "table", False, None)
    for table in t.OUR_TABLES:
        assert migrations.include_object(table, table.name, "table", False, None)


def test_two_concurrent_migrations_both_succeed(platform_only: Engine):
    url = platform_only.url.render_as_string(hide_password=False)
    start = threading.Barrier(2)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        # Each "pod" has its own engine and connection.
        engine = create_engine(url)
        try:
            start.wait()
            results.append(migrations.upgrade(engine))
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    pods = [threading.Thread(target=migrate) for _ in range(2)]
    for pod in pods:
        pod.start()
    for pod in pods:
        pod.join(timeout=60)

    assert errors == []
    assert sorted(results) == [[], ALL]  # one applied it, the other waited and found it done
    assert migrations.pending(platform_only) == []


def test_a_second_migrate_waits_for_the_first_to_finish(platform_only: Engine):
    url = platform_only.url.render_as_string(hide_password=False)
    finished = threading.Event()
    results: list[list[str]] = []

    def migrate() -> None:
        engine = create_engine(url)
        try:
            results.append(migrations.upgrade(engine))
        finally:
            engine.dispose()
            finished.set()

    # The first migrate holds the lock (its transaction is open) while the second starts.
    with migrations._migration_transaction(platform_only):
        second = threading.Thread(target=migrate)
        second.start()
        assert not finished.wait(timeout=1.5)
    second.join(timeout=60)

    assert results == [ALL]


def test_require_current_says_what_to_run_while_a_migration_is_pending(platform_only: Engine):
    with pytest.raises(migrations.SchemaBehind) as behind:
        migrations.require_current(platform_only)

    assert behind.value.pending_revisions == ALL
    assert str(behind.value) == (
        f"our tables are behind (pending revisions: {LISTED}): run `backup-pipeline migrate`"
    )
    migrations.upgrade(platform_only)
    migrations.require_current(platform_only)


def test_migrate_check_names_the_pending_revisions_then_says_up_to_date(
    platform_only: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    url = platform_only.url.render_as_string(hide_password=False)
    monkeypatch.setenv("BACKUP_PLATFORM_DB_URL", url)

    assert cli.main(["migrate", "--check"]) != 0
    out = capsys.readouterr().out
    assert f"pending revisions {LISTED}" in out and "backup-pipeline migrate" in out
    assert _tables(platform_only) == set(PLATFORM_NAMES)  # --check changes nothing

    assert cli.main(["migrate"]) == 0
    assert f"Applied revisions {LISTED}" in capsys.readouterr().out

    assert cli.main(["migrate", "--check"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert cli.main(["migrate"]) == 0
    assert "Nothing to do" in capsys.readouterr().out


def test_create_schema_builds_the_platform_then_runs_our_migrations(db_url: str):
    engine = create_engine(db_url)
    create_schema(engine)
    create_schema(engine)  # tests and the demo call it on databases that may already exist

    assert _tables(engine) == set(PLATFORM_NAMES) | OUR_NAMES | {"backup_schema_version"}
    assert migrations.pending(engine) == []
    engine.dispose()


def test_revisions_form_one_line_of_history_each_in_its_own_file():
    script = migrations._script()
    assert len(script.get_heads()) == 1
    known = migrations.revisions()
    assert known[-1] == migrations.head()
    for revision in script.walk_revisions():
        assert revision.down_revision is None or isinstance(revision.down_revision, str)
        assert Path(revision.path).name.startswith(f"{revision.revision}_")
    # versions/ is a package, so setuptools ships every revision inside the wheel.
    assert (migrations.MIGRATIONS_DIR / "versions" / "__init__.py").exists()


def test_a_request_is_delivered_on_a_platform_built_from_schema_sql_after_migrate(
    platform_only: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    url = platform_only.url.render_as_string(hide_password=False)
    env = {
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "BACKUP_VAR_DIR": str(tmp_path / "var"),
        "BACKUP_PLATFORM_DB_URL": url,
        "BACKUP_FILES_URL": (tmp_path / "files").as_uri(),
        "BACKUP_ARCHIVES_URL": (tmp_path / "archives").as_uri(),
        "BACKUP_MAIL_URL": (tmp_path / "outbox").as_uri(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert cli.main(["migrate"]) == 0
    summary = seed_platform(platform_only, open_store(env["BACKUP_FILES_URL"]), patients=3, seed=5)
    sid = summary.subscription_ids[0]
    request_id = file_backup_request(
        platform_only, subscription_id=sid, user_id=summary.user_ids[sid][0]
    )

    assert cli.main(["process"]) == 0

    assert f"request {request_id}: run" in capsys.readouterr().out
    with platform_only.connect() as conn:
        status, archive_key = conn.execute(
            select(t.backup_requests.c.status, t.backup_requests.c.archive_key).where(
                t.backup_requests.c.id == request_id
            )
        ).one()
    assert status == "delivered"
    assert open_store(env["BACKUP_ARCHIVES_URL"]).exists(archive_key)
    assert list((tmp_path / "outbox").glob("*.eml"))
