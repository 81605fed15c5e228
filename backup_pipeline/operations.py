"""Runs started by hand (the CLI): process pending requests, re-run one, re-send a link, the demo."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

import dagster as dg

from backup_pipeline import migrations, support_actions
from backup_pipeline.archive.names import download_name
from backup_pipeline.definitions import build_definitions
from backup_pipeline.delivery import LinkUnavailable
from backup_pipeline.failures import fail_request, failed_step
from backup_pipeline.intake import accepted_but_not_started, review_pending
from backup_pipeline.jobs import BACKUP_JOB_NAME, backup_partitions
from backup_pipeline.request_state import RequestStatus
from backup_pipeline.resources import build_resources
from backup_pipeline.resources import platform_db as db
from backup_pipeline.settings import Settings
from backup_pipeline.target import run_tags

CODE_LOCATION = "backup_pipeline"  # as workspace.yaml and pyproject's [tool.dagster] name it

__all__ = [
    "LinkUnavailable",
    "demo",
    "execute_request",
    "expire_archive",
    "process_pending",
    "refuse_request",
    "resend_link",
    "run_request",
]


@dataclass(frozen=True)
class RunOutcome:
    request_id: int
    run_id: str
    success: bool
    request_status: str | None


@dataclass
class ProcessOutcome:
    runs: list[RunOutcome] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(run.success for run in self.runs)

    def summary(self) -> str:
        lines = [f"{len(self.runs)} run(s); rejected: {self.rejected or 'none'}"]
        lines += [
            f"  request {r.request_id}: run {r.run_id} "
            f"{'succeeded' if r.success else 'FAILED'} -> {r.request_status}"
            for r in self.runs
        ]
        return "\n".join(lines)


def backup_job(settings: Settings) -> dg.JobDefinition:
    """The code location's backup job, as Dagster would load it with these settings."""
    return build_definitions(settings).resolve_job_def(BACKUP_JOB_NAME)


def origin_tags(job_name: str = BACKUP_JOB_NAME) -> dict[str, str]:
    """The tags Dagster gives a run it launches from this code location. The UI's partition
    status ('dagster/partition_set' with the hidden repository label) and its per-location run
    filters look for them, so an in-process run of the CLI carries them too."""
    return {
        ".dagster/repository": f"__repository__@{CODE_LOCATION}",
        "dagster/code_location": CODE_LOCATION,
        "dagster/partition_set": f"{job_name}_partition_set",
    }


def execute_request(
    instance: dg.DagsterInstance,
    resources: dict,
    request_id: int,
    subscription_id: int,
    job: dg.JobDefinition | None = None,
) -> RunOutcome:
    """Run the backup job for one request: through the instance's run queue when a daemon
    serves it (the queue's limits and the configured launcher apply, as to the sensor's runs),
    else in this process, recorded on `instance` with the code location's origin tags."""
    key = str(request_id)
    if not instance.has_dynamic_partition(backup_partitions.name, key):
        instance.add_dynamic_partitions(backup_partitions.name, [key])
    if queue_is_served(instance):
        return _through_the_queue(instance, resources, request_id, subscription_id)
    job = job or backup_job(Settings.from_env())
    result = job.execute_in_process(
        instance=instance,
        partition_key=key,
        tags={**origin_tags(job.name), **run_tags(request_id, subscription_id)},
        resources=resources,
        raise_on_error=False,
    )
    engine = resources["platform_db"].get_engine()
    if not result.success:
        # No daemon watches an in-process run: do what the run-failure sensor would.
        step, error_class = failed_step(result.get_step_failure_events())
        fail_request(
            engine,
            resources["mailer"],
            request_id=request_id,
            run_id=result.run_id,
            step=step,
            error_class=error_class,
            archives=resources["archives"].get_store(),
        )
    with engine.connect() as conn:
        request = db.get_request(conn, request_id)
    return RunOutcome(
        request_id, result.run_id, result.success, request.status if request else None
    )


def queue_is_served(instance: dg.DagsterInstance) -> bool:
    """A daemon dequeues this instance's runs (`dagster dev`, a deployment): the CLI submits."""
    statuses = instance.get_daemon_statuses(["QUEUED_RUN_COORDINATOR"])
    return any(status.healthy for status in statuses.values())


def _through_the_queue(
    instance: dg.DagsterInstance, resources: dict, request_id: int, subscription_id: int
) -> RunOutcome:
    """Submit the run to the queue, then wait for it to finish. A failure is handled by the
    run-failure sensor, as for the sensor's runs."""
    run_id = submit_to_queue(request_id, subscription_id)
    while True:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            break
        time.sleep(2)
    with resources["platform_db"].get_engine().connect() as conn:
        request = db.get_request(conn, request_id)
    success = run.status == dg.DagsterRunStatus.SUCCESS
    return RunOutcome(request_id, run_id, success, request.status if request else None)


def submit_to_queue(request_id: int, subscription_id: int) -> str:
    """Submit a backup run as Dagster's own `dagster job launch` does: from the code location
    (its origin), into the instance's run queue with its tag limits (one backup per clinic) and
    launcher. Returns the run id."""
    run_id = str(uuid.uuid4())
    workspace = Path("workspace.yaml")
    target = (
        ["-w", str(workspace)]
        if workspace.exists()
        else ["-m", "backup_pipeline.definitions", "-l", CODE_LOCATION]
    )
    tags = {"dagster/partition": str(request_id), **run_tags(request_id, subscription_id)}
    subprocess.run(  # noqa: S603 (our own arguments, no shell)
        [
            sys.executable,
            "-m",
            "dagster",
            "job",
            "launch",
            *target,
            "-j",
            BACKUP_JOB_NAME,
            "--run-id",
            run_id,
            "--tags",
            json.dumps(tags),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return run_id


def process_pending(limit: int | None = None, settings: Settings | None = None) -> ProcessOutcome:
    """One evaluation of the request sensor's logic, then each run it asked for, in this process."""
    settings = settings or Settings.from_env()
    resources = build_resources(settings)
    job = backup_job(settings)
    migrations.require_current(resources["platform_db"].get_engine())
    instance = dg.DagsterInstance.get()
    intake = review_pending(
        resources["platform_db"].get_engine(), limit=limit or settings.sensor_batch
    )
    # As the sensor does: accepted earlier but never started, and re-runs support asked for;
    # but where a daemon serves the queue, its sensor launches those (under their run keys).
    reissued = (
        []
        if queue_is_served(instance)
        else accepted_but_not_started(resources["platform_db"].get_engine())
    )
    outcome = ProcessOutcome(rejected=dict(intake.rejected))
    for accepted in intake.accepted + [a for a in reissued if a not in intake.accepted]:
        outcome.runs.append(
            execute_request(instance, resources, accepted.id, accepted.subscription_id, job)
        )
    return outcome


def run_request(
    request_id: int,
    settings: Settings | None = None,
    *,
    reason: str = "re-run with `backup-pipeline run`",
    override_quota: bool = False,
    override_reason: str = "",
) -> ProcessOutcome:
    """Run the backup of one request in this process: a pending or running one (a run that was
    killed) as it is; a failed one first goes back to the queue as support's re-run job sends it
    (quota re-checked, the reason in the audit trail)."""
    settings = settings or Settings.from_env()
    resources = build_resources(settings)
    engine = resources["platform_db"].get_engine()
    migrations.require_current(engine)
    with engine.connect() as conn:
        request = db.get_request(conn, request_id)
    if request is None:
        raise SystemExit(f"error: backup request {request_id} does not exist")
    if request.status == RequestStatus.FAILED:
        support_actions.rerun_failed(
            engine,
            request_id=request_id,
            reason=reason,
            override_quota=override_quota,
            override_reason=override_reason,
            launched_by_sensor=False,
        )
    instance = dg.DagsterInstance.get()
    return ProcessOutcome(
        runs=[
            execute_request(
                instance, resources, request_id, request.subscription_id, backup_job(settings)
            )
        ]
    )


def resend_link(request_id: int, reason: str, settings: Settings | None = None) -> datetime:
    """A fresh signed link and email for a delivered request whose archive still exists, as
    support's resend_link_job does. Returns the new expiry (UTC)."""
    resources = build_resources(settings or Settings.from_env())
    return support_actions.resend_link(
        resources["platform_db"].get_engine(),
        resources["archives"].get_store(),
        resources["mailer"],
        request_id=request_id,
        reason=reason,
        link_ttl=resources["policy"].link_ttl,
    )


def refuse_request(
    request_id: int, reason: str, message_to_clinic: str = "", settings: Settings | None = None
) -> str:
    """Refuse a pending request, as support's refuse_request_job does."""
    resources = build_resources(settings or Settings.from_env())
    return support_actions.refuse_pending(
        resources["platform_db"].get_engine(),
        request_id=request_id,
        reason=reason,
        message_to_clinic=message_to_clinic,
    )


def expire_archive(request_id: int, reason: str, settings: Settings | None = None) -> bool:
    """Delete a delivered request's archive now, as support's expire_archive_job does."""
    resources = build_resources(settings or Settings.from_env())
    return support_actions.expire_now(
        resources["platform_db"].get_engine(),
        resources["archives"].get_store(),
        request_id=request_id,
        reason=reason,
    )


@dataclass
class DemoResult:
    outcome: ProcessOutcome
    archive_path: str | None
    link: str | None
    eml_path: str | None

    @property
    def ok(self) -> bool:
        return self.outcome.ok and bool(self.outcome.runs) and self.archive_path is not None

    def summary(self) -> str:
        return "\n".join(
            [
                self.outcome.summary(),
                f"archive: {self.archive_path}",
                f"link:    {self.link}",
                f"email:   {self.eml_path}",
            ]
        )


def _local_path(url: str, key: str | None = None) -> Path | None:
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return None
    root = Path(unquote(parsed.path))
    return root / key if key else root


def demo(settings: Settings | None = None) -> DemoResult:
    """Seed a small clinic, file a request as its owner, process it; everything under ./var."""
    from backup_pipeline.resources.platform_db import create_schema
    from backup_pipeline.synthetic import file_backup_request, seed_platform

    settings = settings or Settings.from_env()
    resources = build_resources(settings)
    engine = resources["platform_db"].get_engine()
    create_schema(engine)
    summary = seed_platform(
        engine,
        resources["files"].get_store(),
        profile="small",
        first_subscription_id=db.next_subscription_id(engine),
    )
    subscription_id = summary.subscription_ids[0]
    request_id = file_backup_request(
        engine, subscription_id=subscription_id, user_id=summary.user_ids[subscription_id][0]
    )
    outcome = process_pending(settings=settings)
    with engine.connect() as conn:
        request = db.get_request(conn, request_id)
    archive_path = link = eml_path = None
    if request is not None and request.archive_key:
        local = _local_path(settings.archives_url, request.archive_key)
        archive_path = str(local) if local else f"{settings.archives_url}/{request.archive_key}"
        link = (
            resources["archives"]
            .get_store()
            .signed_url(
                request.archive_key,
                resources["policy"].link_ttl,
                download_name(request.archive_key),
            )
        )
    outbox = _local_path(settings.mail_url)
    if outbox is not None and outbox.exists():
        emls = sorted(outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime)
        eml_path = str(emls[-1]) if emls else None
    return DemoResult(outcome, archive_path, link, eml_path)
