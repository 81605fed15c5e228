"""Reviewing a pending backup request: who may ask, double clicks, the quota, the Spanish reasons."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup_pipeline.rules.checks import (
    ACCEPTED,
    BACKUP_IN_PROGRESS,
    QUOTA_EXCEEDED,
    REQUESTER_INACTIVE,
    REQUESTER_NOT_AUTHORIZED,
    REQUESTER_NOT_IN_SUBSCRIPTION,
    SUBSCRIPTION_INACTIVE,
    Decision,
    Requester,
    RequestUnderReview,
    review_request,
)
from backup_pipeline.rules.quota import PastRequest

SUBSCRIPTION = 7
REQUEST = RequestUnderReview(
    id=100, subscription_id=SUBSCRIPTION, requested_by_user_id=3, requested_at=datetime(2027, 3, 1)
)
REQUESTER = Requester(id=3, subscription_id=SUBSCRIPTION, is_active=True, can_request_backup=True)

# One backup used, the second asked for too soon: the 180-day gap binds, not the limit of two.
QUOTA_TEXT = (
    "Esta suscripción ha usado 1 de los 2 respaldos que se permiten en 360 días, pero entre un "
    "respaldo y el siguiente deben pasar al menos 180 días (el anterior se solicitó el {last}). "
    "Podrá solicitar el siguiente a partir del {when}."
)
# Two backups in the window: the limit of two binds.
WINDOW_TEXT = (
    "Esta suscripción ya usó los 2 respaldos que se permiten en 360 días. Podrá solicitar el "
    "siguiente a partir del {when}."
)


@dataclass(frozen=True)
class OtherRequest:
    """A sibling row of backup_requests, split below into the two views review_request takes."""

    id: int
    requested_at: datetime
    status: str


def review(
    request: RequestUnderReview = REQUEST,
    *,
    requester: Requester | None = REQUESTER,
    subscription_status: str | None = "active",
    timezone: str | None = "America/Mexico_City",
    other_requests: tuple[OtherRequest, ...] = (),
) -> Decision:
    return review_request(
        request,
        requester=requester,
        subscription_status=subscription_status,
        timezone=timezone,
        history=[PastRequest(o.requested_at, o.status) for o in other_requests],
        other_open=[(o.id, o.status) for o in other_requests],
    )


def delivered_at(requested_at: datetime, request_id: int = 50) -> OtherRequest:
    return OtherRequest(id=request_id, requested_at=requested_at, status="delivered")


def test_an_authorized_active_user_of_an_active_subscription_is_accepted():
    assert review() == ACCEPTED
    assert review() == Decision(accepted=True, reason_code=None, status_detail=None)


@pytest.mark.parametrize(
    "requester",
    [None, replace(REQUESTER, subscription_id=SUBSCRIPTION + 1)],
    ids=["missing", "other"],
)
def test_a_requester_outside_the_subscription_is_rejected(requester):
    assert review(requester=requester) == Decision(
        False,
        REQUESTER_NOT_IN_SUBSCRIPTION,
        "El usuario que solicitó el respaldo no pertenece a esta suscripción.",
    )


@pytest.mark.parametrize("status", [None, "suspended", "cancelled", "trial", ""])
def test_a_missing_or_inactive_subscription_is_rejected(status):
    assert review(subscription_status=status) == Decision(
        False,
        SUBSCRIPTION_INACTIVE,
        "La suscripción no está activa, por lo que no es posible generar el respaldo de "
        "información. Si tiene dudas, comuníquese con el equipo de soporte.",
    )


def test_a_deactivated_requester_is_rejected():
    assert review(requester=replace(REQUESTER, is_active=False)) == Decision(
        False, REQUESTER_INACTIVE, "El usuario que solicitó el respaldo está desactivado."
    )


def test_a_requester_without_backup_permission_is_rejected():
    assert review(requester=replace(REQUESTER, can_request_backup=False)) == Decision(
        False,
        REQUESTER_NOT_AUTHORIZED,
        "El usuario no tiene autorización para solicitar respaldos de información. "
        "Un administrador de la cuenta puede otorgarla.",
    )


def test_the_first_failing_check_in_order_gives_the_reason():
    # Every check fails at first; fixing them one at a time reveals the next, in the documented
    # order, down to acceptance.
    kwargs: dict = {
        "requester": Requester(id=3, subscription_id=99, is_active=False, can_request_backup=False),
        "subscription_status": "suspended",
        "other_requests": (
            OtherRequest(id=1, requested_at=datetime(2027, 2, 28), status="running"),
            delivered_at(datetime(2027, 2, 1)),
        ),
    }
    fixes = [
        {"requester": replace(kwargs["requester"], subscription_id=SUBSCRIPTION)},
        {"subscription_status": "active"},
        {"requester": replace(REQUESTER, can_request_backup=False)},
        {"requester": REQUESTER},
        {"other_requests": kwargs["other_requests"][1:]},
        {"other_requests": ()},
    ]
    reasons = [review(**kwargs).reason_code]
    for fix in fixes:
        kwargs.update(fix)
        reasons.append(review(**kwargs).reason_code)
    assert reasons == [
        REQUESTER_NOT_IN_SUBSCRIPTION,
        SUBSCRIPTION_INACTIVE,
        REQUESTER_INACTIVE,
        REQUESTER_NOT_AUTHORIZED,
        BACKUP_IN_PROGRESS,
        QUOTA_EXCEEDED,
        None,
    ]


def test_a_user_id_mismatch_is_a_caller_bug_not_a_rejection():
    with pytest.raises(ValueError, match="not the user who made request 100"):
        review(requester=replace(REQUESTER, id=4))


# Only the request already under way makes the backup, and its email goes only to whoever made it.
DOUBLE_CLICK = Decision(
    False,
    BACKUP_IN_PROGRESS,
    "Ya hay otra solicitud de respaldo de esta suscripción en proceso, así que esta no se "
    "procesará y no cuenta para el límite de respaldos. El correo con el enlace de descarga se "
    "enviará solo a la persona que hizo esa otra solicitud; si fue usted, recibirá un solo "
    "correo cuando el respaldo esté listo.",
)


def test_of_a_double_click_the_older_pending_request_wins():
    older = OtherRequest(id=99, requested_at=REQUEST.requested_at, status="pending")
    assert review(other_requests=(older,)) == DOUBLE_CLICK


def test_a_newer_pending_request_does_not_block_the_older_one():
    newer = OtherRequest(
        id=101, requested_at=REQUEST.requested_at + timedelta(seconds=1), status="pending"
    )
    assert review(other_requests=(newer,)) == ACCEPTED


def test_a_running_request_always_wins_whatever_its_id():
    running = OtherRequest(id=101, requested_at=REQUEST.requested_at, status="running")
    assert review(other_requests=(running,)) == DOUBLE_CLICK


@pytest.mark.parametrize("status", ["failed", "rejected", "delivered", "expired"])
def test_finished_requests_are_not_a_backup_in_progress(status):
    # Far enough in the past that the quota does not reject either.
    finished = OtherRequest(id=1, requested_at=datetime(2025, 1, 1), status=status)
    assert review(other_requests=(finished,)) == ACCEPTED


def test_the_request_itself_among_the_others_is_ignored():
    itself = OtherRequest(id=REQUEST.id, requested_at=REQUEST.requested_at, status="pending")
    assert review(other_requests=(itself,)) == ACCEPTED


def test_simultaneous_double_click_makes_exactly_one_backup():
    # Both rows carry the same requested_at; the lower id is accepted, the other says why not.
    first = replace(REQUEST, id=100)
    second = replace(REQUEST, id=101)
    as_other = {r.id: OtherRequest(r.id, r.requested_at, "pending") for r in (first, second)}
    assert review(first, other_requests=(as_other[101],)) == ACCEPTED
    assert review(second, other_requests=(as_other[100],)) == DOUBLE_CLICK
    # After the first started running, a late review of the second still blames the double click.
    running_first = replace(as_other[100], status="running")
    assert review(second, other_requests=(running_first,)) == DOUBLE_CLICK


def test_a_double_click_over_an_exhausted_quota_is_rejected_for_the_double_click():
    older_pending = OtherRequest(id=99, requested_at=REQUEST.requested_at, status="pending")
    recent = delivered_at(REQUEST.requested_at - timedelta(days=10))
    assert review(other_requests=(recent, older_pending)) == DOUBLE_CLICK


def test_a_delivered_backup_within_180_days_rejects_with_the_next_date_in_the_clinics_zone():
    previous = delivered_at(datetime(2027, 1, 16, 18, 0))  # 12:00 in Mexico City
    decision = review(other_requests=(previous,))
    assert decision == Decision(
        False,
        QUOTA_EXCEEDED,
        QUOTA_TEXT.format(
            last="16 de enero de 2027",
            when="15 de julio de 2027, 12:00, hora central (Ciudad de México)",
        ),
    )


def test_a_boundary_at_three_utc_shows_the_previous_day_in_mexico_city():
    previous = delivered_at(datetime(2027, 1, 17, 3, 0))  # next allowed: 2027-07-16 03:00 UTC
    decision = review(other_requests=(previous,))
    assert decision.status_detail == QUOTA_TEXT.format(
        last="16 de enero de 2027",
        when="15 de julio de 2027, 21:00, hora central (Ciudad de México)",
    )


@pytest.mark.parametrize(
    ("timezone", "when"),
    [
        (
            "America/Tijuana",
            "15 de julio de 2027, 20:00, hora del Pacífico (Tijuana)",
        ),  # summer time, UTC-7
        ("America/Cancun", "15 de julio de 2027, 22:00, hora oriental (Cancún)"),  # UTC-5 all year
        ("UTC", "16 de julio de 2027, 03:00, hora GMT+00:00"),
        (
            "Not/AZone",
            "15 de julio de 2027, 21:00, hora central (Ciudad de México)",
        ),  # unknown: the platform's default
    ],
)
def test_the_next_date_is_written_in_the_subscriptions_time_zone(timezone, when):
    previous = delivered_at(datetime(2027, 1, 17, 3, 0))
    decision = review(timezone=timezone, other_requests=(previous,))
    # The previous backup's date is the clinic's date too: 03:00 UTC is the evening before in
    # Mexico.
    last = "17 de enero de 2027" if timezone == "UTC" else "16 de enero de 2027"
    assert decision.status_detail == QUOTA_TEXT.format(last=last, when=when)


def test_the_time_shown_is_rounded_up_so_a_request_at_that_minute_is_allowed():
    previous = delivered_at(datetime(2027, 1, 16, 18, 0, 30))
    decision = review(other_requests=(previous,))
    assert decision.status_detail == QUOTA_TEXT.format(
        last="16 de enero de 2027",
        when="15 de julio de 2027, 12:01, hora central (Ciudad de México)",
    )
    at_the_minute_shown = replace(REQUEST, requested_at=datetime(2027, 7, 15, 18, 1))
    assert review(at_the_minute_shown, other_requests=(previous,)) == ACCEPTED


def test_two_backups_in_360_days_reject_until_the_first_leaves_the_window():
    first = OtherRequest(id=1, requested_at=datetime(2027, 1, 16, 18, 0), status="expired")
    second = OtherRequest(id=2, requested_at=datetime(2027, 7, 15, 18, 0), status="delivered")
    request = replace(REQUEST, requested_at=datetime(2027, 12, 1))
    decision = review(request, other_requests=(first, second))
    assert decision.status_detail == WINDOW_TEXT.format(
        when="11 de enero de 2028, 12:00, hora central (Ciudad de México)"
    )


@pytest.mark.parametrize("status", ["failed", "rejected"])
def test_a_failed_or_rejected_request_costs_the_clinic_nothing(status):
    yesterday = OtherRequest(
        id=1, requested_at=REQUEST.requested_at - timedelta(days=1), status=status
    )
    assert review(other_requests=(yesterday,)) == ACCEPTED


def test_exactly_180_days_after_the_previous_backup_is_accepted():
    previous = delivered_at(REQUEST.requested_at - timedelta(days=180))
    assert review(other_requests=(previous,)) == ACCEPTED
    almost = delivered_at(REQUEST.requested_at - timedelta(days=179, hours=23, minutes=59))
    assert review(other_requests=(almost,)).reason_code == QUOTA_EXCEEDED


def test_a_later_request_does_not_use_up_an_earlier_ones_turn():
    # Reviewed late (say the sensor was down): a newer request that already ran does not count
    # against this one; the newer one is the quota's problem, not this one's.
    later = OtherRequest(
        id=150, requested_at=REQUEST.requested_at + timedelta(days=1), status="delivered"
    )
    assert review(other_requests=(later,)) == ACCEPTED


review_inputs = st.fixed_dictionaries(
    {
        "requester": st.one_of(
            st.none(),
            st.builds(
                Requester,
                id=st.just(REQUESTER.id),
                subscription_id=st.sampled_from([SUBSCRIPTION, SUBSCRIPTION + 1]),
                is_active=st.booleans(),
                can_request_backup=st.booleans(),
            ),
        ),
        "subscription_status": st.sampled_from([None, "active", "suspended"]),
        "timezone": st.sampled_from(["America/Mexico_City", "America/Tijuana", "Europe/Madrid"]),
        "other_requests": st.lists(
            st.builds(
                OtherRequest,
                id=st.integers(1, 200),
                requested_at=st.datetimes(datetime(2026, 1, 1), datetime(2027, 6, 1)),
                status=st.sampled_from(
                    ["pending", "running", "delivered", "expired", "failed", "rejected"]
                ),
            ),
            max_size=5,
        ).map(tuple),
    }
)


@given(review_inputs)
def test_every_decision_either_accepts_or_explains_in_spanish_without_personal_data(kwargs):
    decision = review(**kwargs)
    if decision.accepted:
        assert decision == ACCEPTED
        return
    assert decision.reason_code in {
        REQUESTER_NOT_IN_SUBSCRIPTION,
        SUBSCRIPTION_INACTIVE,
        REQUESTER_INACTIVE,
        REQUESTER_NOT_AUTHORIZED,
        BACKUP_IN_PROGRESS,
        QUOTA_EXCEEDED,
    }
    detail = decision.status_detail
    assert detail and detail[0].isupper() and detail.endswith(".")
    assert "@" not in detail


def test_the_date_shown_ignores_requests_made_after_the_one_rejected():
    earlier = delivered_at(datetime(2027, 1, 16, 18, 0), request_id=50)
    later = delivered_at(REQUEST.requested_at + timedelta(days=1), request_id=150)
    decision = review(other_requests=(earlier, later))
    assert decision.status_detail == QUOTA_TEXT.format(
        last="16 de enero de 2027",
        when="15 de julio de 2027, 12:00, hora central (Ciudad de México)",
    )


def test_backups_used_closer_than_180_days_apart_name_the_gap_when_it_ends_last():
    # History older than this pipeline may hold two backups 300 days apart: both rules refuse a
    # request 50 days later, and the gap, ending later, gives the date.
    first = OtherRequest(id=1, requested_at=datetime(2026, 4, 1, 18, 0), status="expired")
    second = OtherRequest(id=2, requested_at=datetime(2027, 1, 26, 18, 0), status="delivered")
    decision = review(other_requests=(first, second))
    assert decision.status_detail == (
        "Esta suscripción ya usó los 2 respaldos que se permiten en 360 días, y además entre un "
        "respaldo y el siguiente deben pasar al menos 180 días (el anterior se solicitó el 26 de "
        "enero de 2027). Podrá solicitar el siguiente a partir del 25 de julio de 2027, 12:00, "
        "hora central (Ciudad de México)."
    )
