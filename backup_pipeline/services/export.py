"""A backup's archive: the one already emailed, kept, or workbooks rendered in worker processes
while a thread zips the files."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import Engine

from backup_pipeline import platform as db
from backup_pipeline.archive.memory import limit_malloc_arenas
from backup_pipeline.archive.plan import FilePlan, stage_plan, staged_plan
from backup_pipeline.datasets import DATASETS
from backup_pipeline.datasets.base import Dataset
from backup_pipeline.datasets.export import (
    ExportResult,
    export_dataset,
    import_renderer,
    record_staged_export,
    staged_exports,
)
from backup_pipeline.datasets.parallel import (
    Rendered,
    WorkbookExports,
    worker_count,
    yield_to_the_slowest_workbook,
)
from backup_pipeline.datasets.parallel import progress as export_progress
from backup_pipeline.rules.archive_names import archive_key
from backup_pipeline.rules.spanish import to_clinic_time
from backup_pipeline.rules.target import BackupTarget
from backup_pipeline.services.archive import AssembledArchive, build_archive, kept_archive
from backup_pipeline.services.delivery import emailed_archive
from backup_pipeline.storage import ObjectStore

log = logging.getLogger(__name__)

# The run's file plan in its staging (archive.plan.stage_plan), and how often an export waiting
# for it tells the run it is alive.
PLAN_NAME = "plan.jsonl"
PLAN_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class RunStores:
    """The run's two stores, and how a forked worker opens clients of its own: a worker must not
    share the run's connections (datasets.parallel)."""

    files: ObjectStore
    archives: ObjectStore
    open_files: Callable[[], ObjectStore]
    open_archives: Callable[[], ObjectStore]


class SubscriptionVanished(Exception):
    """The request's subscription is gone from the platform: there is nothing to back up."""


def archive_for_request(
    engine: Engine,
    stores: RunStores,
    *,
    target: BackupTarget,
    run_id: str,
    part_size: int,
    export_workers: int | None,
    say: Callable[[str], None] = log.info,
) -> Generator[Rendered | FilePlan, None, AssembledArchive]:
    """The request's archive: the one its emailed link points to when it is intact (a retry after
    the email must not send a second, different archive), else a new one (export_and_zip)."""
    with engine.connect() as conn:
        subscription = db.get_subscription(conn, target.subscription_id)
        request = db.get_request(conn, target.request_id)
    if subscription is None:
        raise SubscriptionVanished(f"subscription {target.subscription_id} vanished")
    local_day = to_clinic_time(target.requested_at, target.timezone).date()
    key = archive_key(target.subscription_id, target.request_id, subscription.name, local_day)
    emailed = emailed_archive(engine, stores.archives, request, key)
    if emailed is not None:
        say(
            f"request {target.request_id}: its link was emailed and the archive is intact; "
            "keeping it instead of building another"
        )
        return kept_archive(emailed)
    return (
        yield from export_and_zip(
            engine,
            stores,
            target=target,
            clinic_name=subscription.name,
            key=key,
            run_id=run_id,
            part_size=part_size,
            export_workers=export_workers,
            say=say,
        )
    )


class RunPlan:
    """The run's file plan (archive.plan.stage_plan), made once, by the run's process while the
    workers render; a worker, forked before it was made, reads it from staging once the run says
    it is there. A retry of the step keeps the plan an earlier attempt staged, which the
    workbooks it kept were made from."""

    def __init__(
        self,
        engine: Engine,
        stores: RunStores,
        target: BackupTarget,
        *,
        forked: bool,
        cancelled: threading.Event,
    ) -> None:
        self._engine = engine
        self._stores = stores
        self._target = target
        self._cancelled = cancelled  # planning stops between two batches of rows once set
        self.key = f"{target.staging_prefix}/{PLAN_NAME}"
        self._made: list[FilePlan] = []  # in each process, once it has the plan
        # Set once the plan is staged; made before the fork, so that the workers see it too.
        self._ready = multiprocessing.get_context("fork").Event() if forked else threading.Event()

    def make(self) -> FilePlan:
        """The plan, staged now or by an earlier attempt of the step (in the run's process)."""
        if not self._made:
            archives = self._stores.archives
            plan = staged_plan(archives, self.key)
            if plan is None:
                with self._engine.connect() as conn:
                    plan = stage_plan(
                        conn, self._target.subscription_id, archives, self.key, self._cancelled
                    )
            if plan.files:
                # A missing files store would make every file "not found" and send the backup
                # out empty, using up one of the clinic's two: fail it instead (a failure does
                # not count).
                self._stores.files.check_reachable()
            self._made.append(plan)
            self._ready.set()
        return self._made[0]

    def wait(self, archives: ObjectStore, alive: Callable[[], None]) -> FilePlan:
        """The plan: in the run's process, as made; in a worker, read from `archives` once the
        run has staged it, calling `alive` meanwhile (waiting for it is not a stalled export)."""
        if self._made:
            return self._made[0]
        while not self._ready.wait(PLAN_WAIT_SECONDS):
            alive()
        plan = staged_plan(archives, self.key)
        if plan is None:
            raise RuntimeError("the run's file plan is not in staging")
        self._made.append(plan)
        return plan


def export_and_zip(
    engine: Engine,
    stores: RunStores,
    *,
    target: BackupTarget,
    clinic_name: str,
    key: str,
    run_id: str,
    part_size: int,
    export_workers: int | None,
    say: Callable[[str], None] = log.info,
) -> Generator[Rendered | FilePlan, None, AssembledArchive]:
    """Render every workbook (in `export_workers` processes, see worker_count) while a thread
    plans the files and zips them into the archive under `key`; yields the file plan once it
    is staged, then each workbook once it is staged, and returns the assembled archive.

    The workers start before the plan is made: only the attachments index needs it, and waits
    for it (the plan takes a second or two of a large clinic's run, on the zip's core).

    A workbook that fails raises datasets.parallel.DatasetExportFailed (it names the dataset and
    the error's class, never its text); a files store that cannot be reached while there are
    files to copy, StoreRefused. Leaving early, by an error or by closing this generator,
    kills the workers still rendering, and the zip discards what it wrote.
    """
    # Set in each worker before its first export: its own connections (see datasets.parallel).
    worker_stores: dict[str, ObjectStore] = {}
    workers = worker_count(export_workers)
    unwanted = threading.Event()  # the zip, and the plan, stop between two files once this is set
    run_plan = RunPlan(engine, stores, target, forked=workers > 0, cancelled=unwanted)

    def plan_for_exports() -> FilePlan:
        """The plan, for the attachments index (in a worker, through the worker's own store)."""
        return run_plan.wait(worker_stores.get("archives", stores.archives), export_progress)

    def worker_setup() -> None:
        engine.dispose(close=False)  # the run's pooled connections are not the worker's
        worker_stores["files"] = stores.open_files()
        worker_stores["archives"] = stores.open_archives()

    def export_one(dataset: Dataset) -> ExportResult:
        started = time.perf_counter()
        with engine.connect() as conn:
            result = export_dataset(
                dataset,
                connection=conn,
                subscription_id=target.subscription_id,
                timezone=target.timezone,
                files=worker_stores.get("files", stores.files),
                archives=worker_stores.get("archives", stores.archives),
                staging_prefix=target.staging_prefix,
                # The request's time: a re-run renders the same rows into the same bytes.
                created=target.requested_at,
                progress=export_progress,
                # The attachments index lists the files as this run's plan names and splits them.
                plan=plan_for_exports,
                part_size=part_size,
            )
        # Noted as soon as it is staged, by whoever staged it: a retry of this step keeps it.
        record_staged_export(
            worker_stores.get("archives", stores.archives),
            target.staging_prefix,
            run_id,
            result,
            time.perf_counter() - started,
        )
        return result

    # Before the zip's threads and the workers: every thread past the cap shares its heaps.
    limit_malloc_arenas()
    if workers:
        engine.dispose()  # no pooled connection crosses the fork
        import_renderer()  # pandas and XlsxWriter once, shared by the forked workers
    zipping = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup-zip")
    # A retry of this step (a storage error in the zip) keeps the workbooks an earlier attempt of
    # the same run staged; another run renders them again, from the data as it is then.
    staged_before = staged_exports(stores.archives, target.staging_prefix, run_id)
    with WorkbookExports(
        DATASETS,
        workers=workers,
        export_one=export_one,
        worker_setup=worker_setup,
        done=staged_before,
        priority=lambda dataset: dataset.render_cost,
    ) as exports:
        say(
            f"rendering {len(DATASETS) - len(staged_before)} workbooks with {exports.workers} "
            f"workers ({len(staged_before)} staged by an earlier attempt)"
        )
        plan_made: Future[FilePlan] = Future()

        def zip_all() -> AssembledArchive:
            try:
                if workers:
                    yield_to_the_slowest_workbook()  # this thread only
                plan = run_plan.make()
            except BaseException as exc:
                plan_made.set_exception(exc)  # the run's thread waits for it: it fails now
                raise
            plan_made.set_result(plan)
            return build_archive(
                archives=stores.archives,
                files=stores.files,
                key=key,
                clinic_name=clinic_name,
                timezone=target.timezone,
                generated_at_local=to_clinic_time(db.utcnow(), target.timezone),
                exports=exports.results_in_order,
                plan=plan,
                part_size=part_size,
                cancelled=unwanted,
            )

        # The forks are done (WorkbookExports started its workers): threads may start now.
        # With no workers: the plan, the workbooks, then the zip, one at a time, here.
        archive = zipping.submit(zip_all) if workers else None
        try:
            yield plan_made.result() if archive is not None else run_plan.make()
            # A failing zip is seen at once, not after the slowest workbook.
            yield from exports.completed(watch=archive)
            return archive.result() if archive is not None else zip_all()
        finally:
            # On the way out with an error (a workbook failed, the run was cancelled): workers
            # still rendering are killed, and the zip, between two files or waiting for the
            # workbooks, gives up and discards what it wrote before this step ends.
            unwanted.set()
            exports.stop()
            zipping.shutdown(wait=True)
