"""Delivering an archive: sign its link, email it to the requester once, record it.

Used by the backup job's last step and by a re-sent link alike, so both behave the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine

from backup_pipeline import platform as db
from backup_pipeline.mail import Mailer, MailError, OutgoingEmail
from backup_pipeline.rules import emails
from backup_pipeline.rules.archive_entries import ArchiveResult
from backup_pipeline.rules.archive_names import download_name, part_key
from backup_pipeline.rules.checks import authorization_refusal
from backup_pipeline.rules.request_state import (
    Actor,
    BackupRequest,
    Requester,
    RequestStatus,
    Subscription,
)
from backup_pipeline.rules.spanish import clinic_zone, to_clinic_time
from backup_pipeline.services.archive import AssembledArchive
from backup_pipeline.services.failures import fail_if_revoked
from backup_pipeline.storage import ObjectNotFound, ObjectStore


class DeliveryRefused(Exception):
    """A permanent refusal: retrying will not help (the message says what a person should do)."""


class LinkUnavailable(DeliveryRefused):
    """The archive is gone or was never made: no new link can be given."""


@dataclass(frozen=True)
class Delivered:
    expires_at: datetime  # naive UTC
    email_sent_now: bool


def emailed_archive(
    engine: Engine, store: ObjectStore, request: BackupRequest | None, key: str
) -> list[ArchiveResult] | None:
    """The archive (every part) whose links and SHA-256 the requester already got, if each part
    is still there whole.

    A run killed after the email but before the request was marked delivered is re-run; a new
    zip (new time stamps) would not match the checksum in that email, and no second email goes.
    Only key, size and sha256 are filled in: nothing downstream needs the counts.
    """
    if request is None or request.email_sent_at is None or not request.archive_sha256:
        return None
    with engine.connect() as conn:
        recorded = db.parts_of(conn, request.id)
    if not recorded or recorded[0].archive_key != part_key(key, 1, len(recorded)):
        return None  # emailed under another name (the clinic was renamed): a new one is due
    kept = []
    for part in recorded:
        found = _read_whole(store, part.archive_key)
        if found is None or found != (part.size_bytes, part.sha256):
            return None
        kept.append(_recorded(part))
    return kept or None


def _recorded(part: db.ArchivePart) -> ArchiveResult:
    """A part as recorded: key, size and checksum (nothing downstream needs the counts)."""
    return ArchiveResult(
        key=part.archive_key,
        size=part.size_bytes,
        sha256=part.sha256,
        entries=0,
        files_copied=0,
        file_bytes=0,
    )


def _read_whole(store: ObjectStore, key: str) -> tuple[int, str] | None:
    digest = hashlib.sha256()
    size = 0
    try:
        with store.open_read(key) as src:
            while chunk := src.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
    except ObjectNotFound:
        return None
    return size, digest.hexdigest()


def deliver_after_run(
    engine: Engine,
    store: ObjectStore,
    mailer: Mailer,
    *,
    request_id: int,
    run_id: str,
    archive: AssembledArchive,
    link_ttl: timedelta,
) -> Delivered:
    """A run's last step: the requester's authorisation checked again right before the link is
    signed (it may have gone during the run: AuthorizationRevoked, the archive deleted), then
    deliver()."""
    fail_if_revoked(
        engine,
        mailer,
        store,
        request_id=request_id,
        run_id=run_id,
        checked_at="before its link was sent",
    )
    return deliver(
        engine,
        store,
        mailer,
        request_id=request_id,
        run_id=run_id,
        archive=archive,
        link_ttl=link_ttl,
    )


def deliver(
    engine: Engine,
    store: ObjectStore,
    mailer: Mailer,
    *,
    request_id: int,
    run_id: str,
    archive: AssembledArchive,
    link_ttl: timedelta,
) -> Delivered:
    """Record the archive, email its links unless the requester already has them, mark it
    delivered.

    A transient mail error raises MailError (the caller retries); a permanent one raises
    DeliveryRefused. The email is recorded right after it is sent, so a retry never sends twice.
    """
    request, subscription, requester = _request_parties(engine, request_id)
    with engine.connect() as conn:
        recorded = db.parts_of(conn, request_id)
    # Only the very archive the requester was sent (same parts, same checksums) skips the email:
    # a retry after the email keeps it; a rebuilt archive (the emailed one was lost or deleted)
    # gets an email of its own, whose checksums match what is there.
    already_emailed = request.email_sent_at is not None and [
        (part.archive_key, part.sha256) for part in recorded
    ] == [(part.key, part.sha256) for part in archive.parts]
    if already_emailed:
        # The requester already has a link and was told when it stops working: keep that.
        expires_at = request.link_expires_at or db.utcnow() + link_ttl
    else:
        expires_at = db.utcnow() + link_ttl
    previous = {part.archive_key for part in recorded}
    for stale in previous - {part.key for part in archive.parts}:
        store.delete(stale)  # an earlier run's parts under other names: nothing would expire them
    with engine.begin() as conn:
        # Before the email: a request that then fails still names its archive, which
        # housekeeping deletes when the link would have expired.
        _record_archive(conn, request_id, archive.parts, expires_at)
        if not archive.kept_emailed:
            # What the email lists, kept for a re-sent link's email. A kept archive carries no
            # list of its own: the one recorded when it was built stays.
            db.record_contents(conn, request_id, archive.contents)
    if not already_emailed:
        _send_links(
            engine,
            store,
            mailer,
            request_id=request_id,
            requester=requester,
            subscription=subscription,
            parts=archive.parts,
            link_ttl=link_ttl,
            expires_at=expires_at,
            contents=archive.contents,
        )
    with engine.begin() as conn:
        db.mark_delivered(conn, request_id, run_id)
    return Delivered(expires_at=expires_at, email_sent_now=not already_emailed)


def resend_link(
    engine: Engine,
    store: ObjectStore,
    mailer: Mailer,
    *,
    request_id: int,
    link_ttl: timedelta,
    actor: Actor,
) -> datetime:
    """Fresh signed links and an email for a delivered request whose archive still exists: the
    same email as the first (contents included), with the new links and expiry.

    Uses no quota: the request's status and counts are unchanged; the audit trail records who
    re-sent it and why. Returns the new expiry (UTC).
    """
    with engine.connect() as conn:
        request = db.get_request(conn, request_id)
        recorded = db.parts_of(conn, request_id)
        contents = db.contents_of(conn, request_id)
    if request is None:
        raise LinkUnavailable(f"backup request {request_id} does not exist")
    if request.status != RequestStatus.DELIVERED or not recorded:
        raise LinkUnavailable(
            f"request {request_id} is {request.status}: only a delivered request whose archive "
            "still exists can get a new link (an expired one needs a new backup request)"
        )
    if not all(store.exists(part.archive_key) for part in recorded):
        raise LinkUnavailable(f"the archive of request {request_id} no longer exists")
    _, subscription, requester = _request_parties(engine, request_id)
    refusal = authorization_refusal(requester, request.subscription_id, subscription.status)
    if refusal is not None:
        raise DeliveryRefused(
            f"request {request_id}: its requester is no longer authorised "
            f"({refusal.reason_code}); no new link is sent"
        )
    parts = [_recorded(part) for part in recorded]
    expires_at = db.utcnow() + link_ttl
    with engine.begin() as conn:
        # The new expiry first, and only while still delivered: housekeeping, which re-checks
        # both right before it deletes, then leaves this archive alone.
        if not db.extend_link(conn, request_id, link_expires_at=expires_at):
            raise LinkUnavailable(f"request {request_id} expired meanwhile; no new link is sent")
    _send_links(
        engine,
        store,
        mailer,
        request_id=request_id,
        requester=requester,
        subscription=subscription,
        parts=parts,
        link_ttl=link_ttl,
        expires_at=expires_at,
        contents=contents,  # the same list as the first email
        resent_by=actor,
    )
    return expires_at


def _request_parties(
    engine: Engine, request_id: int
) -> tuple[BackupRequest, Subscription, Requester]:
    with engine.connect() as conn:
        request = db.get_request(conn, request_id)
        subscription = db.get_subscription(conn, request.subscription_id) if request else None
        requester = db.get_requester(conn, request.requested_by_user_id) if request else None
    if request is None or subscription is None or requester is None:
        raise DeliveryRefused(
            f"request {request_id}: request, subscription or requester row is gone"
        )
    return request, subscription, requester


def _send_links(
    engine: Engine,
    store: ObjectStore,
    mailer: Mailer,
    *,
    request_id: int,
    requester: Requester,
    subscription: Subscription,
    parts: Sequence[ArchiveResult],
    link_ttl: timedelta,
    expires_at: datetime,
    contents: list[tuple[str, int]],
    resent_by: Actor | None = None,
) -> None:
    links = [
        emails.PartLink(
            link=store.signed_url(part.key, link_ttl, download_name(part.key)),
            file_name=download_name(part.key),
            size_bytes=part.size,
            sha256=part.sha256,
        )
        for part in parts
    ]
    email = link_email(
        mailer,
        requester=requester,
        subscription=subscription,
        request_id=request_id,
        link=links[0].link,
        expires_at=expires_at,
        size_bytes=sum(part.size for part in parts),
        sha256=parts[0].sha256,
        contents=contents,
        parts=links,
    )
    message_id = send_or_refuse(mailer, email)
    with engine.begin() as conn:
        _record_archive(conn, request_id, parts, expires_at)
        db.record_email_sent(conn, request_id, sent_at=db.utcnow(), message_id=message_id)
        if resent_by is not None:
            db.record_link_resent(conn, request_id, actor=resent_by, link_expires_at=expires_at)


def _record_archive(
    conn: Connection, request_id: int, parts: Sequence[ArchiveResult], expires_at: datetime
) -> None:
    """backup_requests names the first part (its key and checksum) and the archive's total
    size; backup_archive_parts every part."""
    db.record_archive(
        conn,
        request_id,
        archive_key=parts[0].key,
        size=sum(part.size for part in parts),
        sha256=parts[0].sha256,
        link_expires_at=expires_at,
    )
    db.record_parts(
        conn,
        request_id,
        [
            db.ArchivePart(number, len(parts), part.key, part.size, part.sha256)
            for number, part in enumerate(parts, start=1)
        ],
    )


def link_email(
    mailer: Mailer,
    *,
    requester: Requester,
    subscription: Subscription,
    request_id: int,
    link: str,
    expires_at: datetime,
    size_bytes: int,
    sha256: str,
    contents: list[tuple[str, int]],
    parts: Sequence[emails.PartLink] = (),
) -> OutgoingEmail:
    """The email with the download link(s), for a delivery and for a re-sent link alike."""
    zone = clinic_zone(subscription.timezone)
    return emails.delivered_email(
        to=requester.email,  # the requester's address now, not when the request was made
        clinic_name=subscription.name,
        link=link,
        expires_at_local=to_clinic_time(expires_at, zone.key),
        timezone_label=zone.key,
        size_bytes=size_bytes,
        sha256=sha256,
        contents=contents,
        support_email=mailer.support_email,
        from_email=mailer.from_email,
        request_id=request_id,
        parts=parts,
    )


def send_or_refuse(mailer: Mailer, email: OutgoingEmail) -> str:
    """Send; a transient refusal raises MailError for a retry, a permanent one DeliveryRefused."""
    try:
        return mailer.send(email)
    except MailError as exc:
        if exc.transient:
            raise
        raise DeliveryRefused(
            f"the mail provider refused the message permanently (status {exc.status}); "
            "check the requester's address in the platform"
        ) from exc
