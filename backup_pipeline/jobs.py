"""The backup job: one partition per request, from the platform's rows to an emailed link.

Each op is one step of the run; what the step does lives in the module of its concern
(services.run_start, services.export with archive.plan, services.delivery). Ops hand on small
records: a target of ids, staged keys, counts and checksums, never data.
"""

# No `from __future__ import annotations` here: Dagster reads the ops' context annotations as
# real types and refuses them as strings.

from collections.abc import Callable, Generator, Iterator
from typing import TypeVar

import dagster as dg
from dagster import OpExecutionContext

from backup_pipeline.archive.plan import FilePlan
from backup_pipeline.datasets import DATASETS
from backup_pipeline.datasets.base import Dataset
from backup_pipeline.datasets.export import ExportResult
from backup_pipeline.datasets.parallel import DatasetExportFailed, Rendered
from backup_pipeline.platform import migrations
from backup_pipeline.resources import BackupPolicyResource
from backup_pipeline.resources.mailer import MailerResource
from backup_pipeline.resources.platform_db import PlatformDatabaseResource
from backup_pipeline.resources.storage import ObjectStoreResource
from backup_pipeline.rules.archive_names import archive_folder
from backup_pipeline.rules.target import REQUEST_TAG, BackupTarget
from backup_pipeline.services.archive import AssembledArchive
from backup_pipeline.services.delivery import DeliveryRefused, deliver_after_run
from backup_pipeline.services.export import RunStores, SubscriptionVanished, archive_for_request
from backup_pipeline.services.failures import AuthorizationRevoked
from backup_pipeline.services.run_start import RequestFinished, RunRefused, begin_run
from backup_pipeline.step_failure import permanent
from backup_pipeline.storage import StoreRefused

backup_partitions = dg.DynamicPartitionsDefinition(name="backup_requests")

BACKUP_JOB_NAME = "backup_job"
# On every backup run, however launched: the run queue gives backups at most their own share of
# its slots (dagster.yaml, deploy/dagster.yaml), so housekeeping and alerts never wait behind them.
KIND_TAG = "backup/kind"

T = TypeVar("T")

# Refusals that no retry can heal.
_NOT_RETRIED = (DeliveryRefused, StoreRefused, AuthorizationRevoked, RunRefused)


def _permanent(call: Callable[[], T]) -> T:
    """Run `call`, turning a refusal that no retry can heal into a failure that is not retried,
    named for its cause and saying what to do next."""
    try:
        return call()
    except _NOT_RETRIED as exc:
        raise permanent(exc) from exc


def _request_id(context: OpExecutionContext) -> int:
    try:
        return int(context.partition_key)
    except ValueError as exc:
        raise dg.Failure(
            f"partition key {context.partition_key!r} is not a request id", allow_retries=False
        ) from exc


@dg.op(
    description=(
        "Marks the request running; checks it exists, may still run, and that its requester is "
        "still authorised. A request already delivered, expired or refused: the run ends here, "
        "successfully, saying so (the later steps are skipped)."
    ),
    out=dg.Out(BackupTarget, is_required=False),
)
def start_backup(
    context: OpExecutionContext,
    platform_db: PlatformDatabaseResource,
    archives: ObjectStoreResource,
    mailer: MailerResource,
) -> Iterator[dg.Output[BackupTarget]]:
    request_id = _request_id(context)
    engine = platform_db.get_engine()
    try:
        migrations.require_current(engine)
    except migrations.SchemaBehind as exc:
        # The failure sensor leaves the request as it is while this holds.
        raise permanent(exc) from exc
    try:
        target = begin_run(
            engine,
            mailer.get_mailer(),
            archives.get_store(),
            request_id=request_id,
            run_id=context.run_id,
        )
    except RequestFinished as finished:
        # A re-execution from the UI, or a run a refusal could not cancel in time: it succeeds
        # with nothing done, so the Partitions page stays green where the backup was delivered.
        context.log.info(str(finished))
        return
    except _NOT_RETRIED as exc:
        raise permanent(exc) from exc
    yield dg.Output(
        target,
        metadata={"request_id": request_id, "subscription_id": target.subscription_id},
    )


def export_output(dataset: Dataset) -> str:
    """The output of assemble_backup that reports one dataset's workbook."""
    return f"export_{dataset.name}"


ARCHIVE_OUTPUT = "archive"
PLAN_OUTPUT = "plan"


def plan_metadata(plan: FilePlan) -> dict[str, int]:
    """What support sees of the file plan in the run: counts and bytes, no name of a file."""
    return {"files": plan.files, "expected_bytes": plan.expected_bytes, **plan.by_kind}


@dg.op(
    description=(
        "Renders every workbook (one output each, in worker processes) while it lists every "
        "attachment and CFDI file with its safe path in the archive (the plan output) and "
        "streams them into the zip in the archives store, then adds the workbooks, LEEME.txt "
        "and SHA256SUMS."
    ),
    out={
        PLAN_OUTPUT: dg.Out(
            FilePlan,
            description=(
                "The files planned into the archive: how many of each kind and their recorded "
                "bytes (the list itself is staged as plan.jsonl for the zip and adjuntos.xlsx)."
            ),
            is_required=False,
        ),
        **{
            export_output(dataset): dg.Out(
                ExportResult,
                description=f"{dataset.archive_path}: {dataset.description}",
                is_required=False,
            )
            for dataset in DATASETS
        },
        ARCHIVE_OUTPUT: dg.Out(AssembledArchive),
    },
    tags={"kind": "excel"},
)
def assemble_backup(
    context: OpExecutionContext,
    target: BackupTarget,
    platform_db: PlatformDatabaseResource,
    files: ObjectStoreResource,
    archives: ObjectStoreResource,
    policy: BackupPolicyResource,
) -> Iterator[dg.Output]:
    stores = RunStores(
        files=files.get_store(),
        archives=archives.get_store(),
        open_files=files.open_new_store,
        open_archives=archives.open_new_store,
    )
    assembled = yield from _reported(
        archive_for_request(
            platform_db.get_engine(),
            stores,
            target=target,
            run_id=context.run_id,
            part_size=policy.part_size_bytes,
            export_workers=policy.export_workers,
            say=context.log.info,
        )
    )
    yield dg.Output(assembled, ARCHIVE_OUTPUT, metadata=assembled.totals())


def _reported(
    renders: Generator[Rendered | FilePlan, None, AssembledArchive],
) -> Generator[dg.Output, None, AssembledArchive]:
    """The file plan and each workbook of services.export as outputs of assemble_backup; a
    workbook that failed as a Failure naming its dataset and error class
    (failures.failure_cause reads them), a subscription gone or a store that refuses as a
    Failure that no retry repeats."""
    try:
        while True:
            try:
                rendered = next(renders)
            except StopIteration as finished:
                return finished.value
            if isinstance(rendered, FilePlan):
                yield dg.Output(rendered, PLAN_OUTPUT, metadata=plan_metadata(rendered))
                continue
            result = rendered.result
            yield dg.Output(
                result,
                export_output(rendered.dataset),
                metadata={
                    "rows": result.rows,
                    "sheets": result.sheets,
                    "workbook_bytes": result.entries[0].size,
                    "long_text_files": result.long_text_files,
                    "seconds": round(rendered.seconds, 3),
                    "staged_by_an_earlier_attempt": rendered.reused,
                },
            )
    except DatasetExportFailed as exc:
        raise dg.Failure(
            str(exc), metadata={"dataset": exc.dataset, "error": exc.cause_class}
        ) from exc
    except SubscriptionVanished as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    except _NOT_RETRIED as exc:  # the files store, unreachable while there are files to copy
        raise permanent(exc) from exc
    finally:
        renders.close()  # left early (cancelled): the workers and the zip stop now, not at GC


@dg.op(description="Signs the link, emails the requester once, and marks the request delivered.")
def deliver_backup(
    context: OpExecutionContext,
    target: BackupTarget,
    archive: AssembledArchive,
    platform_db: PlatformDatabaseResource,
    archives: ObjectStoreResource,
    mailer: MailerResource,
    policy: BackupPolicyResource,
) -> None:
    store = archives.get_store()
    delivered = _permanent(
        lambda: deliver_after_run(
            platform_db.get_engine(),
            store,
            mailer.get_mailer(),
            request_id=target.request_id,
            run_id=context.run_id,
            archive=archive,
            link_ttl=policy.link_ttl,
        )
    )
    if not delivered.email_sent_now:
        context.log.info(f"request {target.request_id}: email already sent, not sending again")
    store.delete_prefix(target.staging_prefix)
    context.add_output_metadata(
        {
            "archive_folder": archive_folder(archive.result.key),
            "archive_bytes": archive.result.size,
            "archive_sha256": archive.result.sha256,
            "link_expires_at": delivered.expires_at.isoformat() + "Z",
            "email_sent_now": delivered.email_sent_now,
        }
    )


@dg.graph(
    description=(
        "Backs up one clinic for one request (partition = backup_requests.id): workbooks, files "
        "and invoices into one zip in the archives store, then a signed link by email."
    )
)
def backup_graph() -> None:
    target = start_backup()
    # The files are planned inside assemble_backup, while its workers render: as a step of its
    # own the plan ran alone, one core idle, for 1-1.5 s of a large clinic's run.
    outputs = assemble_backup(target)
    deliver_backup(target, getattr(outputs, ARCHIVE_OUTPUT))


def build_backup_job(retry_policy: dg.RetryPolicy) -> dg.JobDefinition:
    """The backup job with the deployment's retry policy on every op."""
    return backup_graph.to_job(
        name=BACKUP_JOB_NAME,
        # Every run of a partition names its request, however it is launched (the sensor, the
        # UI's partition launcher, a backfill): the run queue admits one run per request.
        config=dg.PartitionedConfig(
            partitions_def=backup_partitions,
            run_config_for_partition_key_fn=lambda _key: {},
            tags_for_partition_key_fn=lambda key: {REQUEST_TAG: key},
        ),
        op_retry_policy=retry_policy,
        tags={"team": "backups", KIND_TAG: "backup"},
        # In one process: a process per op (the multiprocess executor) imports Dagster and pandas
        # again for each step, which cost 2-5 s and ~250 MB apiece and made the backup slower and
        # three times as large in memory up to the large profile (bench/RESULTS.md). Both cores
        # are used inside assemble_backup instead (datasets.parallel).
        executor_def=dg.in_process_executor,
    )
