"""Runs that fail: retried when the cause is transient, and when they fail for good, told once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import select, update

from backup_pipeline import platform as db
from backup_pipeline.datasets import DATASETS
from backup_pipeline.jobs import backup_partitions
from backup_pipeline.operations import execute_request, run_request
from backup_pipeline.platform import tables as t
from backup_pipeline.resources.storage import open_store
from backup_pipeline.rules.request_state import Actor
from backup_pipeline.rules.target import REQUEST_TAG, run_tags
from backup_pipeline.services.failures import (
    RUN_WORKER_GONE,
    TERMINATED_IN_UI,
    fail_request,
    failure_reason,
    run_failure_cause,
)
from backup_pipeline.services.housekeeping import expire_archives
from backup_pipeline.settings import Settings
from backup_pipeline_tests.support.location import (
    backup_canceled_sensor,
    backup_failure_sensor,
    backup_job,
)
from backup_pipeline_tests.support.platform import (
    EVERY_DATABASE,
    LOCAL,
    Backends,
    Clinic,
    Platform,
)
from backup_pipeline_tests.support.sendgrid import SendGridEndpoint, read_outbox, read_sendgrid


@pytest.fixture(params=EVERY_DATABASE)
def backends(request: pytest.FixtureRequest) -> Backends:
    """The platform once on SQLite and once on PostgreSQL, unless a test asks for ON_SQLITE."""
    return request.param


# For what fails in the job or the mail, not in the database: one database is enough.
ON_SQLITE = pytest.mark.parametrize("backends", [LOCAL], ids=["sqlite"])


@pytest.fixture
def clinic(platform: Platform) -> Clinic:
    (seeded,) = platform.seed(patients=6, seed=11)
    return seeded


@pytest.fixture
def fast_retries() -> dg.RetryPolicy:
    """The ops' retry policy as the code location builds it from the environment: conftest.py
    sets BACKUP_RETRY_DELAY_SECONDS to milliseconds, the number of retries is the production one."""
    policy = backup_job.op_retry_policy
    assert policy is not None
    assert policy.max_retries == Settings.from_env({}).op_max_retries
    assert policy.delay is not None and policy.delay < 1
    return policy


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    """A $DAGSTER_HOME of the test's own: what `DagsterInstance.get()` (the CLI's runs) opens."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        yield instance


def events_of(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType) -> list:
    return [
        record.dagster_event
        for record in instance.all_logs(run_id)
        if record.dagster_event and record.dagster_event.event_type == kind
    ]


def personal_data(platform: Platform, clinic: Clinic) -> list[str]:
    """Everything that identifies a patient or a user of the clinic: none of it may reach a
    status_detail, support's alert or the run's logs."""
    p, u = t.patients.c, t.users.c
    sid = clinic.subscription_id
    with platform.engine.connect() as conn:
        patients = conn.execute(
            select(p.first_name, p.last_name, p.curp, p.email, p.phone).where(
                p.subscription_id == sid
            )
        ).all()
        users = conn.execute(select(u.email, u.full_name).where(u.subscription_id == sid)).all()
    return sorted(
        {value for row in [*patients, *users] for value in row if value and len(value) > 3}
    )


def assert_no_personal_data(platform: Platform, clinic: Clinic, text: str) -> None:
    leaked = [value for value in personal_data(platform, clinic) if value in text]
    assert not leaked, f"personal data in {text[:120]!r}..."


def failure_sensor_context(
    instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult, resources: dict
) -> dg.RunStatusSensorContext:
    return dg.build_run_status_sensor_context(
        sensor_name=backup_failure_sensor.name,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
        resources=resources,
    )


def test_a_run_failed_for_good_is_marked_failed_told_once_and_rerun_by_support(
    platform: Platform,
    clinic: Clinic,
    tmp_path: Path,
    fast_retries: dg.RetryPolicy,
    dagster_home: dg.DagsterInstance,
):
    # The archives location is unusable: a file stands where its folder should be (an unmounted
    # volume; on GCS, a bucket that is gone). Every retry fails the same way.
    blocker = tmp_path / "unmounted"
    blocker.write_text("not a folder")
    settings = replace(platform.settings, archives_url=(blocker / "archives").as_uri())
    resources = platform.resources(settings)
    request_id = platform.file_request(clinic)
    instance = dagster_home
    instance.add_dynamic_partitions(backup_partitions.name, [str(request_id)])
    failed = backup_job.execute_in_process(
        instance=instance,
        partition_key=str(request_id),
        tags=run_tags(request_id, clinic.subscription_id),
        resources=resources,
        raise_on_error=False,
    )
    assert not failed.success
    retries = events_of(instance, failed.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert len(retries) >= fast_retries.max_retries  # transient-looking errors were retried
    # Until the failure sensor sees the run, the request is still running.
    assert platform.request(request_id).status == "running"

    backup_failure_sensor(failure_sensor_context(instance, failed, resources))

    row = platform.request(request_id)
    assert row.status == "failed"
    assert row.run_id == failed.run_id
    assert row.finished_at is not None
    assert row.status_detail.startswith("No se pudo generar el respaldo")
    assert "no cuenta para el límite de respaldos" in row.status_detail
    assert_no_personal_data(platform, clinic, row.status_detail)
    sent = read_outbox(platform.outbox)
    (alert,) = [m for m in sent if m.to == settings.support_email]
    (notice,) = [m for m in sent if m.to == platform.email_of(clinic.owner_id)]
    assert len(sent) == 2
    assert str(request_id) in alert.subject and failed.run_id in alert.text
    assert_no_personal_data(platform, clinic, alert.subject + alert.text + alert.html)
    assert notice.subject.startswith("No pudimos generar el respaldo de información")
    assert "no cuenta para su límite" in notice.text
    assert notice.reply_to == settings.support_email

    # The daemon may evaluate the same failure again (a restarted daemon, a second sensor tick).
    backup_failure_sensor(failure_sensor_context(instance, failed, resources))
    assert len(read_outbox(platform.outbox)) == 2
    assert platform.request(request_id) == row

    # Support fixes the cause and re-runs the request (`backup-pipeline run ID`).
    blocker.unlink()
    outcome = run_request(request_id, settings)
    assert outcome.ok
    (rerun,) = outcome.runs
    row = platform.request(request_id)
    assert row.status == "delivered"
    assert row.status_detail is None
    assert row.run_id == rerun.run_id
    assert open_store(settings.archives_url).exists(row.archive_key)
    sent = read_outbox(platform.outbox)
    assert len(sent) == 3
    assert sent[-1].to == platform.email_of(clinic.owner_id)
    assert sent[-1].key == f"backup-{request_id}-delivered"
    runs = instance.get_runs(filters=dg.RunsFilter(tags={REQUEST_TAG: str(request_id)}))
    assert {r.run_id for r in runs} == {failed.run_id, rerun.run_id}


def payloads_with_key(endpoint: SendGridEndpoint, key: str) -> list[int | None]:
    """The status answered to each attempt to send the email with this key."""
    return [
        r.status for r in endpoint.recorded if r.payload.get("custom_args", {}).get("key") == key
    ]


@ON_SQLITE
def test_a_transient_mail_refusal_is_retried_and_the_clinic_gets_one_email(
    platform: Platform,
    clinic: Clinic,
    sendgrid_endpoint: SendGridEndpoint,
    fast_retries: dg.RetryPolicy,
):
    resources = platform.resources(replace(platform.settings, mail_url=sendgrid_endpoint.url))
    request_id = platform.file_request(clinic)
    sendgrid_endpoint.script([429])  # rate limited once, then accepted

    with dg.instance_for_test() as instance:
        outcome = execute_request(instance, resources, request_id, clinic.subscription_id)
        retried = events_of(instance, outcome.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)

    assert outcome.success and outcome.request_status == "delivered"
    assert [e.step_key for e in retried] == ["deliver_backup"]
    assert payloads_with_key(sendgrid_endpoint, f"backup-{request_id}-delivered") == [429, 202]
    (delivered,) = read_sendgrid(sendgrid_endpoint)
    assert delivered.to == platform.email_of(clinic.owner_id)
    accepted = next(r for r in sendgrid_endpoint.recorded if r.status == 202)
    assert platform.request(request_id).email_message_id == accepted.message_id


@ON_SQLITE
def test_a_permanent_mail_refusal_fails_the_run_without_retrying(
    platform: Platform,
    clinic: Clinic,
    sendgrid_endpoint: SendGridEndpoint,
    fast_retries: dg.RetryPolicy,
):
    settings = replace(platform.settings, mail_url=sendgrid_endpoint.url)
    resources = platform.resources(settings)
    request_id = platform.file_request(clinic)
    sendgrid_endpoint.script([400])  # SendGrid refuses the message itself

    with dg.instance_for_test() as instance:
        outcome = execute_request(instance, resources, request_id, clinic.subscription_id)
        retried = events_of(instance, outcome.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
        logs = [repr(record) for record in instance.all_logs(outcome.run_id)]

    assert not outcome.success and outcome.request_status == "failed"
    assert retried == []
    assert payloads_with_key(sendgrid_endpoint, f"backup-{request_id}-delivered") == [400]
    row = platform.request(request_id)
    # The clinic reads what failed in its words; the step's name is support's.
    assert row.status_detail.startswith("No se pudo generar el correo con el enlace")
    assert "deliver_backup" not in row.status_detail
    assert_no_personal_data(platform, clinic, row.status_detail)
    (alert,) = [m for m in read_sendgrid(sendgrid_endpoint) if m.to == settings.support_email]
    assert str(request_id) in alert.subject
    assert "deliver_backup" in alert.text
    # SendGrid's error echoes the recipient; the run's logs, kept for months, must not.
    for text in logs:
        assert platform.email_of(clinic.owner_id) not in text


@ON_SQLITE
def test_a_bad_time_zone_in_the_platform_does_not_stop_the_backup(
    platform: Platform, clinic: Clinic, fast_retries: dg.RetryPolicy
):
    with platform.engine.begin() as conn:
        conn.execute(
            update(t.subscriptions)
            .where(t.subscriptions.c.id == clinic.subscription_id)
            .values(timezone="America/Mexico City")  # a typo the platform let through
        )
    request_id = platform.file_request(clinic)
    with dg.instance_for_test() as instance:
        outcome = execute_request(
            instance,
            platform.resources(),
            request_id,
            clinic.subscription_id,
        )
    assert outcome.success and outcome.request_status == "delivered"
    (email,) = read_outbox(platform.outbox)
    # Shown in the platform's default zone, the one most clinics are in.
    assert "hora central (Ciudad de México)" in email.text
    assert "America/" not in email.text


@ON_SQLITE
def test_the_archive_and_staging_of_a_request_failed_at_delivery_are_deleted_when_it_fails(
    platform: Platform, clinic: Clinic, sendgrid_endpoint: SendGridEndpoint
):
    settings = replace(platform.settings, mail_url=sendgrid_endpoint.url)
    request_id = platform.file_request(clinic)
    sendgrid_endpoint.script([400])
    with dg.instance_for_test() as instance:
        outcome = execute_request(
            instance, platform.resources(settings), request_id, clinic.subscription_id
        )
    assert outcome.request_status == "failed"
    # The zip was made before the email was refused: patient data nobody will download. It is
    # gone with the failure, not at the next sweep or when its link would have expired.
    archives = open_store(settings.archives_url)
    assert list(archives.list("respaldos/")) == []
    assert list(archives.list("staging/")) == []
    after = platform.request(request_id)
    assert after.status == "failed"  # still failed: it never counted and was never delivered
    assert after.archive_key is None and after.link_expires_at is None  # nothing left to show
    # Nothing is left for the hourly expiry either.
    assert expire_archives(platform.engine, archives, now=db.utcnow() + timedelta(days=30)) == 0


def test_a_run_that_dies_after_the_link_was_emailed_counts_as_delivered(
    platform: Platform, clinic: Clinic
):
    request_id = platform.file_request(clinic)
    archives = open_store(platform.settings.archives_url)
    key = f"respaldos/{clinic.subscription_id}/{request_id}/respaldo.zip"
    archives.put_bytes(key, b"PK\x05\x06" + b"\x00" * 18)
    with platform.engine.begin() as conn:
        db.mark_running(conn, request_id, "killed-run")
        db.record_archive(
            conn,
            request_id,
            archive_key=key,
            size=22,
            sha256="0" * 64,
            link_expires_at=db.utcnow() + timedelta(hours=72),
        )
        db.record_email_sent(conn, request_id, sent_at=db.utcnow(), message_id="<m@x>")

    told_requester = fail_request(
        platform.engine,
        platform.resources()["mailer"].get_mailer(),
        request_id=request_id,
        run_id="killed-run",
        step="deliver_backup",
        error_class="RunMonitoringTimeout",
        archives=archives,
    )

    assert told_requester is False
    assert platform.request(request_id).status == "delivered"
    keys = sorted(p.name.split("_", 1)[1] for p in platform.outbox.glob("*.eml"))
    assert keys == [f"backup-{request_id}-failure-alert.eml"]  # support only


@ON_SQLITE
def test_a_misconfigured_files_store_fails_the_backup_instead_of_delivering_it_empty(
    platform: Platform, clinic: Clinic, tmp_path: Path
):
    request_id = platform.file_request(clinic)
    unmounted = replace(platform.settings, files_url=(tmp_path / "not-mounted").as_uri())
    with dg.instance_for_test() as instance:
        outcome = execute_request(
            instance, platform.resources(unmounted), request_id, clinic.subscription_id
        )

    assert not outcome.success
    row = platform.request(request_id)
    assert row.status == "failed" and row.archive_key is None
    assert "archivos adjuntos" in row.status_detail
    assert "assemble_backup" not in row.status_detail and "Failure" not in row.status_detail
    keys = sorted(p.name.split("_", 1)[1] for p in platform.outbox.glob("*.eml"))
    assert keys == [f"backup-{request_id}-failed.eml", f"backup-{request_id}-failure-alert.eml"]


def _cancelled_in_the_ui(instance: dg.DagsterInstance, request_id: int, subscription_id: int):
    """A backup run of the request, terminated from the UI (CANCELED), and its event."""
    run = instance.create_run_for_job(
        job_def=backup_job,
        tags={REQUEST_TAG: str(request_id), **run_tags(request_id, subscription_id)},
    )
    instance.report_run_canceled(run)
    (record,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_CANCELED)
    return instance.get_run_by_id(run.run_id), record.dagster_event


def test_a_run_terminated_in_the_ui_is_recorded_as_supports_cancellation_and_its_objects_go(
    platform: Platform, clinic: Clinic
):
    request_id = platform.file_request(clinic)
    archives = platform.archives
    staged = f"staging/{request_id}/killed-run/pacientes.xlsx"
    archives.put_bytes(staged, b"workbook")
    zip_key = f"respaldos/{clinic.subscription_id}/{request_id}/respaldo.zip"
    archives.put_bytes(zip_key, b"PK")
    other = f"staging/{request_id + 1}/run/pacientes.xlsx"  # another request's: kept
    archives.put_bytes(other, b"workbook")
    with dg.instance_for_test() as instance:
        run, event = _cancelled_in_the_ui(instance, request_id, clinic.subscription_id)
        with platform.engine.begin() as conn:
            db.mark_running(conn, request_id, run.run_id)
        backup_canceled_sensor(
            dg.build_run_status_sensor_context(
                sensor_name=backup_canceled_sensor.name,
                dagster_instance=instance,
                dagster_run=run,
                dagster_event=event,
                resources=platform.resources(),
            )
        )

    assert platform.request(request_id).status == "failed"
    with platform.engine.connect() as conn:
        last = db.events_of(conn, request_id)[-1]
    assert (last.event, last.actor, last.run_id) == ("cancelled", "support", run.run_id)
    assert last.reason == TERMINATED_IN_UI
    assert [info.key for info in archives.list("")] == [other]


def test_a_refused_request_whose_run_was_cancelled_loses_what_the_run_wrote(
    platform: Platform, clinic: Clinic
):
    # Support refused the request while its run had started writing; the refusal cancels the run.
    request_id = platform.file_request(clinic)
    staged = f"staging/{request_id}/run/consultas.xlsx"
    platform.archives.put_bytes(staged, b"workbook")
    with platform.engine.begin() as conn:
        db.refuse_pending(
            conn, request_id, status_detail="Rechazada por soporte.", actor=Actor.support("dup")
        )

    told = fail_request(
        platform.engine,
        platform.resources()["mailer"].get_mailer(),
        request_id=request_id,
        run_id="cancelled-run",
        step=None,
        error_class="RunCanceled",
        archives=platform.archives,
    )

    assert told is False  # already rejected: nobody is told twice
    assert platform.request(request_id).status == "rejected"
    assert list(platform.archives.list("staging/")) == []


@pytest.mark.parametrize(
    ("message", "cause"),
    [
        (f"{RUN_WORKER_GONE} (pid 4242): it was killed or its machine restarted.", "RunWorkerDied"),
        # Dagster's code server, when only the run's process died under it.
        ("Run execution process for 1a2b was terminated by signal 9 (SIGKILL).", "RunWorkerDied"),
        # Dagster's run monitoring.
        ("Exceeded maximum runtime of 43200 seconds.", "RunTimedOut"),
        ("Run timed out due to taking longer than 180 seconds to start.", "RunStartTimedOut"),
        # A message that merely mentions a timeout is not run monitoring's.
        ("Steps failed: the connection timed out.", None),
        ("Execution of run for \"backup_job\" failed. Steps failed: ['deliver_backup'].", None),
    ],
)
def test_a_run_ended_outside_its_steps_names_why_for_support(message: str, cause: str | None):
    assert run_failure_cause(message) == cause


def test_a_run_cancelled_for_outliving_its_maximum_time_is_not_supports_cancellation(
    platform: Platform, clinic: Clinic
):
    request_id = platform.file_request(clinic)
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(
            job_def=backup_job, tags=run_tags(request_id, clinic.subscription_id)
        )
        with platform.engine.begin() as conn:
            db.mark_running(conn, request_id, run.run_id)
        # What Dagster's run monitoring reports when max_runtime_seconds is exceeded.
        instance.report_run_canceling(
            run, message="Canceling due to exceeding maximum runtime of 43200 seconds."
        )
        instance.report_run_canceled(run)
        (record,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_CANCELED)
        backup_canceled_sensor(
            dg.build_run_status_sensor_context(
                sensor_name=backup_canceled_sensor.name,
                dagster_instance=instance,
                dagster_run=instance.get_run_by_id(run.run_id),
                dagster_event=record.dagster_event,
                resources=platform.resources(),
            )
        )

    row = platform.request(request_id)
    assert row.status == "failed"
    assert row.status_detail.startswith("No se pudo generar su respaldo")
    with platform.engine.connect() as conn:
        last = db.events_of(conn, request_id)[-1]
    assert (last.event, last.actor) == ("failed", "run")
    assert "error=RunTimedOut" in (last.detail or "")


@ON_SQLITE
def test_a_failed_backup_names_its_cause_and_the_next_step_where_support_reads_them(
    platform: Platform, clinic: Clinic, tmp_path: Path, dagster_home: dg.DagsterInstance
):
    unmounted = replace(platform.settings, files_url=(tmp_path / "not-mounted").as_uri())
    resources = platform.resources(unmounted)
    request_id = platform.file_request(clinic)
    dagster_home.add_dynamic_partitions(backup_partitions.name, [str(request_id)])
    failed = backup_job.execute_in_process(
        instance=dagster_home,
        partition_key=str(request_id),
        tags=run_tags(request_id, clinic.subscription_id),
        resources=resources,
        raise_on_error=False,
    )

    # The run: the cause's own class and message first (not Dagster's Failure), not retried,
    # and the next step in the failure's metadata.
    (failure,) = failed.get_step_failure_events()
    error = failure.event_specific_data.error
    assert error.cls_name == "StoreRefused"
    assert error.message.startswith(
        "backup_pipeline.storage.base.StoreRefused: the folder store file:///"
    )
    assert "dagster._core" not in error.message
    metadata = failure.event_specific_data.user_failure_data.metadata
    assert metadata["cause"].value == "StoreRefused"
    assert "BACKUP_FILES_URL" in metadata["next_step"].value
    assert "rerun_request_job" in metadata["next_step"].value
    assert events_of(dagster_home, failed.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY) == []

    # The failure sensor's record and support's alert: the same cause and next step.
    backup_failure_sensor(failure_sensor_context(dagster_home, failed, resources))
    with platform.engine.connect() as conn:
        recorded = db.events_of(conn, request_id)[-1]
    assert recorded.event == "failed"
    assert recorded.detail.startswith(
        "step=assemble_backup error=StoreRefused: the folder store file:///"
    )
    assert "Next: check BACKUP_FILES_URL" in recorded.detail
    (alert,) = [m for m in read_outbox(platform.outbox) if m.to == unmounted.support_email]
    assert "error=StoreRefused: the folder store" in alert.text
    assert "error=Failure" not in alert.text
    assert "check BACKUP_FILES_URL" in alert.text and "rerun_request_job" in alert.text
    assert_no_personal_data(platform, clinic, alert.text + recorded.detail)


def test_an_unexpected_errors_message_stays_in_the_run_not_in_the_alert_or_the_audit_trail(
    platform: Platform, clinic: Clinic
):
    # Our own errors' messages are written without patient data; any other error's text (a
    # library's, SQL parameters, a path) may quote a patient's name: support reads its class.
    request_id = platform.file_request(clinic)
    with platform.engine.begin() as conn:
        db.mark_running(conn, request_id, "run-1")
    leaky = "cannot open adjuntos/Pérez López Juan (7)/receta Juan Pérez.pdf"

    told = fail_request(
        platform.engine,
        platform.resources()["mailer"].get_mailer(),
        request_id=request_id,
        run_id="run-1",
        step="assemble_backup",
        error_class="ValueError",
        archives=platform.archives,
        error_message=leaky,
    )

    assert told
    with platform.engine.connect() as conn:
        details = " ".join(event.detail or "" for event in db.events_of(conn, request_id))
    (alert,) = [m for m in read_outbox(platform.outbox) if m.to == platform.settings.support_email]
    for text in (details, alert.text, alert.html):
        assert "error=ValueError" in text
        assert "Pérez" not in text and "receta" not in text
    assert "message is in the run's logs" in alert.text


def test_a_run_support_stopped_is_told_so_in_the_email_as_in_its_status(
    platform: Platform, clinic: Clinic
):
    request_id = platform.file_request(clinic)
    with platform.engine.begin() as conn:
        db.mark_running(conn, request_id, "run-1")

    fail_request(
        platform.engine,
        platform.resources()["mailer"].get_mailer(),
        request_id=request_id,
        run_id="run-1",
        step=None,
        error_class="RunCanceled",
        archives=platform.archives,
    )

    (notice,) = [
        m for m in read_outbox(platform.outbox) if m.to == platform.email_of(clinic.owner_id)
    ]
    assert platform.request(request_id).status_detail.startswith("El equipo de soporte detuvo")
    assert notice.subject.startswith("Se detuvo la generación del respaldo")
    assert "el equipo de soporte detuvo la generación" in notice.text
    assert "trabajando para resolverlo" not in notice.text
    assert "no cuenta para su límite" in notice.text


@pytest.mark.parametrize("dataset", DATASETS, ids=lambda dataset: dataset.name)
def test_a_failed_workbook_is_named_in_its_own_datasets_words(dataset) -> None:
    # The wording lives on the dataset's declaration: a new dataset brings its own.
    detail = failure_reason(f"export_{dataset.name}", "OSError")
    assert f"No se pudo generar el respaldo {dataset.failure_subject} " in detail
    assert "export_" not in detail and "OSError" not in detail
