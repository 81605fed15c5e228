"""Database fixtures: a fresh SQLite file or a fresh PostgreSQL database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

POSTGRES_ENV = "BACKUP_TEST_POSTGRES_URL"
REQUIRE_ENV = "BACKUP_REQUIRE_POSTGRES"


def postgres_admin_url() -> str | None:
    """The server's URL, or a skip (a failure when BACKUP_REQUIRE_POSTGRES=1) when there is none."""
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {POSTGRES_ENV} is not set")
    pytest.skip(
        f"PostgreSQL tests need {POSTGRES_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1/test)"
    )
    return None


def create_postgres_database() -> tuple[str, Engine]:
    """A new empty database on the test server; returns its URL and an admin engine to drop it."""
    admin_url = postgres_admin_url()
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"bp_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        if os.environ.get(REQUIRE_ENV) == "1":
            raise
        pytest.skip(f"PostgreSQL at {POSTGRES_ENV} is not reachable: {exc}")
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), admin


def drop_postgres_database(url: str, admin: Engine) -> None:
    name = make_url(url).database
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    url, admin = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url, admin)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'platform.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    """An empty database URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'platform.db'}"
        return
    url, admin = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url, admin)
