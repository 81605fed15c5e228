"""Delivering an archive: sign its link, email it to the requester once, record it.

Used by the backup job's last step and by a re-sent link alike, so both behave the same.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine

from backup_pipeline import mail
from backup_pipeline.archive.assembly import AssembledArchive
from backup_pipeline.archive.entries import ArchiveResult
from backup_pipeline.archive.names import download_name
from backup_pipeline.checks import authorization_refusal
from backup_pipeline.request_state import (
    Actor,
    BackupRequest,
    Requester,
    RequestStatus,
    Subscription,
)
from backup_pipeline.resources import platform_db as db
from backup_pipeline.resources.mailer import MailerResource, MailError, OutgoingEmail
from backup_pipeline.spanish import clinic_zone, to_clinic_time
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
    store: ObjectStore, request: BackupRequest | None, key: str
) -> ArchiveResult | None:
    """The archive whose link and SHA-256 the requester already got, if it is still there whole.

    A run killed after the email but before the request was marked delivered is re-run; a new
    zip (new time stamps) would not match the checksum in that email, and no second email goes.
    Only key, size and sha256 are filled in: nothing downstream needs the counts.
    """
    if (
        request is None
        or request.email_sent_at is None
        or request.archive_key != key
        or not request.archive_sha256
    ):
        return None
    digest = hashlib.sha256()
    size = 0
    try:
        with store.open_read(key) as src:
            while chunk := src.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
    except ObjectNotFound:
        return None
    if size != request.archive_size_bytes or digest.hexdigest() != request.archive_sha256:
        return None
    return ArchiveResult(
        key=key, size=size, sha256=digest.hexdigest(), entries=0, files_copied=0, file_bytes=0
    )


def deliver(
    engine: Engine,
    store: ObjectStore,
    mailer: MailerResource,
    *,
    request_id: int,
    run_id: str,
    archive: AssembledArchive,
    link_ttl: timedelta,
) -> Delivered:
    """Record the archive, email its link unless the requester already has one, mark delivered.

    A transient mail error raises MailError (the caller retries); a permanent one raises
    DeliveryRefused. The email is recorded right after it is sent, so a retry never sends twice.
    """
    request, subscription, requester = _request_parties(engine, request_id)
    result = archive.result
    already_emailed = request.email_sent_at is not None
    if already_emailed:
        # The requester already has a link and was told when it stops working: keep that.
        expires_at = request.link_expires_at or db.utcnow() + link_ttl
    else:
        expires_at = db.utcnow() + link_ttl
    with engine.begin() as conn:
        # Before the email: a request that then fails still names its archive, which
        # housekeeping deletes when the link would have expired.
        _record_archive(conn, request_id, result, expires_at)
    if not already_emailed:
        link = store.signed_url(result.key, link_ttl, archive.download_name)
        _send_link(
            engine,
            mailer,
            request_id=request_id,
            requester=requester,
            subscription=subscription,
            link=link,
            expires_at=expires_at,
            result=result,
            contents=archive.contents,
        )
    with engine.begin() as conn:
        db.mark_delivered(conn, request_id, run_id)
    return Delivered(expires_at=expires_at, email_sent_now=not already_emailed)


def resend_link(
    engine: Engine,
    store: ObjectStore,
    mailer: MailerResource,
    *,
    request_id: int,
    link_ttl: timedelta,
    actor: Actor,
) -> datetime:
    """A fresh signed link and email for a delivered request whose archive still exists.

    Uses no quota: the request's status and counts are unchanged; the audit trail records who
    re-sent it and why. Returns the new expiry (UTC).
    """
    with engine.connect() as conn:
        request = db.get_request(conn, request_id)
    if request is None:
        raise LinkUnavailable(f"backup request {request_id} does not exist")
    if request.status != RequestStatus.DELIVERED or not request.archive_key:
        raise LinkUnavailable(
            f"request {request_id} is {request.status}: only a delivered request whose archive "
            "still exists can get a new link (an expired one needs a new backup request)"
        )
    if not store.exists(request.archive_key):
        raise LinkUnavailable(f"the archive of request {request_id} no longer exists")
    _, subscription, requester = _request_parties(engine, request_id)
    refusal = authorization_refusal(requester, request.subscription_id, subscription.status)
    if refusal is not None:
        raise DeliveryRefused(
            f"request {request_id}: its requester is no longer authorised "
            f"({refusal.reason_code}); no new link is sent"
        )
    expires_at = db.utcnow() + link_ttl
    link = store.signed_url(request.archive_key, link_ttl, download_name(request.archive_key))
    result = ArchiveResult(
        key=request.archive_key,
        size=request.archive_size_bytes or 0,
        sha256=request.archive_sha256 or "",
        entries=0,
        files_copied=0,
        file_bytes=0,
    )
    _send_link(
        engine,
        mailer,
        request_id=request_id,
        requester=requester,
        subscription=subscription,
        link=link,
        expires_at=expires_at,
        result=result,
        contents=[],
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


def _send_link(
    engine: Engine,
    mailer: MailerResource,
    *,
    request_id: int,
    requester: Requester,
    subscription: Subscription,
    link: str,
    expires_at: datetime,
    result: ArchiveResult,
    contents: list[tuple[str, int]],
    resent_by: Actor | None = None,
) -> None:
    email = link_email(
        mailer,
        requester=requester,
        subscription=subscription,
        request_id=request_id,
        link=link,
        expires_at=expires_at,
        size_bytes=result.size,
        sha256=result.sha256,
        contents=contents,
    )
    message_id = send_or_refuse(mailer, email)
    with engine.begin() as conn:
        _record_archive(conn, request_id, result, expires_at)
        db.record_email_sent(conn, request_id, sent_at=db.utcnow(), message_id=message_id)
        if resent_by is not None:
            db.record_link_resent(conn, request_id, actor=resent_by, link_expires_at=expires_at)


def _record_archive(
    conn: Connection, request_id: int, result: ArchiveResult, expires_at: datetime
) -> None:
    db.record_archive(
        conn,
        request_id,
        archive_key=result.key,
        size=result.size,
        sha256=result.sha256,
        link_expires_at=expires_at,
    )


def link_email(
    mailer: MailerResource,
    *,
    requester: Requester,
    subscription: Subscription,
    request_id: int,
    link: str,
    expires_at: datetime,
    size_bytes: int,
    sha256: str,
    contents: list[tuple[str, int]],
) -> OutgoingEmail:
    """The email with the download link, for a delivery and for a re-sent link alike."""
    zone = clinic_zone(subscription.timezone)
    return mail.delivered_email(
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
    )


def send_or_refuse(mailer: MailerResource, email: OutgoingEmail) -> str:
    """Send; a transient refusal raises MailError for a retry, a permanent one DeliveryRefused."""
    try:
        return mailer.get_mailer().send(email)
    except MailError as exc:
        if exc.transient:
            raise
        raise DeliveryRefused(
            f"the mail provider refused the message permanently (status {exc.status}); "
            "check the requester's address in the platform"
        ) from exc
