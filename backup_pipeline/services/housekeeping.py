"""The housekeeping the schedules do: expire links, clear staging, alert on late requests, refresh quotas.

Plain functions over an Engine, an ObjectStore and a Mailer, with `now` (naive UTC) passed in so
that tests drive time. Every function is idempotent (a second call right after the first finds
nothing to do) and bounded (`limit`), and commits each item on its own so that a failure midway
keeps what was done.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from backup_pipeline import platform as db
from backup_pipeline.mail import Mailer, MailError
from backup_pipeline.rules import emails
from backup_pipeline.rules.quota import quota_window
from backup_pipeline.rules.request_state import FINISHED_STATUSES, OPEN_STATUSES, RequestStatus
from backup_pipeline.storage import ObjectStore

log = logging.getLogger(__name__)

# Not delivered long after it was made: the clinic is still waiting (PRODUCT.md: support hears of
# it after 24 hours, before the user's 48-hour fallback).
LATE_ALERT = "late"
STAGING_ROOT = "staging/"
# A write untouched this long was cut short (a killed run); one in progress writes every second.
ABANDONED_WRITE_AGE = timedelta(hours=6)


class HousekeepingError(Exception):
    """Some items failed while the others were done; the message holds counts and request ids only."""


def _raise_if_failed(what: str, done: int, failed: list[int]) -> None:
    if failed:
        shown = ", ".join(str(i) for i in failed[:20]) + (" ..." if len(failed) > 20 else "")
        raise HousekeepingError(
            f"{what}: {done} done, {len(failed)} failed (requests {shown}); "
            "they are retried on the next tick, see the log for each error's class"
        )


# --- 1. Expired links ---------------------------------------------------------------------


def expire_archives(engine: Engine, store: ObjectStore, now: datetime, limit: int = 500) -> int:
    """Delete the archive of each delivered request whose link has expired, then mark it expired.

    The archive goes first: a request marked expired is never looked at again, so marking first
    could leave an archive of patient data behind for good. An archive already gone is fine.
    A request that failed after its zip was made (the email refused, say) keeps its status; its
    archive, which nobody will download, goes when its link would have expired.
    Returns how many requests became expired.
    """
    with engine.connect() as conn:
        due = db.archives_to_expire(conn, now, limit)
    expired = 0
    failed: list[int] = []
    for request_id, _archive_key, status in due:
        try:
            # Every part of the archive: backup_requests names only the first. A link re-sent
            # since the batch was read moved its expiry: then the archive stays.
            with engine.connect() as conn:
                if not db.still_due_for_expiry(conn, request_id, now):
                    continue
                keys = [part.archive_key for part in db.parts_of(conn, request_id)]
            for key in keys:
                store.delete(key)
            with engine.begin() as conn:
                if status == RequestStatus.DELIVERED:
                    expired += db.mark_expired(conn, request_id)
                else:
                    db.forget_failed_archive(conn, request_id)
                    db.forget_parts(conn, request_id)
        except Exception as exc:
            # Only the class: a storage error's text can quote the key, which names the clinic.
            log.warning("could not expire request %s: %s", request_id, type(exc).__name__)
            failed.append(request_id)
    _raise_if_failed("expire archives", expired, failed)
    return expired


# --- 2. Staging leftovers -----------------------------------------------------------------


@dataclass(frozen=True)
class StagingSweep:
    objects_deleted: int
    requests_cleared: int
    requests_open: int  # staging of pending/running requests, left alone
    unknown: int  # staging whose folder names no request row, left alone


def remove_staging_leftovers(
    engine: Engine, store: ObjectStore, limit: int = 10_000
) -> StagingSweep:
    """Delete `staging/<request_id>/...` objects of finished requests: what a failed request's
    own cleanup could not delete (remove_objects_of_ended_request), or what a request ended
    before that cleanup existed left.

    Only the keys just listed are deleted, never a whole prefix: a request re-run by support is
    marked running before its new run writes anything, so its new objects are either unlisted
    or seen under an open status. Folders that name no request row are left for a person to
    judge (another deployment sharing the bucket, say). At most `limit` objects per call.
    """
    keys_by_request: dict[int, list[str]] = defaultdict(list)
    unknown_folders: set[str] = set()
    for info in store.list(STAGING_ROOT):
        folder = info.key[len(STAGING_ROOT) :].split("/", 1)[0]
        if folder.isdigit():
            keys_by_request[int(folder)].append(info.key)
        else:
            unknown_folders.add(folder)
    with engine.connect() as conn:
        statuses = db.statuses_of(conn, list(keys_by_request))
    deleted = cleared = still_open = 0
    failed: list[int] = []
    for request_id in sorted(keys_by_request):
        status = statuses.get(request_id)
        if status is None:
            unknown_folders.add(str(request_id))
            continue
        if status not in FINISHED_STATUSES:
            still_open += 1
            continue
        keys = keys_by_request[request_id]
        if deleted + len(keys) > limit and deleted:
            break
        try:
            deleted += sum(store.delete(key) for key in keys)
            cleared += 1
        except Exception as exc:
            log.warning(
                "could not clear the staging of request %s: %s", request_id, type(exc).__name__
            )
            failed.append(request_id)
    _raise_if_failed("remove staging leftovers", cleared, failed)
    return StagingSweep(deleted, cleared, still_open, len(unknown_folders))


def remove_abandoned_writes(store: ObjectStore, now: datetime) -> int:
    """Delete the partial files of writes a killed run never finished (the folder store's
    `.bp-partial` files); an object store that keeps none has nothing to do."""
    return store.remove_abandoned_writes(now - ABANDONED_WRITE_AGE)


def request_folders(request_id: int, subscription_id: int) -> tuple[str, ...]:
    """Where a request's runs write: their staging (target.staging_prefix) and its archive and
    parts (archive.names.archive_key)."""
    return (f"{STAGING_ROOT}{request_id}/", f"respaldos/{subscription_id}/{request_id}/")


def remove_objects_of_ended_request(engine: Engine, store: ObjectStore, request_id: int) -> int:
    """Delete every object a failed or rejected request's runs wrote (its archive and parts,
    partial or whole, and its staging) when it ends, not at the next sweep; returns how many.

    Its runs are over (the failure sensor calls this once the run has ended, with the request
    already failed), so a write still partial is one they never finished. Keys are listed
    before the status is read: a request that support re-runs meanwhile is open again, and its
    new run's objects are then left alone. A delivered request is not touched.
    """
    with engine.connect() as conn:
        request = db.get_request(conn, request_id)
    if request is None:
        return 0
    folders = request_folders(request_id, request.subscription_id)
    listed = [info.key for folder in folders for info in store.list(folder)]
    with engine.connect() as conn:
        status = db.statuses_of(conn, [request_id]).get(request_id)
        recorded = [part.archive_key for part in db.parts_of(conn, request_id)]
    if status not in (RequestStatus.FAILED, RequestStatus.REJECTED):
        return 0
    deleted = sum(store.delete(key) for key in dict.fromkeys([*recorded, *listed]))
    now = datetime.now(UTC).replace(tzinfo=None)
    deleted += sum(store.remove_abandoned_writes(now, prefix=folder) for folder in folders)
    with engine.begin() as conn:
        db.forget_failed_archive(conn, request_id)
        db.forget_parts(conn, request_id)
    return deleted


# --- 3. Dynamic partitions ----------------------------------------------------------------


def stale_partition_keys(
    engine: Engine, keys: Iterable[str], retention: timedelta, now: datetime
) -> list[str]:
    """The partition keys to delete: finished requests made before `now - retention`, and keys
    that name no request row (deleted by the platform, or not a request id at all).

    Open requests are kept whatever their age: their run needs the partition.
    """
    keys = list(dict.fromkeys(keys))
    with engine.connect() as conn:
        rows = db.status_and_time_of(conn, [int(k) for k in keys if k.isdigit()])
    cutoff = now - retention

    def is_stale(key: str) -> bool:
        row = rows.get(int(key)) if key.isdigit() else None
        if row is None:
            return True
        status, requested_at = row
        return status not in OPEN_STATUSES and requested_at < cutoff

    return [key for key in keys if is_stale(key)]


# --- 4. Late requests ---------------------------------------------------------------------


@dataclass
class LateAlerts:
    sent: int = 0
    deferred: int = 0  # left for the next tick after a transient mail failure
    failed: list[int] = field(default_factory=list)  # permanent refusals


def alert_late_requests(
    engine: Engine,
    mailer: Mailer,
    *,
    late_after: timedelta,
    now: datetime,
    limit: int = 200,
) -> LateAlerts:
    """Email support once about each late request, remembered in backup_alerts (kind 'late').

    The row is written only after the send succeeded: a crash in between sends the alert twice,
    which beats never sending it. A transient failure stops the batch (the provider is likely
    down for the rest too) and leaves it for the next tick.
    """
    with engine.connect() as conn:
        due = db.unalerted_waiting_requests(conn, LATE_ALERT, now - late_after, limit)
    result = LateAlerts()
    for position, request in enumerate(due):
        email = emails.late_alert_to_support(
            support_email=mailer.support_email,
            from_email=mailer.from_email,
            request_id=request.id,
            subscription_id=request.subscription_id,
            status=request.status,
            requested_at=request.requested_at,
            run_id=request.run_id,
        )
        try:
            mailer.send(email)
        except MailError as exc:
            if exc.transient:
                result.deferred = len(due) - position
                log.warning(
                    "late alert for request %s deferred: the mail provider failed transiently "
                    "(status %s)",
                    request.id,
                    exc.status,
                )
                break
            log.error(
                "late alert for request %s refused permanently (status %s): check the support "
                "address and the sender",
                request.id,
                exc.status,
            )
            result.failed.append(request.id)
            continue
        db.record_alert(engine, request.id, LATE_ALERT, now)
        result.sent += 1
    return result


# --- 5. Quota windows ---------------------------------------------------------------------


@dataclass(frozen=True)
class QuotaRepair:
    written: int
    corrected: int  # rows that were wrong or missing: 0 when every change kept them current
    at_limit: int = 0  # subscriptions that may not request a backup now


def refresh_quota_windows(engine: Engine, now: datetime, batch: int = 500) -> QuotaRepair:
    """Re-derive backup_quota_windows for every subscription with a request, as seen at `now`: a
    repair pass, since each change that counts already updates its subscription's window.

    Subscriptions are walked in id order, `batch` at a time; each batch replaces the rows of its
    id range in one transaction, which also drops rows of subscriptions in that range that no
    longer have any request.
    """
    written = corrected = at_limit = 0
    after: int | None = None
    while True:
        with engine.begin() as conn:
            subscription_ids = db.subscriptions_with_requests(conn, after=after, limit=batch)
            history = db.request_history(conn, subscription_ids)
            windows = {sid: quota_window(history[sid], now) for sid in subscription_ids}
            full_page = len(subscription_ids) == batch
            page_written, page_corrected = db.replace_quota_windows(
                conn,
                after=after,
                through=subscription_ids[-1] if full_page else None,
                windows=windows,
                now=now,
            )
            written += page_written
            corrected += page_corrected
            at_limit += sum(
                1
                for window in windows.values()
                if window.next_allowed_at is not None and window.next_allowed_at > now
            )
        if not full_page:
            return QuotaRepair(written, corrected, at_limit)
        after = subscription_ids[-1]
