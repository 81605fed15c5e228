"""Whether a pending backup request may run, and if not, why in words the clinic understands."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from backup_pipeline.rules import quota
from backup_pipeline.rules.request_state import OPEN_STATUSES, Requester, RequestStatus
from backup_pipeline.rules.spanish import (
    spanish_count,
    spanish_date,
    spanish_moment,
    spanish_number,
    to_clinic_time,
)

REQUESTER_NOT_IN_SUBSCRIPTION = "requester_not_in_subscription"
SUBSCRIPTION_INACTIVE = "subscription_inactive"
REQUESTER_INACTIVE = "requester_inactive"
REQUESTER_NOT_AUTHORIZED = "requester_not_authorized"
BACKUP_IN_PROGRESS = "backup_in_progress"
QUOTA_EXCEEDED = "quota_exceeded"


@dataclass(frozen=True)
class RequestUnderReview:
    id: int
    subscription_id: int
    requested_by_user_id: int
    requested_at: datetime  # naive UTC


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason_code: str | None  # one of the constants above; None when accepted
    status_detail: str | None  # Spanish, for the clinic; None when accepted


ACCEPTED = Decision(accepted=True, reason_code=None, status_detail=None)

# A double click: only the request already under way makes the backup, and its link goes only to
# whoever made it (the status_detail never names another user).
IN_PROGRESS_DETAIL = (
    "Ya hay otra solicitud de respaldo de esta suscripción en proceso, así que esta no se "
    "procesará y no cuenta para el límite de respaldos. El correo con el enlace de descarga se "
    "enviará solo a la persona que hizo esa otra solicitud; si fue usted, recibirá un solo "
    "correo cuando el respaldo esté listo."
)


def _rejected(reason_code: str, status_detail: str) -> Decision:
    return Decision(accepted=False, reason_code=reason_code, status_detail=status_detail)


def authorization_refusal(
    requester: Requester | None, subscription_id: int, subscription_status: str | None
) -> Decision | None:
    """Why the requester may not have this subscription's backup now, or None when they may.

    Checked when a request is reviewed, again when its run starts, and right before its link is
    signed and sent (PRODUCT.md: the authorisation may be revoked while the request waits).
    """
    if requester is None or requester.subscription_id != subscription_id:
        return _rejected(
            REQUESTER_NOT_IN_SUBSCRIPTION,
            "El usuario que solicitó el respaldo no pertenece a esta suscripción.",
        )
    if subscription_status != "active":
        return _rejected(
            SUBSCRIPTION_INACTIVE,
            "La suscripción no está activa, por lo que no es posible generar el respaldo de "
            "información. Si tiene dudas, comuníquese con el equipo de soporte.",
        )
    if not requester.is_active:
        return _rejected(
            REQUESTER_INACTIVE, "El usuario que solicitó el respaldo está desactivado."
        )
    if not requester.can_request_backup:
        return _rejected(
            REQUESTER_NOT_AUTHORIZED,
            "El usuario no tiene autorización para solicitar respaldos de información. "
            "Un administrador de la cuenta puede otorgarla.",
        )
    return None


def revoked_detail(refusal: Decision) -> str:
    """The status_detail of a request whose authorisation ended before it was delivered."""
    return (
        f"No se entregó el respaldo: {refusal.status_detail} "
        "Esta solicitud no cuenta para el límite de respaldos."
    )


def review_request(
    request: RequestUnderReview,
    *,
    requester: Requester | None,
    subscription_status: str | None,
    timezone: str | None,
    history: Sequence[quota.PastRequest],
    other_open: Sequence[tuple[int, str]],
) -> Decision:
    """Decide a pending request; the first failing check gives the reason.

    - `requester`: the user in `requested_by_user_id`, or None when no such user exists.
    - `subscription_status`: `subscriptions.status`, or None when the subscription is missing.
    - `timezone`: `subscriptions.timezone`, used to show the next allowed date.
    - `history`: this subscription's OTHER requests, every status (the quota picks what counts).
    - `other_open`: (id, status) of the same rows as `history`; rows neither pending nor running
      and the request's own id are ignored, so one query may feed both arguments.
    """
    if requester is not None and requester.id != request.requested_by_user_id:
        raise ValueError(f"requester {requester.id} is not the user who made request {request.id}")
    refusal = authorization_refusal(requester, request.subscription_id, subscription_status)
    if refusal is not None:
        return refusal
    # Checked before the quota: of a double click, the oldest request (lowest id) makes the one
    # backup and the others say so, rather than blaming a quota the clinic has not used up.
    # A running request always wins, whatever its id: its backup is already being made.
    if any(_wins_over(request.id, other_id, status) for other_id, status in other_open):
        return _rejected(BACKUP_IN_PROGRESS, IN_PROGRESS_DETAIL)
    # Past the check above, every open request left is a newer pending one (an older or a running
    # one would have been a double click). It must not use up this request's turn, even when it
    # carries the very same requested_at: a double click within the clock's resolution.
    # Later requests are left out here too (quota.is_allowed ignores them) so that the date
    # shown comes from the same requests that decided the rejection.
    earlier = [
        r
        for r in history
        if r.status not in OPEN_STATUSES and r.requested_at <= request.requested_at
    ]
    refused = quota.refusal(request.requested_at, earlier)
    if refused is not None:
        return _rejected(QUOTA_EXCEEDED, quota_detail(refused, timezone))
    return ACCEPTED


def _wins_over(request_id: int, other_id: int, other_status: str) -> bool:
    if other_id == request_id or other_status not in OPEN_STATUSES:
        return False
    return other_status == RequestStatus.RUNNING or other_id < request_id


def quota_detail(refused: quota.QuotaRefusal, timezone: str | None) -> str:
    """The status_detail of a request the quota refuses: the rule that binds, in the clinic's
    words, and the moment (clinic time) from which a new request is accepted."""
    allowed = _ceil_to_minute(to_clinic_time(refused.allowed_from, timezone))
    backups = spanish_count(quota.MAX_IN_WINDOW, "respaldo", "respaldos")
    days = spanish_count(quota.WINDOW.days, "día", "días")
    window = f"los {backups} que se permiten en {days}"
    if refused.rule == quota.QuotaRule.MAX_IN_WINDOW:
        rule = f"Esta suscripción ya usó {window}."
    else:
        last = spanish_date(to_clinic_time(refused.last_counted_at, timezone).date())
        gap = (
            f"entre un respaldo y el siguiente deben pasar al menos "
            f"{spanish_count(quota.MIN_GAP.days, 'día', 'días')} (el anterior se solicitó "
            f"el {last})"
        )
        if refused.counted_in_window >= quota.MAX_IN_WINDOW:
            rule = f"Esta suscripción ya usó {window}, y además {gap}."
        else:
            used = spanish_number(refused.counted_in_window)
            rule = f"Esta suscripción ha usado {used} de {window}, pero {gap}."
    return f"{rule} Podrá solicitar el siguiente a partir del {spanish_moment(allowed)}."


def _ceil_to_minute(moment: datetime) -> datetime:
    # The text shows minutes; rounding down would name a minute at which a request still fails.
    truncated = moment.replace(second=0, microsecond=0)
    return truncated if truncated == moment else truncated + timedelta(minutes=1)
