"""The backup quota: at most 2 counted backups in any 360 days, at least 180 days apart."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from backup_pipeline.rules.request_state import COUNTED_STATUSES

# The help article states both rules ("2 veces en un periodo de 360 días ... con una diferencia de
# al menos 180 días"); both are kept explicit even though, with the gap rule honoured, a third
# backup inside 360 days is already impossible: history may hold requests that predate this
# pipeline, and a reader should find each sentence of the article here.
#
# Boundaries, decided on purpose:
# - "al menos 180 días" reads as ">= 180 days": a request exactly 180 days after the previous
#   counted one is allowed.
# - The 360-day window ending at t is (t - 360 days, t]: a request 360 days after another no
#   longer shares a window with it. This makes the two rules meet at the same instant: with
#   backups at c and c + 180 days, the gap rule and the window rule both allow the third at
#   exactly c + 360 days, so neither rule moves the other's boundary by a microsecond.
MIN_GAP = timedelta(days=180)
WINDOW = timedelta(days=360)
MAX_IN_WINDOW = 2


@dataclass(frozen=True)
class PastRequest:
    """Another backup request of the same subscription; `requested_at` is a naive UTC datetime."""

    requested_at: datetime
    status: str

    @property
    def counts(self) -> bool:
        return self.status in COUNTED_STATUSES


def _counted_times(history: Iterable[PastRequest]) -> list[datetime]:
    return sorted(r.requested_at for r in history if r.counts)


def next_allowed_at(history: Iterable[PastRequest]) -> datetime | None:
    """The earliest moment a new request satisfies both rules; None when it may come any time.

    The moment may lie in the past, which means a request is allowed now.
    """
    return _next_allowed_after(_counted_times(history))


def _next_allowed_after(times: list[datetime]) -> datetime | None:
    """`next_allowed_at` for the sorted times of counted requests."""
    if not times:
        return None
    after_gap = times[-1] + MIN_GAP
    if len(times) < MAX_IN_WINDOW:
        return after_gap
    # The window (t - WINDOW, t] holds fewer than MAX_IN_WINDOW earlier requests exactly when the
    # MAX_IN_WINDOW-th most recent one has left it.
    after_window = times[-MAX_IN_WINDOW] + WINDOW
    return max(after_gap, after_window)


def is_allowed(at: datetime, history: Iterable[PastRequest]) -> bool:
    """Whether a request made at `at` fits the quota, judged against the requests made before it.

    Requests made after `at` are ignored: the quota is first come, first served, so a later
    request cannot take an earlier one's turn. One made at the very same instant counts as
    earlier; the caller decides which of two simultaneous requests came first by leaving the
    other out (checks.review_request orders them by id).
    """
    earlier = [t for t in _counted_times(history) if t <= at]
    if earlier and at - earlier[-1] < MIN_GAP:
        return False
    in_window = sum(1 for t in earlier if t > at - WINDOW)
    return in_window < MAX_IN_WINDOW


class QuotaRule(StrEnum):
    """The rule of the quota that refuses a request (both may; this names the one that binds)."""

    MIN_GAP = "min_gap"  # at least 180 days between two counted backups
    MAX_IN_WINDOW = "max_in_window"  # at most 2 counted backups in any 360 days


@dataclass(frozen=True)
class QuotaRefusal:
    """Why a request made at some moment does not fit the quota: the rule that binds, the
    moment from which a request fits (naive UTC), and what the clinic has used."""

    rule: QuotaRule
    allowed_from: datetime
    last_counted_at: datetime  # the latest counted request before the refused one
    counted_in_window: int  # counted requests in the 360 days ending at the refused one


def refusal(at: datetime, history: Iterable[PastRequest]) -> QuotaRefusal | None:
    """Why a request made at `at` does not fit the quota, or None when it does (`is_allowed`).

    The binding rule is the one whose boundary comes last, since `allowed_from` is that
    boundary: the gap when only the gap is broken (one backup used, the second asked for too
    soon), the window when two backups are in it and the window frees up no earlier than the
    gap. With backups 180 days apart both boundaries fall on the same instant; the window is
    named then, since the clinic has used both of its backups.
    """
    if is_allowed(at, history):
        return None
    earlier = [t for t in _counted_times(history) if t <= at]
    # A refusal implies an earlier counted request: with none, every request is allowed.
    after_gap = earlier[-1] + MIN_GAP
    after_window = earlier[-MAX_IN_WINDOW] + WINDOW if len(earlier) >= MAX_IN_WINDOW else None
    window_binds = after_window is not None and after_window > at and after_window >= after_gap
    return QuotaRefusal(
        rule=QuotaRule.MAX_IN_WINDOW if window_binds else QuotaRule.MIN_GAP,
        allowed_from=max(after_gap, after_window) if after_window is not None else after_gap,
        last_counted_at=earlier[-1],
        counted_in_window=sum(1 for t in earlier if t > at - WINDOW),
    )


@dataclass(frozen=True)
class QuotaWindow:
    """One row of `backup_quota_windows`, as seen at a given moment."""

    last_counted_backup_at: datetime | None
    next_allowed_at: datetime | None
    # Counted requests (pending and running included) in the window (now - 360 days, now].
    backups_last_360_days: int


def quota_window(history: Iterable[PastRequest], now: datetime) -> QuotaWindow:
    """The subscription's quota as seen at `now` (naive UTC); requests after `now` are ignored."""
    times = [t for t in _counted_times(history) if t <= now]
    return QuotaWindow(
        last_counted_backup_at=times[-1] if times else None,
        next_allowed_at=_next_allowed_after(times),
        backups_last_360_days=sum(1 for t in times if t > now - WINDOW),
    )
