"""Runs whose process died, on an instance whose runs are local processes: found and failed.

Dagster's run monitoring ends a run that never starts, will not cancel, or outlives its maximum
time; it tells that a started run's worker died only through the run launcher, and the
DefaultRunLauncher (the embedded instance's, `dagster dev`) cannot say. Its code server notices
a run process that died under it, but when the whole machine goes (a reboot, the OOM killer, a
killed `make dev`) the code server goes too, and the runs stay STARTED with no process behind
them: their requests stay `running`, and they hold their run-queue slots until someone
terminates them by hand. This module finds such runs from the process id Dagster records when a
run's steps start, and fails them; the failure sensor then handles the request like any failed
run. On Kubernetes (deploy/dagster.yaml) run monitoring asks the launcher, and nothing here
runs.

Dagster's public API has no call that fails a run; `DagsterInstance.report_run_failed` is the
one its own run monitoring and code server use (a public instance method, not a private name).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg
import psutil

from backup_pipeline.services.failures import RUN_WORKER_GONE

log = logging.getLogger(__name__)

# The run worker records its process among its first few engine events.
_EARLY_ENGINE_EVENTS = 20
# A process that started this long after the run recorded its id is another one with a reused id.
_CLOCK_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class RunWorker:
    run_id: str
    pid: int
    recorded_at: float  # when the run recorded it, epoch seconds


def run_worker(instance: dg.DagsterInstance, run_id: str) -> RunWorker | None:
    """The process executing the run, as the run first recorded it: the code server's "Started
    process for run (pid: …)", or, for a run in the CLI's own process, the executor's "Executing
    steps in process (pid: …)". The first, because later events may name a step's own process,
    which ends before the run does. None when the run has not recorded one yet."""
    # Among a run's first engine events; reading only those keeps each tick cheap.
    early = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=_EARLY_ENGINE_EVENTS
    )
    for record in early.records:
        entry = record.event_log_entry
        event = entry.dagster_event
        metadata = getattr(event.event_specific_data, "metadata", None) if event else None
        pid = metadata.get("pid") if metadata else None
        if pid is not None and str(pid.value).isdigit():
            return RunWorker(run_id, int(pid.value), entry.timestamp)
    return None


def is_alive(worker: RunWorker) -> bool:
    """Whether the run's process still runs: the same id, started no later than the run recorded
    it (else the id was reused, after a reboot say), and not a zombie waiting to be reaped."""
    try:
        process = psutil.Process(worker.pid)
        if process.create_time() > worker.recorded_at + _CLOCK_SLACK_SECONDS:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # someone else's process holds that id now: not ours to judge, keep waiting


def watches_local_processes(instance: dg.DagsterInstance) -> bool:
    """Runs of this instance are processes on this machine (the DefaultRunLauncher, or a run in
    the CLI's own process): their ids mean something here."""
    return isinstance(instance.run_launcher, dg.DefaultRunLauncher)


def fail_runs_whose_process_died(
    instance: dg.DagsterInstance, job_names: Iterable[str] | None = None
) -> list[str]:
    """Fail every STARTED run (of `job_names`, or of every job) whose process is gone; returns
    their ids. A run that has recorded no process yet is left to run monitoring's timeouts."""
    filters = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
    wanted = set(job_names) if job_names is not None else None
    failed = []
    for record in instance.get_run_records(filters=filters):
        run = record.dagster_run
        if wanted is not None and run.job_name not in wanted:
            continue
        worker = run_worker(instance, run.run_id)
        if worker is None or is_alive(worker):
            continue
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status != dg.DagsterRunStatus.STARTED:
            continue  # it ended on its own meanwhile
        instance.report_run_failed(
            current,
            f"{RUN_WORKER_GONE} (pid {worker.pid}): it was killed or its machine restarted. "
            "The run was marked failed so that its request is handled and the queue moves on.",
        )
        log.warning("run %s failed: its process %s is gone", run.run_id, worker.pid)
        failed.append(run.run_id)
    return failed
