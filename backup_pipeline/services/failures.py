"""What happens when a backup fails for good: the request is marked, support and the requester told."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from backup_pipeline import platform as db
from backup_pipeline.datasets import DATASETS
from backup_pipeline.mail import Mailer, MailError
from backup_pipeline.platform import migrations
from backup_pipeline.rules import emails
from backup_pipeline.rules.checks import authorization_refusal, revoked_detail
from backup_pipeline.rules.request_state import OPEN_STATUSES, Actor, BackupRequest, RequestEvent
from backup_pipeline.rules.target import REQUEST_TAG
from backup_pipeline.services.housekeeping import remove_objects_of_ended_request
from backup_pipeline.storage import ObjectStore

log = logging.getLogger(__name__)


# The reason recorded in the audit trail for a backup run cancelled from outside the run.
TERMINATED_IN_UI = "run terminated in the Dagster UI"
# The failure message run_liveness gives a run whose process it found dead.
RUN_WORKER_GONE = "The run's process is gone"

# After an op's retry policy gives up, Dagster reports its own wrapper; the cause is the error.
# A plain dagster Failure raised `from` an error is a wrapper too (step_failure.permanent makes
# failures named for their cause instead).
_WRAPPERS = frozenset({"RetryRequestedFromPolicy", "RetryRequested", "Failure"})


def _cause_error(error: Any) -> Any:
    """The error that caused a step failure (Dagster's SerializableErrorInfo): through the retry
    wrapper, and through a plain dagster Failure raised `from` the real error."""
    while error is not None and error.cause is not None and error.cls_name in _WRAPPERS:
        error = error.cause
    return error


def error_class_of(error: Any) -> str | None:
    """The class name of a step failure's error (Dagster's SerializableErrorInfo), looking
    through the retry wrapper to the error that caused it; None when there is no error."""
    error = _cause_error(error)
    return error.cls_name if error is not None else None


def error_message_of(error: Any) -> str | None:
    """The cause's own message, one line, without its module and class (said apart)."""
    error = _cause_error(error)
    if error is None:
        return None
    # SerializableErrorInfo.message is traceback's "package.module.Class: text".
    head, separator, text = error.message.partition(": ")
    if separator and head.rpartition(".")[2] == error.cls_name:
        return one_line(text) or None
    return one_line(error.message) or None


def one_line(text: str, limit: int = 300) -> str:
    """A message for an alert or an audit detail: one line, and not a page of it."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class FailureCause(NamedTuple):
    """What made a backup run fail, as support reads it: the step, the cause's class and its
    message (ours, written without patient data)."""

    step: str | None
    error_class: str | None
    message: str | None


def failure_cause(step_failures: Sequence[Any]) -> FailureCause:
    """The cause of a failed run from its step failure events (Dagster's): the first failure's
    step, or export_<dataset> for a workbook that failed inside assemble_backup (it names its
    dataset and error in the failure's metadata, jobs._export_and_zip)."""
    for event in step_failures:
        data = event.event_specific_data
        error = data.error if data else None
        user = getattr(data, "user_failure_data", None)
        metadata = user.metadata if user is not None else {}
        if "dataset" in metadata:
            cause = metadata.get("error")
            return FailureCause(
                f"export_{metadata['dataset'].value}",
                cause.value if cause is not None else error_class_of(error),
                error_message_of(error),
            )
        return FailureCause(event.step_key, error_class_of(error), error_message_of(error))
    return FailureCause(None, None, None)


# What support does next, by the cause's class: the setting to check, the job to launch. A
# request that failed does not count, so once the cause is fixed a re-run costs the clinic nothing.
_RERUN = "then launch rerun_request_job for this request (the quota is re-checked)"
_NEXT_STEPS = {
    "StoreRefused": (
        "check BACKUP_FILES_URL and BACKUP_ARCHIVES_URL (the bucket or folder exists and the "
        f"run's credentials may read and write it), {_RERUN}"
    ),
    "DeliveryRefused": (
        f"check the requester's email address in the platform and BACKUP_MAIL_URL, {_RERUN}"
    ),
    "MailError": f"check BACKUP_MAIL_URL and SENDGRID_API_KEY, {_RERUN}",
    "AuthorizationRevoked": (
        "nothing to fix here: the requester lost the permission to request backups; the clinic "
        "may request again once its owner restores it"
    ),
    "SchemaBehind": "run `backup-pipeline migrate`; the request then runs again by itself",
    "RunRefused": "read the run's error: the request could not be started as it is",
    "RunCanceled": (
        "the run was cancelled; if the clinic still wants this backup, launch rerun_request_job"
    ),
    "DatasetExportFailed": f"read the failing workbook's error in the run's logs, {_RERUN}",
    "RunWorkerDied": (
        "the run's process died (a restart, the OOM killer): check the machine's or pod's memory "
        f"against the clinic's size, {_RERUN}"
    ),
    "RunStartTimedOut": (
        "the run's process did not start within run monitoring's start timeout: check the run "
        f"launcher (pods pending, image pulls, the namespace's quota), {_RERUN}"
    ),
    "RunTimedOut": (
        "the run outlived its maximum time (12 h): read its logs for the slow step, check the "
        f"stores' latency and the run's resources, {_RERUN}"
    ),
}
_DEFAULT_NEXT_STEP = f"read the failed step's error in the run (Dagster UI), fix it, {_RERUN}"


def next_step(*error_classes: str | None) -> str:
    """What the operator does about a failed backup whose cause is of this class (or, given a
    class and its bases, of the first one a step is named for)."""
    for name in error_classes:
        if name in _NEXT_STEPS:
            return _NEXT_STEPS[name]
    return _DEFAULT_NEXT_STEP


# Causes whose message is ours (or Dagster's about the run itself), written without patient data:
# support reads it. Any other error's text may quote SQL parameters, a file name or a path that
# holds a patient's name, so only its class is stated and the run keeps the rest.
MESSAGES_WITHOUT_PATIENT_DATA = frozenset(
    {
        "StoreRefused",
        "StoreUnavailable",
        "DeliveryRefused",
        "MailError",
        "RunRefused",
        "AuthorizationRevoked",
        "SchemaBehind",
        "DatasetExportFailed",
        "ArchiveIntegrityError",
        "RunWorkerDied",
        "RunTimedOut",
        "RunStartTimedOut",
    }
)


def cause_text(step: str | None, error_class: str | None, message: str | None) -> str:
    """The cause as support's alert and the audit trail state it: step, class and, for a cause
    whose message is known to hold no patient data, its message."""
    cause = f"step={step or '?'} error={error_class or '?'}"
    if not message:
        return cause
    if error_class not in MESSAGES_WITHOUT_PATIENT_DATA:
        return f"{cause} (its message is in the run's logs)"
    return f"{cause}: {one_line(message)}"


def run_failure_cause(message: str | None) -> str | None:
    """The error class support reads for a run that failed outside every step: its process
    died (found by run_liveness, or by Dagster's code server when only the run was killed), run
    monitoring ended it after its maximum time, or its process never started in time; None for
    anything else (a message that merely mentions a timeout is not run monitoring's)."""
    text = message or ""
    if (
        text.startswith(RUN_WORKER_GONE)
        or "execution process for" in text
        or "worker status" in text
    ):
        return "RunWorkerDied"
    if "maximum runtime" in text:
        return "RunTimedOut"
    if text.startswith("Run timed out due to taking longer than"):
        return "RunStartTimedOut"
    return None


# What each step was making, as the clinic would say it: the step names are ours, not theirs.
_STEP_SUBJECTS = {
    **{f"export_{dataset.name}": dataset.failure_subject for dataset in DATASETS},
    "assemble_backup": "de sus archivos adjuntos y comprobantes",
    # The step that planned the files before assemble_backup did: a run of an earlier version
    # that failed there may still reach the failure sensor after an upgrade.
    "plan_archive_files": "de sus archivos adjuntos y comprobantes",
}


def failure_reason(step: str | None, error_class: str | None) -> str:
    """The status_detail of a failed request, in Spanish for the clinic: what could not be made,
    that it costs nothing, and that support knows. Never a step name, an error class or the
    error's text (which may quote SQL parameters or file names); those go to support's email
    and stay in the run. `error_class` only tells a cancelled run apart."""
    if error_class == "RunCanceled":
        return (
            "El equipo de soporte detuvo la generación de su respaldo. Esta solicitud no cuenta "
            "para el límite de respaldos; puede solicitar uno nuevo cuando lo necesite."
        )
    subject = _STEP_SUBJECTS.get(step or "")
    what = f"el respaldo {subject}" if subject else "su respaldo"
    if step == "deliver_backup":
        what = "el correo con el enlace de descarga de su respaldo"
    return (
        f"No se pudo generar {what} por un error de nuestra parte. Esta solicitud no cuenta "
        "para el límite de respaldos y el equipo de soporte ya fue avisado."
    )


def fail_if_revoked(
    engine: Engine,
    mailer: Mailer,
    archives: ObjectStore,
    *,
    request_id: int,
    run_id: str,
    checked_at: str,
) -> None:
    """Re-check the requester's authorisation while the backup runs (PRODUCT.md, step 3).

    Refused: the request fails (it does not count) with the reason in Spanish, any archive made
    for it is deleted so that no link to it works, support is told (ids only), and
    AuthorizationRevoked is raised so that the run stops. The requester is not emailed.
    """
    with engine.begin() as conn:
        request = db.get_request(conn, request_id)
        if request is None:
            return
        subscription = db.get_subscription(conn, request.subscription_id)
        refusal = authorization_refusal(
            db.get_requester(conn, request.requested_by_user_id),
            request.subscription_id,
            subscription.status if subscription else None,
        )
        if refusal is None:
            return
        failed_now = db.mark_failed(
            conn,
            request_id,
            reason=revoked_detail(refusal),
            run_id=run_id,
            detail=f"authorisation revoked ({refusal.reason_code}), checked {checked_at}",
        )
    # Its archive (every part, recorded or just written under its folder) and staging go now,
    # so that no link to it works: the same clean-up as any ended request's.
    _remove_objects(engine, archives, request_id)
    if failed_now:  # told once, however often a refused run is re-executed
        _send_all(
            mailer,
            request_id,
            [
                emails.authorisation_revoked_to_support(
                    support_email=mailer.support_email,
                    from_email=mailer.from_email,
                    request_id=request_id,
                    subscription_id=request.subscription_id,
                    run_id=run_id,
                    reason_code=refusal.reason_code or "?",
                    checked_at=checked_at,
                )
            ],
        )
    raise AuthorizationRevoked(
        f"request {request_id}: the requester is no longer authorised ({refusal.reason_code}); "
        f"the request failed {checked_at} and no link was sent"
    )


class AuthorizationRevoked(Exception):
    """The requester lost the authorisation during the run; the request was failed for it."""


def _already_delivered(
    engine: Engine, archives: ObjectStore, request_id: int, run_id: str | None
) -> BackupRequest | None:
    """A run that dies after the link was emailed (killed, then failed by run monitoring) has
    delivered all the same: the requester holds a working link. Mark it so, instead of telling
    them it failed and leaving an archive no schedule would expire."""
    with engine.connect() as conn:
        request = db.get_request(conn, request_id)
    if (
        request is None
        or request.status not in OPEN_STATUSES
        or request.email_sent_at is None
        or not request.archive_key
        or not archives.exists(request.archive_key)
    ):
        return None
    with engine.begin() as conn:
        delivered = db.mark_delivered(conn, request_id, run_id or request.run_id or "")
    return request if delivered else None


def fail_request(
    engine: Engine,
    mailer: Mailer,
    *,
    request_id: int,
    run_id: str | None,
    step: str | None,
    error_class: str | None,
    archives: ObjectStore | None = None,
    error_message: str | None = None,
) -> bool:
    """Mark an open request failed and tell support and the requester, once.

    Support's alert and the audit trail name the cause (its class and message, which
    failure_cause reads from the run's failure) and the next step. Returns False (and tells the
    requester nothing) when the request was not open (already failed and told, or delivered by
    another run) or when its link had already been emailed, in which case it is marked
    delivered and only support hears of the failed run.
    """
    reason = failure_reason(step, error_class)
    cause = cause_text(step, error_class, error_message)
    next_to_do = next_step(error_class)
    delivered = _already_delivered(engine, archives, request_id, run_id) if archives else None
    if delivered is not None:
        _send_all(
            mailer,
            request_id,
            [
                emails.failure_alert_to_support(
                    support_email=mailer.support_email,
                    from_email=mailer.from_email,
                    request_id=request_id,
                    subscription_id=delivered.subscription_id,
                    run_id=run_id,
                    reason=(
                        f"{cause}, after the link was emailed: the request was marked "
                        "delivered; nothing to do for the clinic"
                    ),
                )
            ],
        )
        return False
    cancelled = error_class == "RunCanceled"
    with engine.begin() as conn:
        failed_now = db.mark_failed(
            conn,
            request_id,
            reason=reason,
            run_id=run_id,
            event=RequestEvent.CANCELLED if cancelled else RequestEvent.FAILED,
            # Only support cancels a backup run (Terminate in the Dagster UI; a refusal cancels
            # the run of a request that is then already rejected, and records nothing here).
            actor=Actor.support(TERMINATED_IN_UI, run_id) if cancelled else None,
            # For the audit trail and support: ours, not the clinic's.
            detail=f"{cause}. Next: {next_to_do}",
        )
        request = db.get_request(conn, request_id)
        subscription = db.get_subscription(conn, request.subscription_id) if request else None
        requester = db.get_requester(conn, request.requested_by_user_id) if request else None
    if archives is not None:
        # Also when another path failed or rejected it first: its run is over now either way.
        _remove_objects(engine, archives, request_id)
    if not failed_now or request is None:
        return False
    notices = [
        emails.failure_alert_to_support(
            support_email=mailer.support_email,
            from_email=mailer.from_email,
            request_id=request_id,
            subscription_id=request.subscription_id,
            run_id=run_id,
            reason=f"{cause}. Next: {next_to_do}",
        )
    ]
    if requester is not None and subscription is not None:
        notices.append(
            emails.failed_email_to_requester(
                cancelled=cancelled,
                to=requester.email,
                clinic_name=subscription.name,
                support_email=mailer.support_email,
                from_email=mailer.from_email,
                request_id=request_id,
            )
        )
    _send_all(mailer, request_id, notices)
    return True


def _remove_objects(engine: Engine, archives: ObjectStore, request_id: int) -> None:
    try:
        removed = remove_objects_of_ended_request(engine, archives, request_id)
    except Exception as exc:
        # The request is failed and its people told; the staging sweep retries what is left.
        log.warning(
            "could not remove the objects of request %s: %s", request_id, type(exc).__name__
        )
        return
    if removed:
        log.info("removed %s object(s) of ended request %s", removed, request_id)


def _send_all(mailer: Mailer, request_id: int, notices: list) -> None:
    for email in notices:
        try:
            mailer.send(email)
        except MailError as exc:
            # The request is already failed and visible to support in the UI; a lost notice must
            # not turn into a retry loop of the whole failure handling.
            log.warning(
                "could not send failure notice %s for request %s: %s",
                email.key,
                request_id,
                type(exc).__name__,
            )


# --- A run that ended without delivering: the one decision, taken by the failure sensors for the
# daemon's runs and by the CLI for the runs it executes in its own process (moved here from
# sensors.py, which had it as _fail_request_of_run and _schema_behind).


def handle_failed_run(
    engine: Engine,
    mailer: Mailer,
    archives: ObjectStore,
    *,
    run_id: str,
    run_tags: Mapping[str, str],
    step_failures: Sequence[Any] = (),
    cancelled: bool = False,
    failure_message: str | None = None,
    cancel_cause: str = "RunCanceled",
    log: logging.Logger = log,
) -> None:
    """A backup run failed (its step failure events, Dagster's, and the run failure's message)
    or was cancelled (`cancel_cause`: support's RunCanceled, or run monitoring's RunTimedOut):
    its request is failed and support and the requester told, once; unless our tables are
    behind, in which case the request is left as it is and runs again once
    `backup-pipeline migrate` has."""
    # The partition names the request too, for a run launched from the UI without our tags.
    request_id = run_tags.get(REQUEST_TAG) or run_tags.get("dagster/partition")
    if request_id is None or not request_id.isdigit():
        return
    if _left_for_migration(engine, int(request_id), run_id, log):
        return
    if cancelled:
        step, error_class, message = None, cancel_cause, None
    else:
        step, error_class, message = failure_cause(step_failures)
        if step is None and error_class is None:
            # Ended from outside its steps: its process died, or it ran out of time.
            error_class, message = run_failure_cause(failure_message), failure_message
    fail_request(
        engine,
        mailer,
        request_id=int(request_id),
        run_id=run_id,
        step=step,
        error_class=error_class,
        archives=archives,
        error_message=message,
    )


def _left_for_migration(engine: Engine, request_id: int, run_id: str, log: logging.Logger) -> bool:
    """A run failed because our tables are behind: the request is left as it is (not failed,
    nobody emailed) and runs again, under a new run key, once `backup-pipeline migrate` has."""
    try:
        migrations.require_current(engine)
    except migrations.SchemaBehind as behind:
        log.warning(f"run {run_id}: its request is left unchanged; {behind}")
        run_key = f"backup-request-{request_id}-after-{run_id[:8]}"
        try:
            with engine.begin() as conn:
                db.relaunch_after_migration(conn, request_id, run_key=run_key)
        except SQLAlchemyError:
            # Our reviews table itself is missing: the request was never reviewed, and will be.
            log.info(f"request {request_id} will be reviewed once migrated")
        return True
    return False
