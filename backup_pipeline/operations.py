"""Runs started by hand (the CLI): submitted to the deployment when a daemon serves the Dagster
instance, else executed in this process; and support's actions on one request."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import redirect_stderr
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse, urlsplit

import dagster as dg

from backup_pipeline import dagster_compat
from backup_pipeline import platform as db
from backup_pipeline.definitions import build_definitions
from backup_pipeline.jobs import BACKUP_JOB_NAME, backup_partitions
from backup_pipeline.platform import migrations
from backup_pipeline.resources import build_resources
from backup_pipeline.rules.archive_names import download_name
from backup_pipeline.rules.request_state import RequestStatus
from backup_pipeline.rules.target import run_tags
from backup_pipeline.services import support_actions
from backup_pipeline.services.delivery import LinkUnavailable
from backup_pipeline.services.failures import handle_failed_run
from backup_pipeline.services.intake import accepted_but_not_started, review_pending
from backup_pipeline.settings import Settings

if TYPE_CHECKING:
    # Imported where a deployment is used: the GraphQL client (gql, graphql-core, requests)
    # takes ~0.1 s to import, which a CLI run without a daemon never needs.
    from dagster_graphql import DagsterGraphQLClient

log = logging.getLogger(__name__)

CODE_LOCATION = "backup_pipeline"  # as workspace.yaml and pyproject's [tool.dagster] name it
# How often the CLI asks the webserver whether a submitted run has finished.
POLL_SECONDS = 2.0

__all__ = [
    "Launch",
    "LinkUnavailable",
    "NotLaunched",
    "demo",
    "execute_request",
    "expire_archive",
    "process_pending",
    "refuse_request",
    "resend_link",
    "run_request",
]


class NotLaunched(Exception):
    """Nothing was launched and no request touched; the message (one line) says why and what to
    do instead."""


@dataclass(frozen=True)
class Launch:
    """How the CLI starts a backup run. `dagster_url`: the deployment's webserver, used when a
    daemon serves the instance; `verbose`: Dagster's DEBUG lines too (every event of the run)
    for a run executed here, instead of its INFO lines."""

    dagster_url: str | None = None  # the CLI's --dagster-url
    verbose: bool = False
    # Told when a run was submitted to the deployment, before the wait for it (the CLI prints it).
    on_submitted: Callable[[str], None] | None = None


@dataclass(frozen=True)
class RunOutcome:
    request_id: int
    run_id: str
    success: bool
    request_status: str | None
    run_status: str = "SUCCESS"  # Dagster's: SUCCESS, FAILURE, CANCELED


@dataclass
class ProcessOutcome:
    runs: list[RunOutcome] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(run.success for run in self.runs)

    def summary(self) -> str:
        lines = [f"{len(self.runs)} run(s); rejected: {self.rejected or 'none'}"]
        for r in self.runs:
            result = "succeeded" if r.success else "FAILED"
            if r.run_status == dg.DagsterRunStatus.CANCELED.value:
                result = "CANCELLED"
            line = f"  request {r.request_id}: run {r.run_id} {result} -> {r.request_status}"
            if not r.success and r.request_status in (RequestStatus.PENDING, RequestStatus.RUNNING):
                line += " (the deployment's failure sensor records it)"
            lines.append(line)
        return "\n".join(lines)


def backup_job(settings: Settings) -> dg.JobDefinition:
    """The code location's backup job, as Dagster would load it with these settings."""
    return build_definitions(settings).resolve_job_def(BACKUP_JOB_NAME)


def console_log_level(verbose: bool, quiet: str = "INFO") -> dict[str, Any]:
    """Run config for a run executed here: every Dagster event is logged at DEBUG (40 lines for
    one backup), so the console shows `quiet` and above unless asked; the run's event log in the
    instance keeps every event either way."""
    level = "DEBUG" if verbose else quiet
    return {"loggers": {"console": {"config": {"log_level": level}}}}


# --- Where a run goes: the deployment (a daemon serves the instance), or this process


def deployment_client(instance: dg.DagsterInstance, launch: Launch) -> DagsterGraphQLClient | None:
    """The deployment's GraphQL client when a daemon serves `instance`'s run queue (its limits,
    launcher and failure sensors then apply, as to the sensor's runs); None: runs go here.

    A daemon without a webserver answering at `launch.dagster_url` raises NotLaunched: running
    here instead would bypass the queue's one-backup-per-clinic limit, and the daemon's sensors
    would handle these runs' failures too."""
    if not dagster_compat.daemon_serves_run_queue(instance):
        return None
    import requests
    from dagster_graphql import DagsterGraphQLClient

    url = (launch.dagster_url or "").rstrip("/")
    try:
        # The GraphQL endpoint the webserver serves (Dagster's documented API), asked the
        # smallest question it answers.
        answer = requests.post(f"{url}/graphql", json={"query": "{ version }"}, timeout=10)
        reachable = answer.ok and "version" in (answer.json().get("data") or {})
    except (requests.RequestException, ValueError):  # an unusable URL is refused alike
        reachable = False
    if not reachable:
        raise NotLaunched(
            f"a Dagster daemon serves {instance.root_directory} but no Dagster webserver answers "
            f"at {url or '(none named)'}: start it (`make dev` starts both) or name it with "
            "--dagster-url"
        )
    parts = urlsplit(url)
    return DagsterGraphQLClient(
        parts.hostname or "127.0.0.1",
        port_number=parts.port,
        use_https=parts.scheme == "https",
        path_prefix=parts.path.rstrip("/"),
    )


def execute_request(
    instance: dg.DagsterInstance,
    resources: dict,
    request_id: int,
    subscription_id: int,
    job: dg.JobDefinition | None = None,
    *,
    launch: Launch | None = None,
    client: DagsterGraphQLClient | None = None,
) -> RunOutcome:
    """Run the backup job for one request and wait for it: submitted through the deployment's
    webserver when a daemon serves `instance` (`client`, from deployment_client), else executed
    in this process, recorded on `instance` with the code location's origin."""
    launch = launch or Launch()
    if client is None:
        client = deployment_client(instance, launch)
    if client is not None:
        run_id = _submit(instance, client, launch, request_id, subscription_id)
        return _outcome_of_submitted(client, resources, request_id, run_id)
    _add_partition(instance, request_id)
    return _in_this_process(instance, resources, request_id, subscription_id, job, launch)


def _add_partition(instance: dg.DagsterInstance, request_id: int) -> None:
    """The request's partition, as the request sensor adds it for the runs it asks for."""
    if not instance.has_dynamic_partition(backup_partitions.name, str(request_id)):
        instance.add_dynamic_partitions(backup_partitions.name, [str(request_id)])


def _in_this_process(
    instance: dg.DagsterInstance,
    resources: dict,
    request_id: int,
    subscription_id: int,
    job: dg.JobDefinition | None,
    launch: Launch,
) -> RunOutcome:
    job = job or backup_job(Settings.from_env())
    result = job.execute_in_process(
        instance=instance,
        partition_key=str(request_id),
        run_config=console_log_level(launch.verbose),
        tags={
            **dagster_compat.code_location_tags(CODE_LOCATION),
            **run_tags(request_id, subscription_id),
        },
        resources=resources,
        raise_on_error=False,
    )
    engine = resources["platform_db"].get_engine()
    if not result.success:
        # No daemon runs the failure sensor for this instance: its decision is taken here.
        handle_failed_run(
            engine,
            resources["mailer"].get_mailer(),
            resources["archives"].get_store(),
            run_id=result.run_id,
            run_tags=result.dagster_run.tags,
            step_failures=result.get_step_failure_events(),
            log=log,
        )
    status = dg.DagsterRunStatus.SUCCESS if result.success else dg.DagsterRunStatus.FAILURE
    return RunOutcome(
        request_id, result.run_id, result.success, _request_status(engine, request_id), status.value
    )


def submit_to_deployment(
    client: DagsterGraphQLClient, request_id: int, subscription_id: int
) -> str:
    """Submit a backup run of the request's partition as the UI's Launchpad does: into the
    instance's run queue (one backup per clinic at a time) and its launcher. Returns the run id."""
    return client.submit_job_execution(
        BACKUP_JOB_NAME,
        repository_location_name=CODE_LOCATION,
        tags={
            **dagster_compat.partition_tags(BACKUP_JOB_NAME, str(request_id)),
            **run_tags(request_id, subscription_id),
        },
    )


def wait_for_run(
    client: DagsterGraphQLClient, run_id: str, poll_seconds: float = POLL_SECONDS
) -> dg.DagsterRunStatus:
    """The run's final status, asked of the webserver until it has one (queued and running runs
    have none yet; the client has no call that waits)."""
    finished = {
        dg.DagsterRunStatus.SUCCESS,
        dg.DagsterRunStatus.FAILURE,
        dg.DagsterRunStatus.CANCELED,
    }
    while (status := client.get_run_status(run_id)) not in finished:
        time.sleep(poll_seconds)
    return status


def _submit(
    instance: dg.DagsterInstance,
    client: DagsterGraphQLClient,
    launch: Launch,
    request_id: int,
    subscription_id: int,
) -> str:
    from dagster_graphql import DagsterGraphQLClientError

    _add_partition(instance, request_id)
    try:
        run_id = submit_to_deployment(client, request_id, subscription_id)
    except DagsterGraphQLClientError as exc:
        raise NotLaunched(
            f"the Dagster webserver did not launch request {request_id}'s run: "
            f"{' '.join(str(exc).split())[:300]}"
        ) from exc
    if launch.on_submitted is not None:
        launch.on_submitted(run_id)
    return run_id


def _outcome_of_submitted(
    client: DagsterGraphQLClient, resources: dict, request_id: int, run_id: str
) -> RunOutcome:
    """Wait for a submitted run. A failure is the deployment's failure sensor's to handle, as
    for the sensor's own runs."""
    status = _wait_or_explain(client, run_id)
    return RunOutcome(
        request_id,
        run_id,
        status == dg.DagsterRunStatus.SUCCESS,
        _request_status(resources["platform_db"].get_engine(), request_id),
        status.value,
    )


def _wait_or_explain(client: DagsterGraphQLClient, run_id: str) -> dg.DagsterRunStatus:
    from dagster_graphql import DagsterGraphQLClientError

    try:
        return wait_for_run(client, run_id)
    except DagsterGraphQLClientError as exc:
        raise NotLaunched(
            f"run {run_id} was submitted, but the Dagster webserver stopped answering while the "
            f"CLI waited for it ({type(exc).__name__}); the deployment runs it: see its page"
        ) from exc


def _request_status(engine: Any, request_id: int) -> str | None:
    with engine.connect() as conn:
        request = db.get_request(conn, request_id)
    return request.status if request else None


# --- What the CLI runs


def process_pending(
    limit: int | None = None, settings: Settings | None = None, launch: Launch | None = None
) -> ProcessOutcome:
    """One evaluation of the request sensor's logic, then each run it asked for."""
    settings = settings or Settings.from_env()
    launch = launch or Launch()
    resources = build_resources(settings)
    engine = resources["platform_db"].get_engine()
    migrations.require_current(engine)
    instance = dg.DagsterInstance.get()
    # Before any request is reviewed: a deployment that cannot take the runs leaves them alone.
    client = deployment_client(instance, launch)
    job = backup_job(settings)
    intake = review_pending(engine, limit=limit or settings.sensor_batch)
    # As the sensor does: accepted earlier but never started, and re-runs support asked for;
    # but where a daemon serves the queue, its sensor launches those (under their run keys).
    reissued = [] if client is not None else accepted_but_not_started(engine)
    to_run = intake.accepted + [a for a in reissued if a not in intake.accepted]
    outcome = ProcessOutcome(rejected=dict(intake.rejected))
    if client is not None:
        # Every run into the queue first, so that the deployment runs them side by side as its
        # limits allow; then wait for each.
        submitted = [
            (a.id, _submit(instance, client, launch, a.id, a.subscription_id)) for a in to_run
        ]
        outcome.runs = [
            _outcome_of_submitted(client, resources, request_id, run_id)
            for request_id, run_id in submitted
        ]
        return outcome
    for accepted in to_run:
        outcome.runs.append(
            execute_request(
                instance, resources, accepted.id, accepted.subscription_id, job, launch=launch
            )
        )
    return outcome


# What support does instead of re-running a request that is done with.
_INSTEAD = {
    RequestStatus.DELIVERED: "to send its link again use `backup-pipeline resend-link`",
    RequestStatus.EXPIRED: "its archive is deleted; the clinic files a new backup request",
    RequestStatus.REJECTED: "it never counted; the clinic files a new backup request",
}


def run_request(
    request_id: int,
    settings: Settings | None = None,
    *,
    reason: str = "re-run with `backup-pipeline run`",
    override_quota: bool = False,
    override_reason: str = "",
    launch: Launch | None = None,
) -> ProcessOutcome:
    """Run the backup of one request: a pending or running one (a run that was killed) as it
    is; a failed one first goes back to the queue as support's re-run job sends it (quota
    re-checked, the reason in the audit trail). A delivered, expired or rejected request is
    refused (NotLaunched) before anything is launched."""
    settings = settings or Settings.from_env()
    launch = launch or Launch()
    resources = build_resources(settings)
    engine = resources["platform_db"].get_engine()
    migrations.require_current(engine)
    with engine.connect() as conn:
        request = db.get_request(conn, request_id)
    if request is None:
        raise NotLaunched(f"backup request {request_id} does not exist")
    if request.status in _INSTEAD:
        raise NotLaunched(
            f"request {request_id} is {request.status}; a new run would not change it "
            f"({_INSTEAD[RequestStatus(request.status)]})"
        )
    instance = dg.DagsterInstance.get()
    client = deployment_client(instance, launch)
    if request.status == RequestStatus.FAILED:
        support_actions.rerun_failed(
            engine,
            request_id=request_id,
            reason=reason,
            override_quota=override_quota,
            override_reason=override_reason,
            launched_by_sensor=False,
        )
    return ProcessOutcome(
        runs=[
            execute_request(
                instance,
                resources,
                request_id,
                request.subscription_id,
                backup_job(settings),
                launch=launch,
                client=client,
            )
        ]
    )


# --- Support's actions: runs of support's jobs, launched as support launches them in the UI


@dataclass(frozen=True)
class SupportRun:
    run_id: str
    metadata: dict[str, Any]  # what the job's op reported (its output metadata)


def run_support_job(
    job_name: str,
    config: Mapping[str, Any],
    settings: Settings | None = None,
    launch: Launch | None = None,
) -> SupportRun:
    """Run support's job `job_name` with its op's `config` and wait for it: submitted to the
    deployment when a daemon serves $DAGSTER_HOME (its storage, mail and credentials act), else
    executed in this process. Either way it is a run of the code location whose id the request's
    audit trail keeps. A refusal (the job did nothing and said why in its metadata) or a failed
    run raises SupportActionRefused with its one line."""
    settings = settings or Settings.from_env()
    launch = launch or Launch()
    job = build_definitions(settings).resolve_job_def(job_name)
    # Support jobs take their Launchpad's fields at the root (a job-level config mapping).
    run_config = dict(config)
    instance = dg.DagsterInstance.get()
    client = deployment_client(instance, launch)
    if client is None:
        # The outcome is one line: Dagster's console (its handler writes to the stderr of the
        # moment it is made) stays quiet unless asked; every event is in the run, in the UI.
        quiet = contextlib.nullcontext() if launch.verbose else redirect_stderr(io.StringIO())
        with quiet:
            result = job.execute_in_process(
                run_config=run_config,
                instance=instance,
                tags=dagster_compat.code_location_tags(CODE_LOCATION),
                raise_on_error=False,
            )
        run_id, success, events = result.run_id, result.success, list(result.all_events)
    else:
        from dagster_graphql import DagsterGraphQLClientError

        try:
            run_id = client.submit_job_execution(
                job_name, repository_location_name=CODE_LOCATION, run_config=run_config
            )
        except DagsterGraphQLClientError as exc:
            raise NotLaunched(
                f"the Dagster webserver did not launch {job_name}: "
                f"{' '.join(str(exc).split())[:300]}"
            ) from exc
        if launch.on_submitted is not None:
            launch.on_submitted(run_id)
        status = _wait_or_explain(client, run_id)
        if status == dg.DagsterRunStatus.CANCELED:
            raise NotLaunched(f"{job_name} run {run_id} was cancelled before it acted")
        success = status == dg.DagsterRunStatus.SUCCESS
        records = instance.get_records_for_run(run_id).records
        events = [
            r.event_log_entry.dagster_event for r in records if r.event_log_entry.dagster_event
        ]
    if not success:
        raise support_actions.SupportActionRefused(
            _failure_line(events) or f"{job_name} run {run_id} failed; its page in the UI says why"
        )
    metadata = _output_metadata(events)
    if metadata.get("outcome") == "refused":
        # The job did nothing and said why (support_jobs: such a run ends without failure).
        raise support_actions.SupportActionRefused(str(metadata.get("refused", "")))
    return SupportRun(run_id, metadata)


def _failure_line(events: Sequence[dg.DagsterEvent]) -> str | None:
    """What a failed step said: a refusal's own message (dg.Failure's description), else the
    error's first line."""
    for event in events:
        if event.event_type != dg.DagsterEventType.STEP_FAILURE:
            continue
        data = event.event_specific_data
        user = getattr(data, "user_failure_data", None)
        if user is not None and user.description:
            return " ".join(user.description.split())
        error = getattr(data, "error", None)
        if error is not None:
            return f"{error.cls_name}: {' '.join(error.message.split())}"
    return None


def _output_metadata(events: Sequence[dg.DagsterEvent]) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for event in events:
        if event.event_type == dg.DagsterEventType.STEP_OUTPUT:
            output = event.step_output_data
            metadata.update({name: value.value for name, value in output.metadata.items()})
    return metadata


def resend_link(
    request_id: int, reason: str, settings: Settings | None = None, launch: Launch | None = None
) -> datetime:
    """resend_link_job: a fresh signed link and email for a delivered request whose archive
    still exists. Returns the new expiry (UTC)."""
    run = run_support_job(
        "resend_link_job", {"request_id": request_id, "reason": reason}, settings, launch
    )
    return datetime.fromisoformat(str(run.metadata["link_expires_at"]).removesuffix("Z"))


def refuse_request(
    request_id: int,
    reason: str,
    message_to_clinic: str = "",
    settings: Settings | None = None,
    launch: Launch | None = None,
) -> SupportRun:
    """refuse_request_job: a pending request is rejected."""
    config = {"request_id": request_id, "reason": reason, "message_to_clinic": message_to_clinic}
    return run_support_job("refuse_request_job", config, settings, launch)


def expire_archive(
    request_id: int, reason: str, settings: Settings | None = None, launch: Launch | None = None
) -> bool:
    """expire_archive_job: a delivered request's archive is deleted now. Returns whether an
    archive was there to delete."""
    run = run_support_job(
        "expire_archive_job", {"request_id": request_id, "reason": reason}, settings, launch
    )
    return bool(run.metadata.get("archive_deleted"))


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


def demo(settings: Settings | None = None, launch: Launch | None = None) -> DemoResult:
    """Seed a small clinic, file a request as its owner, process it; everything under ./var."""
    from backup_pipeline.platform import create_schema
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
    outcome = process_pending(settings=settings, launch=launch)
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
