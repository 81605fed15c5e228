"""What support runs by hand, through `backup-pipeline` itself: request, process, run, and the
support commands (resend-link, refuse) as runs of support's jobs."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import insert, update

from backup_pipeline import cli, dagster_compat
from backup_pipeline import platform as db
from backup_pipeline.operations import CODE_LOCATION
from backup_pipeline.platform import tables as t
from backup_pipeline.rules.target import REQUEST_TAG
from backup_pipeline.services.housekeeping import expire_archives
from backup_pipeline_tests.support.platform import Clinic, Platform, open_platform
from backup_pipeline_tests.support.sendgrid import SendGridEndpoint, read_outbox, read_sendgrid


@pytest.fixture
def platform(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Platform:
    """A support engineer's shell: the environment the CLI reads names this platform."""
    platform = open_platform(
        request,
        env={
            "DAGSTER_HOME": str(tmp_path / "dagster_home"),
            "BACKUP_VAR_DIR": str(tmp_path / "var"),
        },
    )
    for name, value in platform.env.items():
        monkeypatch.setenv(name, value)
    return platform


@pytest.fixture
def clinic(platform: Platform) -> Clinic:
    (seeded,) = platform.seed(patients=3, seed=5)
    return seeded


def file_request(clinic: Clinic, capsys: pytest.CaptureFixture[str]) -> int:
    """`backup-pipeline request`, as the platform's button would."""
    code = cli.main(
        ["request", "--subscription", str(clinic.subscription_id), "--user", str(clinic.owner_id)]
    )
    assert code == 0
    match = re.search(r"Filed backup request (\d+) \(pending\)", capsys.readouterr().out)
    assert match
    return int(match.group(1))


def runs_of(request_id: int) -> list[dg.DagsterRun]:
    """The runs of a request in $DAGSTER_HOME's instance, as the Dagster UI would list them."""
    with dg.DagsterInstance.get() as instance:
        return list(instance.get_runs(filters=dg.RunsFilter(tags={REQUEST_TAG: str(request_id)})))


def test_process_runs_each_accepted_request_into_the_dagster_home_instance(
    platform: Platform, clinic: Clinic, capsys: pytest.CaptureFixture[str]
):
    request_id = file_request(clinic, capsys)

    assert cli.main(["process"]) == 0

    assert f"request {request_id}: run" in capsys.readouterr().out
    assert (
        Path(platform.env["DAGSTER_HOME"]) / "dagster.yaml"
    ).exists()  # the local instance's run queue config
    (run,) = runs_of(request_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    row = platform.request(request_id)
    assert row.status == "delivered" and row.run_id == run.run_id
    # Nothing left to do: a second `process` launches nothing and still succeeds.
    assert cli.main(["process"]) == 0
    assert len(runs_of(request_id)) == 1


def test_process_exits_non_zero_when_a_run_failed_and_run_delivers_it_afterwards(
    platform: Platform,
    clinic: Clinic,
    capsys: pytest.CaptureFixture[str],
    sendgrid_endpoint: SendGridEndpoint,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("BACKUP_MAIL_URL", sendgrid_endpoint.url)
    request_id = file_request(clinic, capsys)
    sendgrid_endpoint.script([400])  # the delivery email is refused for good

    assert cli.main(["process"]) == 1

    assert "FAILED -> failed" in capsys.readouterr().out
    assert platform.request(request_id).status == "failed"
    (failed_run,) = runs_of(request_id)
    assert failed_run.status == dg.DagsterRunStatus.FAILURE

    # The provider accepts mail again: support re-runs the request by hand.
    assert cli.main(["run", str(request_id)]) == 0

    assert "succeeded -> delivered" in capsys.readouterr().out
    row = platform.request(request_id)
    assert row.status == "delivered"
    runs = runs_of(request_id)
    assert {r.run_id for r in runs} == {failed_run.run_id, row.run_id}
    delivered = [
        m for m in read_sendgrid(sendgrid_endpoint) if m.key == f"backup-{request_id}-delivered"
    ]
    assert len(delivered) == 1
    assert cli.main(["run", "999999"]) == 2
    assert capsys.readouterr().err == "error: backup request 999999 does not exist\n"


def test_resend_link_gives_a_fresh_expiry_without_touching_the_quota_until_the_archive_expires(
    platform: Platform, clinic: Clinic, capsys: pytest.CaptureFixture[str]
):
    request_id = file_request(clinic, capsys)
    assert cli.main(["process"]) == 0
    # Two days later the clinic has lost the email; its link has an hour left.
    almost_expired = db.utcnow() + timedelta(hours=1)
    with platform.engine.begin() as conn:
        conn.execute(
            update(t.backup_requests)
            .where(t.backup_requests.c.id == request_id)
            .values(link_expires_at=almost_expired)
        )
    before = platform.request(request_id)
    count_before = platform.requests_count()
    capsys.readouterr()

    assert cli.main(["resend-link", str(request_id), "--reason", "lost the email"]) == 0

    assert f"New link sent for request {request_id}" in capsys.readouterr().out
    after = platform.request(request_id)
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
    assert platform.requests_count() == count_before
    first, second = read_outbox(platform.outbox)
    assert first.key == second.key == f"backup-{request_id}-delivered"
    assert second.message_id == after.email_message_id
    assert (
        platform.archives.signed_url(after.archive_key, timedelta(hours=1), "x.zip") in second.text
    )
    assert after.archive_sha256 in second.text

    # The expiry schedule deletes the archive once the link has expired: no link can be given.
    store = platform.archives
    assert expire_archives(platform.engine, store, now=after.link_expires_at + timedelta(seconds=1))
    assert platform.request(request_id).status == "expired"
    assert not store.exists(after.archive_key)

    assert cli.main(["resend-link", str(request_id), "--reason", "lost the email"]) != 0

    error = capsys.readouterr().err
    assert "is expired" in error and "new backup request" in error
    assert len(read_outbox(platform.outbox)) == 2


def test_resend_link_refuses_when_the_archive_is_gone_or_the_request_unknown(
    platform: Platform, clinic: Clinic, capsys: pytest.CaptureFixture[str]
):
    # Delivered on paper, but the archive was removed from the bucket by hand.
    with platform.engine.begin() as conn:
        conn.execute(
            insert(t.backup_requests).values(
                id=77,
                subscription_id=clinic.subscription_id,
                requested_by_user_id=clinic.owner_id,
                requested_at=datetime(2025, 1, 10),
                status="delivered",
                archive_key=f"respaldos/{clinic.subscription_id}/77/respaldo.zip",
                archive_size_bytes=1_000,
                archive_sha256="0" * 64,
                link_expires_at=db.utcnow() + timedelta(hours=5),
            )
        )

    assert cli.main(["resend-link", "77", "--reason", "lost the email"]) != 0
    assert "no longer exists" in capsys.readouterr().err
    assert cli.main(["resend-link", "78", "--reason", "lost the email"]) != 0
    assert "does not exist" in capsys.readouterr().err
    assert not platform.outbox.exists() or not list(platform.outbox.glob("*.eml"))


def test_request_refuses_a_subscription_or_user_that_does_not_exist(
    platform: Platform, clinic: Clinic, capsys: pytest.CaptureFixture[str]
):
    count_before = platform.requests_count()

    assert cli.main(["request", "--subscription", "999", "--user", str(clinic.owner_id)]) == 2
    assert capsys.readouterr().err == "error: subscription 999 does not exist\n"
    assert cli.main(["request", "--subscription", str(clinic.subscription_id), "--user", "7"]) == 2
    assert capsys.readouterr().err == "error: user 7 does not exist\n"

    assert platform.requests_count() == count_before


@pytest.mark.parametrize(
    ("status", "instead"),
    [
        ("delivered", "backup-pipeline resend-link"),
        ("expired", "the clinic files a new backup request"),
        ("rejected", "the clinic files a new backup request"),
    ],
)
def test_run_refuses_a_finished_request_before_any_run_is_launched(
    platform: Platform,
    clinic: Clinic,
    capsys: pytest.CaptureFixture[str],
    status: str,
    instead: str,
):
    request_id = file_request(clinic, capsys)
    with platform.engine.begin() as conn:
        conn.execute(
            update(t.backup_requests)
            .where(t.backup_requests.c.id == request_id)
            .values(status=status)
        )

    assert cli.main(["run", str(request_id)]) == 2

    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: request {request_id} is {status};")
    assert instead in error
    assert runs_of(request_id) == []
    assert platform.request(request_id).status == status


def test_process_shows_dagsters_info_lines_and_the_result_and_debug_only_when_verbose(
    platform: Platform, capfd: pytest.CaptureFixture[str]
):
    first, second = platform.seed(patients=2, subscriptions=2, seed=9)
    file_request(first, capfd)

    assert cli.main(["process"]) == 0

    out, err = capfd.readouterr()
    assert "succeeded -> delivered" in out
    dagster_lines = [line for line in err.splitlines() if " - dagster - " in line]
    assert dagster_lines and all(" - dagster - INFO - " in line for line in dagster_lines)
    assert "rendering 8 workbooks" in err  # the backup's own progress, at INFO

    # Support wants every event of the next one.
    file_request(second, capfd)

    assert cli.main(["process", "--verbose"]) == 0

    out, err = capfd.readouterr()
    assert "succeeded -> delivered" in out
    assert " - dagster - DEBUG - " in err and "RUN_SUCCESS" in err


def test_support_commands_are_runs_of_support_jobs_kept_in_the_audit_trail_refusals_one_line(
    platform: Platform, clinic: Clinic, capfd: pytest.CaptureFixture[str]
):
    request_id = file_request(clinic, capfd)

    assert cli.main(["refuse", str(request_id), "--reason", "duplicate via phone"]) == 0

    assert capfd.readouterr().out == f"Request {request_id} refused.\n"
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs(dg.RunsFilter(job_name="refuse_request_job"))
        assert run.status == dg.DagsterRunStatus.SUCCESS
        # A run of the code location, as if launched from its Launchpad.
        assert instance.get_runs(
            dg.RunsFilter(tags=dagster_compat.code_location_tags(CODE_LOCATION))
        ) == [run]
    with platform.engine.connect() as conn:
        *_, refused = db.events_of(conn, request_id)
    assert (refused.event, refused.actor, refused.run_id) == ("rejected", "support", run.run_id)

    # Refused again: the job's own words, one line, no stack, nothing else printed.
    assert cli.main(["refuse", str(request_id), "--reason", "duplicate via phone"]) == 2

    out, err = capfd.readouterr()
    assert out == ""
    assert err == (
        f"error: request {request_id} is rejected: only a pending request can be refused "
        "(a running one is stopped by cancelling its run)\n"
    )
