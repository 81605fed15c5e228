"""The housekeeping the schedules do: expire links, clear staging, alert on late requests, refresh quotas.

Plain functions over an Engine, an ObjectStore and a Mailer, with `now` (naive UTC) passed in so
that tests drive time. Every function is idempotent (a second call right after the first finds
nothing to do) and bounded (`limit`), and commits each item on its own so that a failure midway
keeps what was done.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, and_, delete, insert, or_, select
from sqlalchemy.exc import IntegrityError

from backup_pipeline import mail
from backup_pipeline import tables as t
from backup_pipeline.quota import PastRequest, quota_window
from backup_pipeline.resources import platform_db as db
from backup_pipeline.resources.mailer import Mailer, MailError
from backup_pipeline.storage import ObjectStore

log = logging.getLogger(__name__)

FINISHED_STATUSES = ("delivered", "failed", "expired", "rejected")
# Not delivered long after it was made: the clinic is still waiting (PRODUCT.md: support hears of
# it after 24 hours, before the user's 48-hour fallback).
LATE_STATUSES = ("pending", "running", "failed")
LATE_ALERT = "late"
STAGING_ROOT = "staging/"
IN_CHUNK = 500  # ids per IN (...) list: well under every driver's parameter limit


class HousekeepingError(Exception):
    """Some items failed while the others were done; the message holds counts and request ids only."""


def _chunks(items: Sequence, size: int = IN_CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
    r = t.backup_requests.c
    with engine.connect() as conn:
        due = conn.execute(
            select(r.id, r.archive_key, r.status)
            .where(
                or_(
                    r.status == "delivered",
                    and_(r.status == "failed", r.archive_key.is_not(None)),
                ),
                r.link_expires_at <= now,
            )
            .order_by(r.link_expires_at, r.id)
            .limit(limit)
        ).all()
    expired = 0
    failed: list[int] = []
    for request_id, archive_key, status in due:
        try:
            if archive_key:
                store.delete(archive_key)
            with engine.begin() as conn:
                if status == "delivered":
                    expired += db.mark_expired(conn, request_id)
                else:
                    db.forget_failed_archive(conn, request_id)
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
    """Delete `staging/<request_id>/...` objects of finished requests (a failed run leaves them).

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
    statuses = _statuses(engine, list(keys_by_request))
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


def _statuses(engine: Engine, request_ids: Sequence[int]) -> dict[int, str]:
    r = t.backup_requests.c
    found: dict[int, str] = {}
    with engine.connect() as conn:
        for chunk in _chunks(sorted(request_ids)):
            found.update(
                (row.id, row.status)
                for row in conn.execute(select(r.id, r.status).where(r.id.in_(chunk)))
            )
    return found


# --- 3. Dynamic partitions ----------------------------------------------------------------


def stale_partition_keys(
    engine: Engine, keys: Iterable[str], retention: timedelta, now: datetime
) -> list[str]:
    """The partition keys to delete: finished requests made before `now - retention`, and keys
    that name no request row (deleted by the platform, or not a request id at all).

    Open requests are kept whatever their age: their run needs the partition.
    """
    r = t.backup_requests.c
    keys = list(dict.fromkeys(keys))
    ids = [int(k) for k in keys if k.isdigit()]
    rows: dict[int, tuple[str, datetime]] = {}
    with engine.connect() as conn:
        for chunk in _chunks(sorted(set(ids))):
            for request_id, status, requested_at in conn.execute(
                select(r.id, r.status, r.requested_at).where(r.id.in_(chunk))
            ):
                rows[request_id] = (status, requested_at)
    cutoff = now - retention

    def is_stale(key: str) -> bool:
        row = rows.get(int(key)) if key.isdigit() else None
        if row is None:
            return True
        status, requested_at = row
        return status not in db.OPEN_STATUSES and requested_at < cutoff

    return [key for key in keys if is_stale(key)]


# --- 4. Late requests ---------------------------------------------------------------------


@dataclass
class LateAlerts:
    sent: int = 0
    deferred: int = 0  # left for the next tick after a transient mail failure
    failed: list[int] = field(default_factory=list)  # permanent refusals


def late_requests(
    conn: Connection, late_after: timedelta, now: datetime, limit: int
) -> list[db.BackupRequest]:
    """Requests not delivered `late_after` after they were made, and not alerted about yet."""
    r, a = t.backup_requests.c, t.backup_alerts.c
    rows = (
        conn.execute(
            select(t.backup_requests)
            .outerjoin(t.backup_alerts, and_(a.request_id == r.id, a.kind == LATE_ALERT))
            .where(
                r.status.in_(LATE_STATUSES),
                r.requested_at <= now - late_after,
                a.request_id.is_(None),
            )
            .order_by(r.requested_at, r.id)
            .limit(limit)
        )
        .mappings()
        .all()
    )
    return [db.BackupRequest(**row) for row in rows]


def alert_late_requests(
    engine: Engine,
    mailer: Mailer,
    *,
    support_email: str,
    from_email: str,
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
        due = late_requests(conn, late_after, now, limit)
    result = LateAlerts()
    for position, request in enumerate(due):
        email = mail.late_alert_to_support(
            support_email=support_email,
            from_email=from_email,
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
        try:
            with engine.begin() as conn:
                conn.execute(
                    insert(t.backup_alerts).values(
                        request_id=request.id, kind=LATE_ALERT, sent_at=now
                    )
                )
        except IntegrityError:
            pass  # another evaluation recorded it meanwhile; the alert went out either way
        result.sent += 1
    return result


# --- 5. Quota windows ---------------------------------------------------------------------


def refresh_quota_windows(engine: Engine, now: datetime, batch: int = 500) -> int:
    """Rewrite backup_quota_windows for every subscription with a request, as seen at `now`.

    Subscriptions are walked in id order, `batch` at a time; each batch replaces the rows of its
    id range (delete then insert, in one transaction: plain SQL on SQLite and PostgreSQL alike),
    which also drops rows of subscriptions in that range that no longer have any request.
    Returns how many rows were written.
    """
    r, q = t.backup_requests.c, t.backup_quota_windows.c
    written = 0
    after: int | None = None
    while True:
        with engine.begin() as conn:
            page = select(r.subscription_id).distinct().order_by(r.subscription_id).limit(batch)
            if after is not None:
                page = page.where(r.subscription_id > after)
            subscription_ids = list(conn.execute(page).scalars())
            history: dict[int, list[PastRequest]] = defaultdict(list)
            if subscription_ids:
                for subscription_id, requested_at, status in conn.execute(
                    select(r.subscription_id, r.requested_at, r.status).where(
                        r.subscription_id.in_(subscription_ids)
                    )
                ):
                    history[subscription_id].append(PastRequest(requested_at, status))
            stale = delete(t.backup_quota_windows)
            if after is not None:
                stale = stale.where(q.subscription_id > after)
            if len(subscription_ids) == batch:
                stale = stale.where(q.subscription_id <= subscription_ids[-1])
            conn.execute(stale)
            rows = []
            for subscription_id in subscription_ids:
                window = quota_window(history[subscription_id], now)
                rows.append(
                    {
                        "subscription_id": subscription_id,
                        "last_counted_backup_at": window.last_counted_backup_at,
                        "next_allowed_at": window.next_allowed_at,
                        "backups_last_360_days": window.backups_last_360_days,
                        "updated_at": now,
                    }
                )
            if rows:
                conn.execute(insert(t.backup_quota_windows), rows)
            written += len(rows)
        if len(subscription_ids) < batch:
            return written
        after = subscription_ids[-1]
