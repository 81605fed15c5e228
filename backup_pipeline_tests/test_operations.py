"""What support runs by hand, through `backup-pipeline` itself: process, run and resend-link."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import Engine, create_engine, func, insert, select, update

from backup_pipeline import cli
from backup_pipeline import tables as t
from backup_pipeline.housekeeping import expire_archives
from backup_pipeline.resources import platform_db as db
from backup_pipeline.resources.platform_db import create_schema
from backup_pipeline.resources.storage import open_store
from backup_pipeline.synthetic import seed_platform
from backup_pipeline.target import REQUEST_TAG
from backup_pipeline_tests.support.sendgrid import SendGridEndpoint, read_outbox, read_sendgrid


@dataclass
class Machine:
    """A support engineer's shell: the environment the CLI reads, and what it points at."""

    engine: Engine
    home: Path
    archives_url: str
    outbox: Path
    subscription_id: int
    user_id: int


@pytest.fixture
def machine(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Machine]:
    home = tmp_path / "dagster_home"
    archives_url = (tmp_path / "archives").as_uri()
    env = {
        "DAGSTER_HOME": str(home),
        "BACKUP_VAR_DIR": str(tmp_path / "var"),
        "BACKUP_PLATFORM_DB_URL": sqlite_url,
        "BACKUP_FILES_URL": (tmp_path / "files").as_uri(),
        "BACKUP_ARCHIVES_URL": archives_url,
        "BACKUP_MAIL_URL": (tmp_path / "outbox").as_uri(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    engine = create_engine(sqlite_url)
    create_schema(engine)
    summary = seed_platform(engine, open_store(env["BACKUP_FILES_URL"]), patients=3, seed=5)
    sid = summary.subscription_ids[0]
    yield Machine(
        engine=engine,
        home=home,
        archives_url=archives_url,
        outbox=tmp_path / "outbox",
        subscription_id=sid,
        user_id=summary.user_ids[sid][0],
    )
    engine.dispose()


def file_request(machine: Machine, capsys: pytest.CaptureFixture[str]) -> int:
    """`backup-pipeline request`, as the platform's button would."""
    code = cli.main(
        ["request", "--subscription", str(machine.subscription_id), "--user", str(machine.user_id)]
    )
    assert code == 0
    match = re.search(r"Filed backup request (\d+) \(pending\)", capsys.readouterr().out)
    assert match
    return int(match.group(1))


def request_row(engine: Engine, request_id: int) -> db.BackupRequest:
    with engine.connect() as conn:
        row = db.get_request(conn, request_id)
    assert row is not None
    return row


def runs_of(request_id: int) -> list[dg.DagsterRun]:
    """The runs of a request in $DAGSTER_HOME's instance, as the Dagster UI would list them."""
    with dg.DagsterInstance.get() as instance:
        return list(instance.get_runs(filters=dg.RunsFilter(tags={REQUEST_TAG: str(request_id)})))


def requests_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(t.backup_requests)).scalar()


def test_process_runs_each_accepted_request_into_the_dagster_home_instance(
    machine: Machine, capsys: pytest.CaptureFixture[str]
):
    request_id = file_request(machine, capsys)

    assert cli.main(["process"]) == 0

    assert f"request {request_id}: run" in capsys.readouterr().out
    assert (machine.home / "dagster.yaml").exists()  # the local instance's run queue config
    (run,) = runs_of(request_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    row = request_row(machine.engine, request_id)
    assert row.status == "delivered" and row.run_id == run.run_id
    # Nothing left to do: a second `process` launches nothing and still succeeds.
    assert cli.main(["process"]) == 0
    assert len(runs_of(request_id)) == 1


def test_process_exits_non_zero_when_a_run_failed_and_run_delivers_it_afterwards(
    machine: Machine,
    capsys: pytest.CaptureFixture[str],
    sendgrid_endpoint: SendGridEndpoint,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("BACKUP_MAIL_URL", sendgrid_endpoint.url)
    request_id = file_request(machine, capsys)
    sendgrid_endpoint.script([400])  # the delivery email is refused for good

    assert cli.main(["process"]) == 1

    assert "FAILED -> failed" in capsys.readouterr().out
    assert request_row(machine.engine, request_id).status == "failed"
    (failed_run,) = runs_of(request_id)
    assert failed_run.status == dg.DagsterRunStatus.FAILURE

    # The provider accepts mail again: support re-runs the request by hand.
    assert cli.main(["run", str(request_id)]) == 0

    assert "succeeded -> delivered" in capsys.readouterr().out
    row = request_row(machine.engine, request_id)
    assert row.status == "delivered"
    runs = runs_of(request_id)
    assert {r.run_id for r in runs} == {failed_run.run_id, row.run_id}
    delivered = [
        m for m in read_sendgrid(sendgrid_endpoint) if m.key == f"backup-{request_id}-delivered"
    ]
    assert len(delivered) == 1
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main(["run", "999999"])


def test_resend_link_gives_a_fresh_expiry_without_touching_the_quota_until_the_archive_expires(
    machine: Machine, capsys: pytest.CaptureFixture[str]
):
    request_id = file_request(machine, capsys)
    assert cli.main(["process"]) == 0
    # Two days later the clinic has lost the email; its link has an hour left.
    almost_expired = db.utcnow() + timedelta(hours=1)
    with machine.engine.begin() as conn:
        conn.execute(
            update(t.backup_requests)
            .where(t.backup_requests.c.id == request_id)
            .values(link_expires_at=almost_expired)
        )
    before = request_row(machine.engine, request_id)
    count_before = requests_count(machine.engine)
    capsys.readouterr()

    assert cli.main(["resend-link", str(request_id)]) == 0

    assert f"New link sent for request {request_id}" in capsys.readouterr().out
    after = request_row(machine.engine, request_id)
    assert after.link_expires_at > almost_expired + timedelta(hours=70)  # a whole new 72 hours
    assert after.email_message_id != before.email_message_id
    # Not a new backup: same status and archive, no new request, nothing for the quota to count.
    for column in (
        "status",
        "requested_at",
        "finished_at",
        "run_id",
        "archive_key",
        "archive_sha256",
    ):
        assert getattr(after, column) == getattr(before, column)
    assert requests_count(machine.engine) == count_before
    first, second = read_outbox(machine.outbox)
    assert first.key == second.key == f"backup-{request_id}-delivered"
    assert second.message_id == after.email_message_id
    assert (
        open_store(machine.archives_url).signed_url(after.archive_key, timedelta(hours=1), "x.zip")
        in second.text
    )
    assert after.archive_sha256 in second.text

    # The expiry schedule deletes the archive once the link has expired: no link can be given.
    store = open_store(machine.archives_url)
    assert expire_archives(machine.engine, store, now=after.link_expires_at + timedelta(seconds=1))
    assert request_row(machine.engine, request_id).status == "expired"
    assert not store.exists(after.archive_key)

    assert cli.main(["resend-link", str(request_id)]) != 0

    error = capsys.readouterr().err
    assert "is expired" in error and "new backup request" in error
    assert len(read_outbox(machine.outbox)) == 2


def test_resend_link_refuses_when_the_archive_is_gone_or_the_request_unknown(
    machine: Machine, capsys: pytest.CaptureFixture[str]
):
    # Delivered on paper, but the archive was removed from the bucket by hand.
    with machine.engine.begin() as conn:
        conn.execute(
            insert(t.backup_requests).values(
                id=77,
                subscription_id=machine.subscription_id,
                requested_by_user_id=machine.user_id,
                requested_at=datetime(2025, 1, 10),
                status="delivered",
                archive_key=f"respaldos/{machine.subscription_id}/77/respaldo.zip",
                archive_size_bytes=1_000,
                archive_sha256="0" * 64,
                link_expires_at=db.utcnow() + timedelta(hours=5),
            )
        )

    assert cli.main(["resend-link", "77"]) != 0
    assert "no longer exists" in capsys.readouterr().err
    assert cli.main(["resend-link", "78"]) != 0
    assert "does not exist" in capsys.readouterr().err
    assert not machine.outbox.exists() or not list(machine.outbox.glob("*.eml"))
