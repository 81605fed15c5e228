"""The platform's database: its tables, our migrations, and every query we make of it.

The package is the one gateway: callers import it (`from backup_pipeline import platform as db`)
and call `db.<query>`. The queries live by table group: accounts (the platform's own tables, read
only), requests (backup_requests: state, archive, parts), events (the audit trail), reviews and
alerts, quota windows; engine.py holds the engine and what they share. The rules that decide what
to write (checks, quota, intake, housekeeping) take and return plain values; only this package
knows the SQL. Dataset exports keep their own queries (datasets/).
"""

from backup_pipeline.platform.accounts import (
    get_requester,
    get_subscription,
    next_subscription_id,
    requesters_by_id,
    subscriptions_by_id,
)
from backup_pipeline.platform.engine import (
    IN_CHUNK,
    create_schema,
    engine_for,
    utcnow,
)
from backup_pipeline.platform.events import (
    RecordedEvent,
    append_event,
    events_of,
    rerun_count,
)
from backup_pipeline.platform.quota_windows import (
    QUOTA_LOCK_NAMESPACE,
    SubscriptionRequest,
    refresh_quota_windows_of,
    replace_quota_windows,
    request_history,
    requests_of_subscriptions,
    subscriptions_with_requests,
)
from backup_pipeline.platform.requests import (
    ArchivePart,
    archives_to_expire,
    contents_of,
    extend_link,
    forget_failed_archive,
    forget_parts,
    get_request,
    mark_delivered,
    mark_expired,
    mark_failed,
    mark_running,
    parts_of,
    record_archive,
    record_contents,
    record_email_sent,
    record_link_resent,
    record_parts,
    refuse_pending,
    relaunch_after_migration,
    requeue_for_rerun,
    status_and_time_of,
    statuses_of,
    still_due_for_expiry,
)
from backup_pipeline.platform.reviews import (
    RERUN_REASON,
    Review,
    accepted_not_started,
    record_alert,
    record_reviews,
    unalerted_waiting_requests,
    unreviewed_pending,
)

__all__ = [
    "IN_CHUNK",
    "QUOTA_LOCK_NAMESPACE",
    "RERUN_REASON",
    "ArchivePart",
    "RecordedEvent",
    "Review",
    "SubscriptionRequest",
    "accepted_not_started",
    "append_event",
    "archives_to_expire",
    "contents_of",
    "create_schema",
    "engine_for",
    "events_of",
    "extend_link",
    "forget_failed_archive",
    "forget_parts",
    "get_request",
    "get_requester",
    "get_subscription",
    "mark_delivered",
    "mark_expired",
    "mark_failed",
    "mark_running",
    "next_subscription_id",
    "parts_of",
    "record_alert",
    "record_archive",
    "record_contents",
    "record_email_sent",
    "record_link_resent",
    "record_parts",
    "record_reviews",
    "refresh_quota_windows_of",
    "refuse_pending",
    "relaunch_after_migration",
    "replace_quota_windows",
    "request_history",
    "requesters_by_id",
    "requests_of_subscriptions",
    "requeue_for_rerun",
    "rerun_count",
    "status_and_time_of",
    "statuses_of",
    "still_due_for_expiry",
    "subscriptions_by_id",
    "subscriptions_with_requests",
    "unalerted_waiting_requests",
    "unreviewed_pending",
    "utcnow",
]
