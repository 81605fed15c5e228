"""Operable and accountable: the requester re-checked while the backup runs, support's jobs in the
code location, the audit trail of every change, and quota windows current after each one."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import dagster as dg
import pytest
from sqlalchemy import text, update

from backup_pipeline import platform as db
from backup_pipeline.datasets import export
from backup_pipeline.platform import tables as t
from backup_pipeline.resources.storage import ObjectStoreResource
from backup_pipeline.rules.spanish import spanish_datetime, to_clinic_time
from backup_pipeline.services import export as export_service
from backup_pipeline.services.housekeeping import expire_archives, refresh_quota_windows
from backup_pipeline.services.intake import accepted_but_not_started, review_pending
from backup_pipeline.services.support_actions import SupportActionRefused, rerun_failed
from backup_pipeline.storage import ObjectStore
from backup_pipeline.storage.folder import FolderStore
from backup_pipeline_tests.support.location import code_location
from backup_pipeline_tests.support.platform import (
    EVERY_DATABASE,
    LOCAL,
    WITH_SENDGRID,
    Backends,
    Clinic,
    Platform,
)

SUPPORT_JOBS = ("resend_link_job", "rerun_request_job", "refuse_request_job", "expire_archive_job")


@pytest.fixture(params=EVERY_DATABASE)
def backends(request: pytest.FixtureRequest) -> Backends:
    """Every test here once on SQLite and once on PostgreSQL."""
    return request.param


@pytest.fixture
def clinic(platform: Platform) -> Clinic:
    (seeded,) = platform.seed(patients=6, seed=11)
    # The seeded history was written as the platform writes rows, not through our transitions.
    refresh_quota_windows(platform.engine, db.utcnow())
    return seeded


def events(platform: Platform, request_id: int) -> list[tuple[str, str]]:
    with platform.engine.connect() as conn:
        return [(e.event, e.actor) for e in db.events_of(conn, request_id)]


def revoke(platform: Platform, clinic: Clinic) -> None:
    with platform.engine.begin() as conn:
        conn.execute(
            update(t.users).where(t.users.c.id == clinic.owner_id).values(can_request_backup=False)
        )


def counted(platform: Platform, clinic: Clinic) -> int:
    """Backups in the last 360 days, as the window the platform's button reads says."""
    row = platform.quota_windows().get(clinic.subscription_id)
    return row[2] if row else 0


def window_is_current(platform: Platform, subscription_id: int) -> None:
    """The row the platform's button reads equals what the repair pass would write now."""
    before = platform.quota_windows()[subscription_id][:3]
    repair = refresh_quota_windows(platform.engine, db.utcnow())
    assert repair.corrected == 0
    assert platform.quota_windows()[subscription_id][:3] == before


def support_run(platform: Platform, job_name: str, **config: Any) -> dg.ExecuteInProcessResult:
    """A support job's run, with the config support fills in on its Launchpad (the whole of it)."""
    job = code_location(platform.settings).resolve_job_def(job_name)
    return job.execute_in_process(
        run_config=config,
        resources=platform.resources(),
        instance=platform.instance,
        raise_on_error=False,
    )


def refusal_of(platform: Platform, result: dg.ExecuteInProcessResult, op_name: str) -> str:
    """What a support run that did not apply says, in one line: the run ends without failure
    (the Overview's red is for backups), tagged and logged as refused."""
    assert result.success
    metadata = platform.step_output_metadata(result.run_id, op_name)
    assert metadata["outcome"] == "refused"
    run = platform.instance.get_run_by_id(result.run_id)
    assert run is not None and run.tags["backup/support_outcome"] == "refused"
    assert "\n" not in metadata["refused"]
    return metadata["refused"]


def test_one_request_leaves_its_whole_story_in_the_audit_trail(platform, clinic):
    request_id = platform.file_request(clinic)
    review_pending(platform.engine)
    window_is_current(platform, clinic.subscription_id)
    backup = platform.run(request_id, clinic.subscription_id)
    assert backup.delivered
    window_is_current(platform, clinic.subscription_id)

    resent = support_run(platform, "resend_link_job", request_id=request_id, reason="lost email")
    assert resent.success
    assert platform.step_output_metadata(resent.run_id, "resend_link_op")["request_id"] == (
        request_id
    )
    expire_archives(platform.engine, platform.archives, db.utcnow() + timedelta(days=30))
    window_is_current(platform, clinic.subscription_id)

    assert events(platform, request_id) == [
        ("accepted", "sensor"),
        ("running", "run"),
        ("delivered", "run"),
        ("link_resent", "support"),
        ("expired", "housekeeping"),
    ]
    with platform.engine.connect() as conn:
        trail = db.events_of(conn, request_id)
    assert trail[1].run_id == backup.outcome.run_id
    assert trail[3].reason == "lost email" and trail[3].run_id == resent.run_id


def test_a_failure_and_supports_rerun_are_recorded_and_counted_right(platform, clinic, tmp_path):
    history = counted(platform, clinic)  # the seeded clinic's earlier backups
    request_id = platform.file_request(clinic)
    review_pending(platform.engine)
    (tmp_path / "blocked").write_text("a file where the archives folder should be")
    broken = platform.resources(
        replace(platform.settings, archives_url=(tmp_path / "blocked").as_uri())
    )
    failed = platform.run(request_id, clinic.subscription_id, resources=broken)
    assert failed.request.status == "failed"
    # A failure of ours costs nothing: the window already says so, without the schedule.
    assert counted(platform, clinic) == history
    window_is_current(platform, clinic.subscription_id)

    rerun = support_run(platform, "rerun_request_job", request_id=request_id, reason="disk back")
    assert rerun.success
    metadata = platform.step_output_metadata(rerun.run_id, "rerun_request_op")
    assert metadata["run_key"] == f"backup-request-{request_id}-rerun-1"
    assert platform.status(request_id) == "pending"
    assert counted(platform, clinic) == history + 1  # it counts again
    # The request sensor launches it at once, under the new run key.
    with dg.instance_for_test() as instance:
        tick = code_location(platform.settings).resolve_sensor_def("backup_request_sensor")(
            dg.build_sensor_context(instance=instance, resources=platform.resources())
        )
    assert [r.run_key for r in tick.run_requests] == [f"backup-request-{request_id}-rerun-1"]
    assert platform.run(request_id, clinic.subscription_id).delivered

    assert events(platform, request_id) == [
        ("accepted", "sensor"),
        ("running", "run"),
        ("failed", "run"),
        ("rerun", "support"),
        ("running", "run"),
        ("delivered", "run"),
    ]
    window_is_current(platform, clinic.subscription_id)


def test_a_rerun_rechecks_the_quota_and_an_override_needs_its_own_reason(platform, clinic):
    now = db.utcnow()
    by = clinic.owner_id
    failed_id = platform.add_request(
        900, status="failed", requested_at=now - timedelta(days=40), by=by
    )
    # The clinic received another backup since the failure: a re-run would be a second in 30 days.
    platform.add_request(901, status="delivered", requested_at=now - timedelta(days=30), by=by)

    with pytest.raises(SupportActionRefused, match="quota"):
        rerun_failed(platform.engine, request_id=failed_id, reason="clinic asked")
    refused = support_run(platform, "rerun_request_job", request_id=failed_id, reason="asked")
    assert "quota" in refusal_of(platform, refused, "rerun_request_op")
    assert platform.status(failed_id) == "failed"

    with pytest.raises(SupportActionRefused, match="reason"):
        rerun_failed(
            platform.engine, request_id=failed_id, reason="clinic asked", override_quota=True
        )
    done = rerun_failed(
        platform.engine,
        request_id=failed_id,
        reason="clinic asked",
        override_quota=True,
        override_reason="our outage lost their January backup",
    )
    assert done.quota_overridden
    with platform.engine.connect() as conn:
        (trail,) = db.events_of(conn, failed_id)
    assert (trail.event, trail.reason) == ("rerun", "clinic asked")
    assert trail.detail == "quota overridden: our outage lost their January backup"


def test_support_refuses_a_pending_request_and_expires_an_archive_now(platform, clinic):
    request_id = platform.file_request(clinic)
    refused = support_run(
        platform, "refuse_request_job", request_id=request_id, reason="duplicate via phone"
    )
    assert refused.success
    row = platform.request(request_id)
    assert row.status == "rejected"
    assert row.status_detail.startswith("El equipo de soporte rechazó")
    assert review_pending(platform.engine).reviewed == 0  # not looked at again

    key = platform.add_delivered_request(
        77, link_expires_at=db.utcnow() + timedelta(days=2), by=clinic.owner_id
    )
    expired = support_run(platform, "expire_archive_job", request_id=77, reason="clinic asked")
    assert expired.success
    assert platform.step_output_metadata(expired.run_id, "expire_archive_op")["archive_deleted"]
    assert platform.status(77) == "expired"
    assert not platform.archives.exists(key)
    assert events(platform, 77) == [("expired", "support")]
    # Refusing what is not pending says why and changes nothing.
    again = support_run(platform, "refuse_request_job", request_id=77, reason="oops")
    assert refusal_of(platform, again, "refuse_request_op") == (
        "request 77 is expired: only a pending request can be refused (a running one is "
        "stopped by cancelling its run)"
    )
    assert platform.status(77) == "expired"


def test_every_support_job_is_in_the_code_location_with_a_required_reason(platform):
    defs = code_location(platform.settings)
    for name in SUPPORT_JOBS:
        job = defs.resolve_job_def(name)
        (op_def,) = job.graph.node_defs
        fields = op_def.config_schema.as_field().config_type.fields
        assert fields["request_id"].is_required
        assert fields["reason"].is_required


# --- The requester re-checked while the backup runs -------------------------------------------


@contextmanager
def revoked_when(platform: Platform, clinic: Clinic, module: Any, name: str) -> Iterator[None]:
    """Revoke the requester's authorisation the first time `module.name` is called in the run."""
    original = getattr(module, name)
    done = []
    here = os.getpid()

    def revoke_then_call(*args: Any, **kwargs: Any) -> Any:
        if not done:
            if os.getpid() != here:
                # In a worker process forked by the run (the workbooks): the test's pooled
                # connections were the parent's, the worker opens its own.
                platform.engine.dispose(close=False)
            revoke(platform, clinic)
            done.append(True)
        return original(*args, **kwargs)

    setattr(module, name, revoke_then_call)
    try:
        yield
    finally:
        setattr(module, name, original)


@pytest.mark.parametrize("point", ["before_the_run", "during_the_exports", "after_the_zip"])
def test_a_requester_revoked_while_the_backup_runs_gets_no_link(platform, clinic, point):
    history = counted(platform, clinic)
    request_id = platform.file_request(clinic)
    review_pending(platform.engine)
    if point == "before_the_run":
        revoke(platform, clinic)
        backup = platform.run(request_id, clinic.subscription_id)
    else:
        module, name = (
            (export, "render_workbook")
            if point == "during_the_exports"
            else (export_service, "build_archive")
        )
        with revoked_when(platform, clinic, module, name):
            backup = platform.run(request_id, clinic.subscription_id)

    assert not backup.outcome.success
    row = platform.request(request_id)
    assert row.status == "failed"
    assert row.status_detail.startswith("No se entregó el respaldo")
    assert "no cuenta para el límite" in row.status_detail
    assert row.email_sent_at is None
    assert platform.archives_made() == []  # no archive left for any link to reach
    sent = platform.sent()
    assert [m.to for m in sent] == [platform.settings.support_email]  # ids only, to support
    assert "no longer authorised" in sent[0].subject
    assert events(platform, request_id)[-1] == ("failed", "run")
    assert counted(platform, clinic) == history  # it does not count


# --- What a second look found ---------------------------------------------------------------


def test_a_rerun_the_cli_runs_itself_is_not_launched_again_by_the_sensor(platform, clinic):
    failed_id = platform.add_request(
        900, status="failed", requested_at=db.utcnow() - timedelta(days=400), by=clinic.owner_id
    )
    rerun_failed(
        platform.engine,
        request_id=failed_id,
        reason="by hand",
        # The seeded clinic's history is not this test's subject.
        override_quota=True,
        override_reason="test",
        launched_by_sensor=False,
    )
    assert platform.status(failed_id) == "pending"
    assert accepted_but_not_started(platform.engine) == []  # the CLI runs it, not the sensor too


def test_re_executing_a_failed_requests_run_is_refused_without_touching_it(platform, clinic):
    failed_id = platform.add_request(
        900, status="failed", requested_at=db.utcnow() - timedelta(days=400), by=clinic.owner_id
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("backup_requests", [str(failed_id)])
        result = (
            code_location(platform.settings)
            .resolve_job_def("backup_job")
            .execute_in_process(
                instance=instance,
                partition_key=str(failed_id),
                resources=platform.resources(),
                raise_on_error=False,
            )
        )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert "rerun_request_job" in failure.event_specific_data.error.message
    assert platform.status(failed_id) == "failed" and platform.sent() == []
    assert events(platform, failed_id) == []  # no quota-free way around support's re-run


def waits_for(platform: Platform, holder: int, while_: Callable[[], bool]) -> bool:
    """Whether a backend comes to wait on a lock the backend `holder` holds (pg_blocking_pids),
    looked for while `while_()` holds."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE :holder = ANY(pg_blocking_pids(pid))")
    with platform.engine.connect() as watcher:
        while while_():
            if watcher.execute(query, {"holder": holder}).scalar_one():
                return True
            watcher.rollback()  # a fresh snapshot of the activity for the next look
            time.sleep(0.01)
    return False


def test_two_changes_of_one_subscription_at_once_keep_its_window(platform, clinic):
    """A delivery and the sensor's review of a double click, in two open transactions: on
    PostgreSQL the second waits for the first instead of failing on the window's row."""
    now = db.utcnow()
    running = platform.add_request(
        100, status="running", requested_at=now - timedelta(days=1), by=clinic.owner_id
    )
    double = platform.add_request(101, status="pending", requested_at=now, by=clinic.owner_id)
    with platform.engine.begin() as conn:
        db.refresh_quota_windows_of(conn, [clinic.subscription_id])
    first = platform.engine.connect()
    first.begin()
    assert db.mark_delivered(first, running, "r1")
    errors: list[BaseException] = []

    def review() -> None:
        try:
            with platform.engine.begin() as conn:
                db.record_reviews(
                    conn,
                    [db.Review(double, clinic.subscription_id, False, "in_progress", "x", None)],
                    db.utcnow(),
                )
        except BaseException as exc:  # reported below
            errors.append(exc)

    if platform.engine.dialect.name == "sqlite":
        first.commit()  # SQLite has one writer at a time: the review simply comes after
        review()
    else:
        holder = first.execute(text("SELECT pg_backend_pid()")).scalar_one()
        second = threading.Thread(target=review)
        second.start()
        # The barrier: PostgreSQL itself says the review waits on a lock the first holds.
        assert waits_for(platform, holder, while_=second.is_alive)
        first.commit()
        second.join(timeout=60)
    first.close()
    assert errors == []
    assert platform.status(double) == "rejected"
    window_is_current(platform, clinic.subscription_id)


def test_a_link_re_sent_while_expiry_runs_keeps_its_archive(platform, clinic, monkeypatch):
    key = platform.add_delivered_request(
        77, link_expires_at=db.utcnow() - timedelta(minutes=1), by=clinic.owner_id
    )
    selected = db.archives_to_expire

    def select_then_resend(conn, now, limit):
        due = selected(conn, now, limit)
        # Support re-sends the link between the batch's read and the deletion.
        with platform.engine.begin() as other:
            assert db.extend_link(other, 77, link_expires_at=now + timedelta(days=3))
        return due

    monkeypatch.setattr(db, "archives_to_expire", select_then_resend)
    assert expire_archives(platform.engine, platform.archives, db.utcnow()) == 0
    assert platform.archives.exists(key) and platform.status(77) == "delivered"


def _without_link_and_expiry(text: str, expiry: str) -> str:
    """An email's text with its link(s) and its expiry blanked: what must not change on a resend."""
    assert expiry in text
    return re.sub(r"(?:https?|file)://[^\s\"<>]+", "<link>", text).replace(expiry, "<expiry>")


@pytest.mark.parametrize("backends", [LOCAL, WITH_SENDGRID], ids=["outbox", "sendgrid"])
def test_a_re_sent_link_email_says_what_the_first_said_with_the_new_link_and_expiry(
    platform, clinic
):
    request_id = platform.file_request(clinic)
    review_pending(platform.engine)
    assert platform.run(request_id, clinic.subscription_id).delivered
    first_expiry = platform.request(request_id).link_expires_at
    (first,) = platform.sent()

    resent = support_run(platform, "resend_link_job", request_id=request_id, reason="lost email")
    assert resent.success
    row = platform.request(request_id)
    first_again, second = platform.sent()
    assert first_again == first
    assert row.link_expires_at > first_expiry
    with platform.engine.connect() as conn:
        subscription = db.get_subscription(conn, clinic.subscription_id)
    assert subscription is not None
    timezone = subscription.timezone
    expiries = [
        spanish_datetime(to_clinic_time(moment, timezone))
        for moment in (first_expiry, row.link_expires_at)
    ]
    assert second.to == first.to and second.subject == first.subject
    assert second.message_id == row.email_message_id != first.message_id
    # The contents list too: every dataset's count and the files copied, as the first listed them.
    assert "Qué contiene" in second.text and "\n- Pacientes: " in second.text
    assert "Archivos adjuntos y comprobantes copiados: " in second.text
    for part in ("text", "html"):
        assert _without_link_and_expiry(
            getattr(second, part), expiries[1]
        ) == _without_link_and_expiry(getattr(first, part), expiries[0])


def test_a_run_that_keeps_the_emailed_archive_keeps_its_contents_for_a_resend(platform, clinic):
    request_id = platform.file_request(clinic)
    review_pending(platform.engine)
    assert platform.run(request_id, clinic.subscription_id).delivered
    with platform.engine.connect() as conn:
        listed = db.contents_of(conn, request_id)
    assert listed and listed[0][0] == "Pacientes"
    # The run died after the email but before it marked the request delivered: the next run
    # keeps the emailed archive (no list of its own) and sends nothing.
    with platform.engine.begin() as conn:
        conn.execute(
            update(t.backup_requests)
            .where(t.backup_requests.c.id == request_id)
            .values(status="running")
        )
    again = platform.run(request_id, clinic.subscription_id)
    assert again.delivered and len(platform.sent()) == 1
    kept = platform.step_output_metadata(again.outcome.run_id, "assemble_backup", "archive")
    assert kept["kept_emailed_archive"] is True
    with platform.engine.connect() as conn:
        assert db.contents_of(conn, request_id) == listed

    assert support_run(platform, "resend_link_job", request_id=request_id, reason="lost").success
    _, resent = platform.sent()
    assert f"\n- Pacientes: {listed[0][1]}\n" in resent.text


def test_refusing_a_request_cancels_its_backup_run_that_is_starting(platform, clinic):
    request_id = platform.file_request(clinic)
    review_pending(platform.engine)
    backup_job = code_location(platform.settings).resolve_job_def("backup_job")
    # Launched by the queue, its process not yet running our code (the daemon's STARTING).
    starting = platform.instance.create_run_for_job(
        backup_job,
        status=dg.DagsterRunStatus.STARTING,
        tags={"backup/request_id": str(request_id), "dagster/partition": str(request_id)},
    )
    refused = support_run(
        platform, "refuse_request_job", request_id=request_id, reason="clinic closed"
    )
    assert refused.success
    assert platform.instance.get_run_by_id(starting.run_id).status == dg.DagsterRunStatus.CANCELED
    metadata = platform.step_output_metadata(refused.run_id, "refuse_request_op")
    assert metadata["cancelled_runs"] == [starting.run_id]
    assert platform.status(request_id) == "rejected"


# --- Nothing made for a requester revoked before the run ----------------------------------------


class JournalledFolderStore(FolderStore):
    """A folder store that notes every key written to it in a journal file: a forked worker's
    writes land in the same journal, and a clean-up that deletes them later erases no line."""

    def __init__(self, root: Path, journal: Path) -> None:
        super().__init__(root)
        self.journal = journal

    def open_write(
        self, key: str, content_type: str | None = None
    ) -> AbstractContextManager[BinaryIO]:
        with self.journal.open("a", encoding="utf-8") as notes:
            notes.write(key + "\n")
        return super().open_write(key, content_type)


class JournalledArchivesResource(ObjectStoreResource):
    """The archives folder of the platform, every write to it journalled."""

    journal: str

    def get_store(self) -> ObjectStore:
        return self.open_new_store()

    def open_new_store(self) -> ObjectStore:
        return JournalledFolderStore(Path(unquote(urlsplit(self.url).path)), Path(self.journal))


def test_nothing_is_exported_or_zipped_for_a_requester_revoked_before_the_run(platform, clinic):
    """The check when the run starts stops it there: the check before delivery would catch the
    revocation too, but only after the clinic's data was read, rendered and zipped."""
    journal = platform.root / "archives-writes.txt"
    journal.touch()
    archives_url = platform.settings.archives_url
    assert archives_url.startswith("file://")  # the folder store, journalled
    platform.resource_overrides["archives"] = JournalledArchivesResource(
        url=archives_url, journal=str(journal)
    )
    request_id = platform.file_request(clinic)
    review_pending(platform.engine)
    revoke(platform, clinic)

    backup = platform.run(request_id, clinic.subscription_id)

    assert not backup.outcome.success and platform.status(request_id) == "failed"
    assert journal.read_text(encoding="utf-8") == ""  # no staging, plan, workbook or zip written
    assert list(platform.archives.list("")) == []
    run_id = backup.outcome.run_id
    started = {
        record.dagster_event.step_key
        for record in platform.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
        if record.dagster_event is not None
    }
    assert started == {"start_backup"}  # no plan, no export, no zip
    outputs = platform.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_OUTPUT)
    assert outputs == []  # no workbook, archive or target reported
    # Never marked running: the audit trail goes from accepted straight to failed.
    assert events(platform, request_id) == [("accepted", "sensor"), ("failed", "run")]
