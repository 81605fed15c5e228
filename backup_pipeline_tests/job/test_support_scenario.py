"""Support's Launchpad and an afternoon of support work on a real instance: red only where a
backup failed, support jobs that ask only for what support fills in, refusals in one line."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from backup_pipeline.jobs import BACKUP_JOB_NAME
from backup_pipeline.rules.target import REQUEST_TAG
from backup_pipeline.support_jobs import SUPPORT_JOBS
from backup_pipeline_tests.support.location import backup_failure_sensor, code_location
from backup_pipeline_tests.support.platform import Clinic, Platform
from backup_pipeline_tests.support.webserver import dagster_webserver

REPO = Path(__file__).resolve().parents[2]
# What support fills in on a support job's Launchpad, and nothing else.
OURS = {"platform_db", "files", "archives", "mailer", "policy"}  # resources.build_resources
SUPPORT_FIELDS = {"request_id", "reason", "override_quota", "override_reason", "message_to_clinic"}


def test_no_support_job_run_config_exposes_a_resource():
    defs = code_location()
    for support_job in SUPPORT_JOBS:
        job = defs.resolve_job_def(support_job.name)
        fields = job.run_config_schema.config_type.fields
        assert "resources" not in fields, job.name
        assert {"request_id", "reason"} <= set(fields) <= SUPPORT_FIELDS, job.name
        assert fields["request_id"].is_required and fields["reason"].is_required
        assert all(field.description for field in fields.values()), job.name
        # And the Launchpad cannot add one: config beyond the fields is refused.
        extra = {"request_id": 1, "reason": "lost email", "resources": {"archives": {}}}
        with pytest.raises(dg.DagsterInvalidConfigError, match="resources"):
            dg.validate_run_config(job, extra)


def test_no_run_launched_from_the_ui_can_redirect_storage_mail_or_the_database():
    # The backup job's Launchpad too (a re-execution, a partition launched by hand): the
    # settings choose the archives, the mail and the database, never a run's config.
    support_jobs = {job.name for job in SUPPORT_JOBS}
    for job in code_location().resolve_all_job_defs():
        launched = {"request_id": 1, "reason": "lost email"} if job.name in support_jobs else {}
        dg.validate_run_config(job, launched)  # what the Launchpad launches as it opens
        for key in OURS:
            redirected = {**launched, "resources": {key: {"config": {"url": "file:///elsewhere"}}}}
            with pytest.raises(dg.DagsterInvalidConfigError):
                dg.validate_run_config(job, redirected)


@pytest.mark.parametrize(
    ("job_name", "config", "field"),
    [
        ("refuse_request_job", {"request_id": 5, "reason": ""}, "reason"),
        ("resend_link_job", {"request_id": 5, "reason": "   "}, "reason"),
        (
            "rerun_request_job",
            {"request_id": 5, "reason": "outage", "override_quota": True, "override_reason": " "},
            "override_reason",
        ),
    ],
)
def test_a_blank_reason_is_refused_at_launch_naming_the_field(
    platform: Platform, job_name: str, config: dict[str, Any], field: str
):
    job = code_location(platform.settings).resolve_job_def(job_name)
    with dg.instance_for_test() as instance:
        with pytest.raises(dg.DagsterInvalidConfigError) as refused:
            job.execute_in_process(
                run_config=config, instance=instance, resources=platform.resources()
            )
        assert instance.get_runs() == []  # refused before the run existed
    message = str(refused.value)
    assert message.startswith(f"{field}: ") and "\n" not in message


# --- The afternoon, on a real instance and a real webserver ---------------------------------


@dataclass
class Deployment:
    """The instance of `make dev` (this repository's dagster.yaml: a run queue) with the
    webserver the UI is served by; no daemon, so a launched backup run waits in the queue."""

    instance: dg.DagsterInstance
    ui: DagsterGraphQLClient


@pytest.fixture
def deployment(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dagster_webserver({**platform.env, "DAGSTER_HOME": str(home)}) as url:
        parts = urlsplit(url)
        ui = DagsterGraphQLClient(parts.hostname, port_number=parts.port, timeout=300)
        with dg.DagsterInstance.get() as instance:
            yield Deployment(instance, ui)


def sensor_tick(deployment: Deployment, platform: Platform) -> list[dg.RunRequest]:
    """One tick of the request sensor, and what the daemon does with its result first."""
    tick = code_location(platform.settings).resolve_sensor_def("backup_request_sensor")
    result = tick(
        dg.build_sensor_context(instance=deployment.instance, resources=platform.resources())
    )
    for add in result.dynamic_partitions_requests or []:
        deployment.instance.add_dynamic_partitions(
            add.partitions_def_name, list(add.partition_keys)
        )
    return list(result.run_requests or [])


def run_backup(
    deployment: Deployment,
    platform: Platform,
    run_request: dg.RunRequest,
    resources: dict | None = None,
) -> dg.ExecuteInProcessResult:
    """The run the queue starts for a run request (in this process: no daemon serves it)."""
    return (
        code_location(platform.settings)
        .resolve_job_def(BACKUP_JOB_NAME)
        .execute_in_process(
            instance=deployment.instance,
            partition_key=run_request.partition_key,
            tags=run_request.tags,
            resources=resources or platform.resources(),
            raise_on_error=False,
        )
    )


def support(
    deployment: Deployment, platform: Platform, job_name: str, **config: Any
) -> dg.ExecuteInProcessResult:
    """A support job launched with the config of its Launchpad, run by the queue."""
    return (
        code_location(platform.settings)
        .resolve_job_def(job_name)
        .execute_in_process(
            run_config=config,
            instance=deployment.instance,
            resources=platform.resources(),
            raise_on_error=False,
        )
    )


def backup_runs(instance: dg.DagsterInstance, request_id: int) -> list[dg.DagsterRun]:
    """The request's backup runs, newest first (what its partition's status is read from)."""
    return list(
        instance.get_runs(
            filters=dg.RunsFilter(job_name=BACKUP_JOB_NAME, tags={REQUEST_TAG: str(request_id)})
        )
    )


def logged(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(record.user_message for record in instance.all_logs(run_id))


def failure_of(result: dg.ExecuteInProcessResult) -> Any:
    """The error of the run's one failed step."""
    (failure,) = result.get_step_failure_events()
    return failure.event_specific_data.error


def test_after_an_afternoon_of_support_the_only_red_backup_run_is_the_real_failure(
    platform: Platform, deployment: Deployment, tmp_path: Path
):
    delivered, refused, broken = platform.seed(patients=4, subscriptions=3, seed=5)
    clinic_of: dict[int, Clinic] = {}
    for clinic in (delivered, refused, broken):
        clinic_of[platform.file_request(clinic)] = clinic
    delivered_id, refused_id, broken_id = clinic_of
    instance = deployment.instance

    # The sensor accepts all three; the queue starts two of them (the third one waits).
    run_requests = {int(r.partition_key): r for r in sensor_tick(deployment, platform)}
    assert set(run_requests) == set(clinic_of)
    assert run_backup(deployment, platform, run_requests[delivered_id]).success
    assert platform.status(delivered_id) == "delivered"
    # The files store is not mounted: a real failure, of ours (it does not count).
    unmounted = platform.resources(
        replace(platform.settings, files_url=(tmp_path / "not-mounted").as_uri())
    )
    real_failure = run_backup(deployment, platform, run_requests[broken_id], unmounted)
    assert not real_failure.success
    backup_failure_sensor(
        dg.build_run_status_sensor_context(
            sensor_name=backup_failure_sensor.name,
            dagster_instance=instance,
            dagster_run=real_failure.dagster_run,
            dagster_event=real_failure.get_run_failure_event(),
            resources=platform.resources(),
        )
    )
    assert platform.status(broken_id) == "failed"
    # The third request's run is launched as the UI launches it, and waits in the queue.
    waiting_run_id = deployment.ui.submit_job_execution(
        BACKUP_JOB_NAME, run_config={}, tags=run_requests[refused_id].tags
    )
    assert instance.get_run_by_id(waiting_run_id).status == dg.DagsterRunStatus.QUEUED

    # Support re-executes the delivered request's run: nothing to do, and it says why.
    again = run_backup(deployment, platform, run_requests[delivered_id])
    assert again.success
    assert (
        f"request {delivered_id} is already delivered: nothing to do; "
        "resend_link_job sends a new link"
    ) in logged(instance, again.run_id)
    assert platform.status(delivered_id) == "delivered" and len(platform.archives_made()) == 1

    # Support refuses the waiting request: its queued run is cancelled with it.
    refusal = support(
        deployment, platform, "refuse_request_job", request_id=refused_id, reason="clinic closed"
    )
    assert refusal.success
    assert platform.status(refused_id) == "rejected"
    assert instance.get_run_by_id(waiting_run_id).status == dg.DagsterRunStatus.CANCELED
    # A run of it that starts all the same (launched again from the UI) ends at once, green.
    late = run_backup(deployment, platform, run_requests[refused_id])
    assert late.success and "was refused" in logged(instance, late.run_id)
    assert platform.status(refused_id) == "rejected"

    # "Scaffold missing config" fills in an empty reason: refused at launch, naming the field.
    runs_before = len(instance.get_runs())
    for job_name, config, field in [
        ("refuse_request_job", {"request_id": refused_id, "reason": ""}, "reason"),
        (
            "rerun_request_job",
            {
                "request_id": broken_id,
                "reason": "fixed the bucket",
                "override_quota": True,
                "override_reason": "  ",
            },
            "override_reason",
        ),
    ]:
        with pytest.raises(DagsterGraphQLClientError) as launch:
            deployment.ui.submit_job_execution(job_name, run_config=config)
        assert f"{field}: say why in a few words" in str(launch.value)
    assert len(instance.get_runs()) == runs_before  # no run was made of either

    # A support job that does not apply says so in one line naming the state, and is not red.
    wrong_state = support(
        deployment, platform, "expire_archive_job", request_id=refused_id, reason="clinic asked"
    )
    assert wrong_state.success
    assert instance.get_run_by_id(wrong_state.run_id).tags["backup/support_outcome"] == "refused"
    assert (
        f"refused, nothing changed: request {refused_id} is rejected: only a delivered request "
        "has an archive to expire"
    ) in logged(instance, wrong_state.run_id)
    assert support(
        deployment, platform, "resend_link_job", request_id=delivered_id, reason="lost email"
    ).success

    # The dashboard: the one failed run, of any job, is the real failure; delivered stays green.
    failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert [run.run_id for run in failed] == [real_failure.run_id]
    assert backup_runs(instance, delivered_id)[0].status == dg.DagsterRunStatus.SUCCESS
    assert backup_runs(instance, refused_id)[0].status == dg.DagsterRunStatus.SUCCESS
    assert backup_runs(instance, broken_id)[0].status == dg.DagsterRunStatus.FAILURE
    # The real failure names its cause and the next step, where support reads them.
    assert failure_of(real_failure).cls_name == "StoreRefused"
    (alert,) = [m for m in platform.sent() if "failed for good" in m.text]
    assert f"Request {broken_id} failed" in alert.subject or str(broken_id) in alert.subject
    assert "error=StoreRefused: the folder store" in alert.text
    assert "BACKUP_FILES_URL" in alert.text
    assert "rerun_request_job" in alert.text
