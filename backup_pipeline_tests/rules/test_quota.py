"""The quota rule: 2 counted backups in any 360 days, at least 180 days apart."""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup_pipeline.rules.quota import (
    COUNTED_STATUSES,
    MIN_GAP,
    WINDOW,
    PastRequest,
    QuotaRule,
    QuotaWindow,
    is_allowed,
    next_allowed_at,
    quota_window,
    refusal,
)

ALL_STATUSES = ("pending", "running", "delivered", "expired", "failed", "rejected")
NOT_COUNTED = ("failed", "rejected")
MINUTE = timedelta(minutes=1)
MICROSECOND = timedelta(microseconds=1)

moments = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1))
past_requests = st.builds(PastRequest, requested_at=moments, status=st.sampled_from(ALL_STATUSES))
histories = st.lists(past_requests, max_size=8)
# Gaps between consecutive requests: the boundaries themselves are drawn often, not left to luck.
gaps = st.one_of(
    st.sampled_from(
        [timedelta(0), MIN_GAP, MIN_GAP - MINUTE, MIN_GAP - MICROSECOND, WINDOW, WINDOW - MINUTE]
    ),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400)),
)


def _accept_greedily(
    start: datetime, gaps_between: list[timedelta], accepted_status: str
) -> tuple[list[datetime], list[datetime], list[PastRequest]]:
    """Review requests in time order as the sensor does; return accepted, rejected, history."""
    accepted: list[datetime] = []
    rejected: list[datetime] = []
    history: list[PastRequest] = []
    at = start
    for gap in gaps_between:
        at += gap
        if is_allowed(at, history):
            accepted.append(at)
            history.append(PastRequest(at, accepted_status))
        else:
            rejected.append(at)
            history.append(PastRequest(at, "rejected"))
    return accepted, rejected, history


@given(moments, st.lists(gaps, max_size=25), st.sampled_from(sorted(COUNTED_STATUSES)))
def test_accepted_backups_are_never_less_than_180_days_apart(start, gaps_between, status):
    accepted, _, _ = _accept_greedily(start, gaps_between, status)
    for previous, following in pairwise(accepted):
        assert following - previous >= MIN_GAP


@given(moments, st.lists(gaps, max_size=25), st.sampled_from(sorted(COUNTED_STATUSES)))
def test_never_three_accepted_backups_in_any_360_day_window(start, gaps_between, status):
    accepted, _, _ = _accept_greedily(start, gaps_between, status)
    # Three in a window (t - 360 days, t] means the first and third less than 360 days apart.
    for first, third in zip(accepted, accepted[2:], strict=False):
        assert third - first >= WINDOW


@given(moments, st.lists(gaps, max_size=25))
def test_a_request_is_rejected_only_when_it_breaks_a_rule(start, gaps_between):
    accepted, rejected, _ = _accept_greedily(start, gaps_between, "delivered")
    for at in rejected:
        before = [t for t in accepted if t <= at]
        too_soon = bool(before) and at - before[-1] < MIN_GAP
        window_full = sum(1 for t in before if t > at - WINDOW) >= 2
        assert too_soon or window_full


@given(
    moments,
    st.lists(
        st.tuples(
            st.timedeltas(min_value=MICROSECOND, max_value=timedelta(days=800)),
            st.sampled_from(ALL_STATUSES),
        ),
        max_size=8,
    ),
)
def test_is_allowed_agrees_with_next_allowed_at_when_history_is_earlier(at, earlier):
    history = [PastRequest(at - offset, status) for offset, status in earlier]
    allowed_from = next_allowed_at(history)
    assert is_allowed(at, history) == (allowed_from is None or at >= allowed_from)


uncounted_requests = st.builds(
    PastRequest, requested_at=moments, status=st.sampled_from(NOT_COUNTED)
)


@given(histories, st.lists(uncounted_requests, max_size=8), moments)
def test_failed_and_rejected_requests_never_change_the_outcome(history, uncounted, at):
    noisy = history + uncounted
    assert next_allowed_at(noisy) == next_allowed_at(history)
    assert is_allowed(at, noisy) == is_allowed(at, history)
    assert quota_window(noisy, at) == quota_window(history, at)


@given(moments, st.sampled_from(sorted(COUNTED_STATUSES)))
def test_exactly_180_days_after_the_last_backup_is_allowed_and_a_minute_earlier_is_not(
    previous, status
):
    history = [PastRequest(previous, status)]
    assert next_allowed_at(history) == previous + MIN_GAP
    assert is_allowed(previous + timedelta(days=180), history)
    assert not is_allowed(previous + timedelta(days=179, hours=23, minutes=59), history)
    assert not is_allowed(previous + MIN_GAP - MICROSECOND, history)


@given(moments)
def test_third_backup_is_allowed_exactly_360_days_after_the_first(first):
    history = [PastRequest(first, "expired"), PastRequest(first + MIN_GAP, "delivered")]
    assert next_allowed_at(history) == first + WINDOW
    assert is_allowed(first + WINDOW, history)
    assert not is_allowed(first + WINDOW - MICROSECOND, history)


def test_window_rule_holds_when_past_backups_were_closer_than_180_days():
    # Requests from before this pipeline may break the gap rule; the window rule still applies.
    first = datetime(2027, 1, 10, 9, 0)
    history = [PastRequest(first, "expired"), PastRequest(first + timedelta(days=10), "expired")]
    assert next_allowed_at(history) == first + WINDOW
    assert not is_allowed(first + timedelta(days=200), history)


def test_only_pending_running_delivered_and_expired_count():
    assert {"pending", "running", "delivered", "expired"} == COUNTED_STATUSES


def test_no_counted_history_allows_a_request_any_time():
    history = [PastRequest(datetime(2027, 1, 16, 18, 0), s) for s in NOT_COUNTED]
    assert next_allowed_at(history) is None
    assert is_allowed(datetime(2027, 1, 16, 18, 1), history)


def test_a_backup_in_january_allows_the_next_in_july():
    january = PastRequest(datetime(2027, 1, 16, 18, 0), "delivered")
    assert next_allowed_at([january]) == datetime(2027, 7, 15, 18, 0)
    assert not is_allowed(datetime(2027, 7, 15, 17, 59), [january])
    assert is_allowed(datetime(2027, 7, 15, 18, 0), [january])


@pytest.mark.parametrize("day", range(2, 32))
def test_help_article_example_any_january_day_but_the_first_allows_july(day):
    # "si se solicitó un respaldo en ENERO, se puede solicitar un 2do respaldo en JULIO".
    # 180 days is a little less than six months, so January 1st already allows June 30th:
    # the rule is the 180 days, the month names are the article's approximation.
    allowed_from = next_allowed_at([PastRequest(datetime(2027, 1, day, 12, 0), "delivered")])
    assert allowed_from is not None and allowed_from.month == 7


def test_a_backup_on_january_first_allows_the_next_on_june_30th():
    history = [PastRequest(datetime(2027, 1, 1, 12, 0), "delivered")]
    assert next_allowed_at(history) == datetime(2027, 6, 30, 12, 0)


def test_twice_a_year_january_and_july_then_january_again():
    history = [
        PastRequest(datetime(2027, 1, 16, 18, 0), "expired"),
        PastRequest(datetime(2027, 7, 15, 18, 0), "delivered"),
    ]
    # 180 days after July and 360 days after January fall on the same instant.
    assert next_allowed_at(history) == datetime(2028, 1, 11, 18, 0)


def test_a_later_request_does_not_take_an_earlier_ones_turn():
    at = datetime(2027, 3, 1, 10, 0)
    assert is_allowed(at, [PastRequest(at + MICROSECOND, "pending")])
    # One at the very same instant counts: the caller leaves out the one it considers later.
    assert not is_allowed(at, [PastRequest(at, "pending")])


def test_quota_window_without_counted_requests():
    now = datetime(2027, 5, 1, 12, 0)
    history = [PastRequest(datetime(2027, 4, 1), "failed")]
    assert quota_window(history, now) == QuotaWindow(None, None, 0)


def test_quota_window_counts_the_window_ending_now_and_ignores_the_future():
    now = datetime(2028, 1, 1, 12, 0)
    history = [
        PastRequest(now - WINDOW, "expired"),  # left the window (now - 360 days, now] this instant
        PastRequest(now - WINDOW + MICROSECOND, "expired"),
        PastRequest(now - timedelta(days=30), "failed"),
        PastRequest(now, "pending"),
        PastRequest(now + MINUTE, "pending"),  # not yet made as of `now`
    ]
    assert quota_window(history, now) == QuotaWindow(
        last_counted_backup_at=now,
        next_allowed_at=now + MIN_GAP,
        backups_last_360_days=2,
    )


def test_quota_window_next_allowed_at_may_be_in_the_past():
    now = datetime(2028, 1, 1, 12, 0)
    last = now - timedelta(days=200)
    window = quota_window([PastRequest(last, "delivered")], now)
    assert window == QuotaWindow(last, last + MIN_GAP, 1)
    assert window.next_allowed_at is not None and window.next_allowed_at < now


@given(
    moments,
    st.lists(
        st.tuples(
            st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=800)),
            st.sampled_from(ALL_STATUSES),
        ),
        max_size=8,
    ),
)
def test_a_refusal_names_a_broken_rule_whose_end_is_the_next_allowed_moment(at, earlier):
    history = [PastRequest(at - offset, status) for offset, status in earlier]
    refused = refusal(at, history)
    assert (refused is None) == is_allowed(at, history)
    if refused is None:
        return
    counted = sorted(r.requested_at for r in history if r.counts)
    assert refused.allowed_from == next_allowed_at(history) > at
    assert refused.last_counted_at == counted[-1]
    assert refused.counted_in_window == sum(1 for t in counted if t > at - WINDOW)
    if refused.rule == QuotaRule.MIN_GAP:
        assert refused.allowed_from == counted[-1] + MIN_GAP
    else:
        assert refused.counted_in_window >= 2
        assert refused.allowed_from == counted[-2] + WINDOW


def test_one_backup_used_and_the_second_asked_too_soon_is_the_gap_not_the_limit():
    january = datetime(2027, 1, 16, 18)
    refused = refusal(datetime(2027, 3, 1), [PastRequest(january, "delivered")])
    assert refused is not None
    assert refused.rule == QuotaRule.MIN_GAP
    assert refused.counted_in_window == 1
    assert refused.allowed_from == january + MIN_GAP


def test_two_backups_180_days_apart_name_the_limit_of_two():
    first, second = datetime(2027, 1, 16, 18), datetime(2027, 7, 15, 18)
    history = [PastRequest(first, "expired"), PastRequest(second, "delivered")]
    refused = refusal(datetime(2027, 12, 1), history)
    assert refused is not None
    assert refused.rule == QuotaRule.MAX_IN_WINDOW
    # Both rules end at the same instant: the clinic is told it used its two.
    assert refused.allowed_from == first + WINDOW == second + MIN_GAP
