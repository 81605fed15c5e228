"""Housekeeping against real components: SQLite and PostgreSQL, a folder store, the outbox mailer."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from backup_pipeline import platform as db
from backup_pipeline.mail import Mailer, MailError, OutboxTransport, Transport, open_transport
from backup_pipeline.rules.emails import OutgoingEmail
from backup_pipeline.services import housekeeping as hk
from backup_pipeline.storage import ObjectStore
from backup_pipeline.storage.base import PARTIAL_SUFFIX
from backup_pipeline.storage.folder import FolderStore
from backup_pipeline_tests.support.platform import EVERY_DATABASE, Backends, Platform

NOW = datetime(2026, 3, 1, 12, 0, 0)
SUPPORT = "soporte@clinica.example"
SENDER = "respaldos@clinica.example"
REQUESTER_EMAIL = "dueña@consultorio.example"


@pytest.fixture(params=EVERY_DATABASE)
def backends(request: pytest.FixtureRequest) -> Backends:
    """The platform of every test here once on SQLite and once on PostgreSQL."""
    return request.param


def add_three_clinics(platform: Platform) -> Platform:
    """Subscriptions 1, 2 and 3 and their owners (101, 102, 103), who share one address."""
    for sid in (1, 2, 3):
        platform.add_clinic(
            sid,
            owner_email=REQUESTER_EMAIL,
            owner_name="Dra. Ana Pérez",
            created_at=NOW - timedelta(days=1000),
        )
    return platform


@pytest.fixture
def platform(platform: Platform) -> Platform:
    return add_three_clinics(platform)


@pytest.fixture
def archives(platform: Platform) -> ObjectStore:
    return platform.archives


@pytest.fixture
def outbox(platform: Platform) -> Path:
    return platform.outbox


def sent_emails(outbox: Path) -> list[str]:
    return sorted(p.read_text() for p in outbox.glob("*.eml")) if outbox.exists() else []


class FlakyMailer(OutboxTransport):
    """The outbox, except that the first `failures` sends fail the way SendGrid's 503 does."""

    def __init__(self, directory: Path, *, failures: int = 1, transient: bool = True) -> None:
        super().__init__(directory)
        self.failures = failures
        self.transient = transient
        self.attempts = 0

    def send(self, email: OutgoingEmail) -> str:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise MailError("provider unavailable", transient=self.transient, status=503)
        return super().send(email)


class BrokenKeyStore(FolderStore):
    """A folder store whose deletes of one key fail, like a GCS object we may not delete."""

    def __init__(self, root: Path, broken_key: str) -> None:
        super().__init__(root)
        self.broken_key = broken_key

    def delete(self, key: str) -> bool:
        if key == self.broken_key:
            raise PermissionError("403 on delete")
        return super().delete(key)


# --- expire_archives ----------------------------------------------------------------------


def test_an_expired_link_deletes_its_archive_and_marks_the_request_expired(platform, archives):
    expired_key = platform.add_delivered_request(
        1, archives, link_expires_at=NOW - timedelta(minutes=1)
    )
    valid_key = platform.add_delivered_request(
        2, archives, link_expires_at=NOW + timedelta(hours=1)
    )

    assert hk.expire_archives(platform.engine, archives, NOW) == 1

    assert platform.status(1) == "expired"
    assert not archives.exists(expired_key)
    assert platform.status(2) == "delivered"
    assert archives.exists(valid_key)


def test_a_link_expiring_exactly_now_is_expired(platform, archives):
    platform.add_delivered_request(1, archives, link_expires_at=NOW)
    assert hk.expire_archives(platform.engine, archives, NOW) == 1
    assert platform.status(1) == "expired"


def test_an_archive_already_gone_still_expires_the_request(platform, archives):
    key = platform.add_delivered_request(1, archives, link_expires_at=NOW - timedelta(days=1))
    archives.delete(key)

    assert hk.expire_archives(platform.engine, archives, NOW) == 1
    assert platform.status(1) == "expired"


def test_expiry_is_idempotent_and_ignores_requests_not_delivered(platform, archives):
    platform.add_delivered_request(1, archives, link_expires_at=NOW - timedelta(days=1))
    platform.add_request(
        2, status="failed", requested_at=NOW - timedelta(days=9), link_expires_at=NOW
    )
    assert hk.expire_archives(platform.engine, archives, NOW) == 1
    assert hk.expire_archives(platform.engine, archives, NOW) == 0
    assert platform.status(2) == "failed"


def test_expiry_takes_a_bounded_batch_oldest_link_first(platform, archives):
    newer = platform.add_delivered_request(1, archives, link_expires_at=NOW - timedelta(hours=1))
    older = platform.add_delivered_request(2, archives, link_expires_at=NOW - timedelta(hours=5))

    assert hk.expire_archives(platform.engine, archives, NOW, limit=1) == 1
    assert (platform.status(2), archives.exists(older)) == ("expired", False)
    assert (platform.status(1), archives.exists(newer)) == ("delivered", True)

    assert hk.expire_archives(platform.engine, archives, NOW, limit=1) == 1
    assert platform.status(1) == "expired"


def test_an_archive_that_cannot_be_deleted_stays_delivered_and_the_others_expire(
    platform, tmp_path
):
    root = tmp_path / "archives"
    setup = FolderStore(root)
    stuck = platform.add_delivered_request(1, setup, link_expires_at=NOW - timedelta(hours=2))
    fine = platform.add_delivered_request(2, setup, link_expires_at=NOW - timedelta(hours=1))
    store = BrokenKeyStore(root, stuck)

    with pytest.raises(hk.HousekeepingError) as raised:
        hk.expire_archives(platform.engine, store, NOW)

    assert "1 done, 1 failed (requests 1)" in str(raised.value)
    assert "consultorio" not in str(raised.value)  # the key names the clinic: never in messages
    assert (platform.status(1), store.exists(stuck)) == ("delivered", True)
    assert (platform.status(2), store.exists(fine)) == ("expired", False)


# --- remove_staging_leftovers -------------------------------------------------------------


def stage(store: ObjectStore, request_id: int | str, run_id: str, *names: str) -> list[str]:
    keys = [f"staging/{request_id}/{run_id}/{name}" for name in names]
    for key in keys:
        store.put_bytes(key, b"x")
    return keys


def test_staging_of_finished_requests_is_removed_and_of_open_ones_kept(platform, archives):
    for request_id, status in [(1, "failed"), (2, "delivered"), (3, "running"), (4, "pending")]:
        platform.add_request(request_id, status=status, requested_at=NOW - timedelta(hours=3))
    platform.add_request(12, status="running", requested_at=NOW - timedelta(hours=3))
    failed = stage(archives, 1, "run-a", "pacientes.xlsx", "plan.jsonl", "long/1.txt")
    delivered = stage(archives, 2, "run-b", "pacientes.xlsx")
    running = stage(archives, 3, "run-c", "pacientes.xlsx")
    pending = stage(archives, 4, "run-d", "plan.jsonl")
    # "staging/1" is a string prefix of "staging/12": request 12's staging must survive.
    twelve = stage(archives, 12, "run-e", "pacientes.xlsx")
    archive = platform.add_delivered_request(5, archives, link_expires_at=NOW + timedelta(days=1))

    sweep = hk.remove_staging_leftovers(platform.engine, archives)

    assert sweep == hk.StagingSweep(
        objects_deleted=4, requests_cleared=2, requests_open=3, unknown=0
    )
    assert not any(archives.exists(k) for k in failed + delivered)
    assert all(archives.exists(k) for k in running + pending + twelve + [archive])
    assert hk.remove_staging_leftovers(platform.engine, archives).objects_deleted == 0


def test_staging_that_names_no_request_is_left_for_a_person(platform, archives):
    platform.add_request(1, status="expired", requested_at=NOW - timedelta(days=30))
    gone = stage(archives, 99, "run-x", "pacientes.xlsx")
    odd = stage(archives, "not-a-request", "run-y", "file.bin")
    stage(archives, 1, "run-z", "pacientes.xlsx")

    sweep = hk.remove_staging_leftovers(platform.engine, archives)

    assert (sweep.requests_cleared, sweep.unknown) == (1, 2)
    assert all(archives.exists(k) for k in gone + odd)


def test_staging_cleanup_is_bounded_per_call(platform, archives):
    for request_id in (1, 2, 3):
        platform.add_request(request_id, status="failed", requested_at=NOW - timedelta(hours=3))
        stage(archives, request_id, "run", "a.xlsx", "b.xlsx")

    first = hk.remove_staging_leftovers(platform.engine, archives, limit=3)
    assert (first.objects_deleted, first.requests_cleared) == (2, 1)
    rest = hk.remove_staging_leftovers(platform.engine, archives, limit=100)
    assert (rest.objects_deleted, rest.requests_cleared) == (4, 2)
    assert list(archives.list("staging/")) == []


# --- stale_partition_keys -----------------------------------------------------------------


def test_stale_partitions_are_old_finished_requests_and_requests_that_no_longer_exist(platform):
    retention = timedelta(days=90)
    old = NOW - timedelta(days=91)
    recent = NOW - timedelta(days=10)
    for request_id, status, at in [
        (1, "delivered", old),
        (2, "expired", old),
        (3, "failed", old),
        (4, "rejected", old),
        (5, "pending", old),  # open: its run needs the partition, however old
        (6, "running", old),
        (7, "expired", recent),
        (8, "failed", recent),
    ]:
        platform.add_request(request_id, status=status, requested_at=at)
    platform.add_request(9, status="expired", requested_at=old)
    platform.forget(9)

    keys = [str(i) for i in range(1, 10)] + ["404", "manual-key"]
    stale = hk.stale_partition_keys(platform.engine, keys, retention, NOW)

    assert stale == ["1", "2", "3", "4", "9", "404", "manual-key"]


def test_stale_partition_keys_handle_more_ids_than_one_in_list(platform):
    keys = [str(i) for i in range(1, db.IN_CHUNK * 2 + 2)]
    platform.add_request(7, status="running", requested_at=NOW - timedelta(days=400))
    stale = hk.stale_partition_keys(platform.engine, keys, timedelta(days=90), NOW)
    assert len(stale) == len(keys) - 1
    assert "7" not in stale


# --- alert_late_requests ------------------------------------------------------------------


def alert(engine: Engine, transport: Transport, now: datetime = NOW, **kwargs) -> hk.LateAlerts:
    return hk.alert_late_requests(
        engine,
        Mailer(transport, from_email=SENDER, support_email=SUPPORT),
        late_after=timedelta(hours=24),
        now=now,
        **kwargs,
    )


def test_a_late_request_alerts_support_once_across_ticks(platform, outbox):
    platform.add_request(
        1, status="running", requested_at=NOW - timedelta(hours=25), run_id="run-1"
    )
    mailer = open_transport(outbox.as_uri())

    assert alert(platform.engine, mailer).sent == 1
    assert alert(platform.engine, mailer, NOW + timedelta(hours=1)).sent == 0

    emails = sent_emails(outbox)
    assert len(emails) == 1
    assert f"To: {SUPPORT}" in emails[0]
    assert "Backup request 1" in emails[0] and "run-1" in emails[0]
    assert REQUESTER_EMAIL not in emails[0] and "Ana" not in emails[0]
    assert platform.alerts() == [(1, "late", NOW)]


def test_only_requests_still_waiting_after_the_threshold_are_late(platform, outbox):
    late = NOW - timedelta(hours=24)
    for request_id, status in enumerate(
        ["pending", "running", "failed", "delivered", "expired", "rejected"], start=1
    ):
        platform.add_request(request_id, status=status, requested_at=late)
    platform.add_request(7, status="pending", requested_at=late + timedelta(seconds=1))

    result = alert(platform.engine, open_transport(outbox.as_uri()))

    assert result.sent == 3
    assert [row[0] for row in platform.alerts()] == [1, 2, 3]
    assert len(sent_emails(outbox)) == 3


def test_a_transient_mail_failure_leaves_the_alert_for_the_next_tick(platform, outbox):
    platform.add_request(1, status="pending", requested_at=NOW - timedelta(days=2))
    platform.add_request(2, status="pending", requested_at=NOW - timedelta(days=3))
    mailer = FlakyMailer(outbox, failures=1)

    first = alert(platform.engine, mailer)
    assert (first.sent, first.deferred, mailer.attempts) == (0, 2, 1)  # stops at the outage
    assert platform.alerts() == [] and sent_emails(outbox) == []

    second = alert(platform.engine, mailer, NOW + timedelta(hours=1))
    assert (second.sent, second.deferred) == (2, 0)
    assert [row[0] for row in platform.alerts()] == [1, 2]
    assert len(sent_emails(outbox)) == 2


def test_a_permanent_mail_refusal_is_reported_and_not_recorded_as_sent(platform, outbox):
    platform.add_request(1, status="failed", requested_at=NOW - timedelta(days=2))
    platform.add_request(2, status="failed", requested_at=NOW - timedelta(days=1, hours=1))
    mailer = FlakyMailer(outbox, failures=1, transient=False)

    result = alert(platform.engine, mailer)

    assert (result.sent, result.failed) == (1, [1])
    assert [row[0] for row in platform.alerts()] == [2]


def test_late_alerts_are_bounded_per_tick(platform, outbox):
    for request_id in (1, 2, 3):
        platform.add_request(request_id, status="pending", requested_at=NOW - timedelta(days=2))
    mailer = open_transport(outbox.as_uri())
    assert alert(platform.engine, mailer, limit=2).sent == 2
    assert alert(platform.engine, mailer, limit=2).sent == 1


# --- refresh_quota_windows ----------------------------------------------------------------


def test_quota_windows_hold_each_subscriptions_last_backup_and_next_allowed_date(platform):
    jan = datetime(2026, 1, 10, 15, 0)
    # 100 days apart: older than the quota rule allows, as history from before this pipeline may be.
    platform.add_request(1, status="expired", requested_at=jan - timedelta(days=100))
    platform.add_request(2, status="delivered", requested_at=jan)
    platform.add_request(3, status="rejected", requested_at=jan + timedelta(days=5))
    platform.add_request(
        4, status="failed", requested_at=NOW - timedelta(days=2), subscription_id=2
    )

    assert hk.refresh_quota_windows(platform.engine, NOW).written == 2

    assert platform.quota_windows() == {
        # Two counted backups in the window: the next must wait for the older one to leave the
        # 360-day window, which is later than 180 days after the newer one.
        1: (jan, jan + timedelta(days=260), 2, NOW),
        # A failure of ours costs nothing: no counted backup, a request may come any time.
        2: (None, None, 0, NOW),
    }


def test_quota_refresh_replaces_rows_and_drops_subscriptions_without_requests(platform):
    platform.add_request(1, status="delivered", requested_at=NOW - timedelta(days=10))
    platform.add_request(
        2, status="pending", requested_at=NOW - timedelta(days=1), subscription_id=2
    )
    platform.add_request(
        3, status="expired", requested_at=NOW - timedelta(days=400), subscription_id=3
    )
    hk.refresh_quota_windows(platform.engine, NOW)

    platform.forget(2)
    later = NOW + timedelta(days=200)
    repair = hk.refresh_quota_windows(platform.engine, later, batch=1)
    # Request 2 vanished behind our back: its row was the one stale window.
    assert (repair.written, repair.corrected) == (2, 1)

    rows = platform.quota_windows()
    assert sorted(rows) == [1, 3]
    assert rows[1] == (NOW - timedelta(days=10), NOW + timedelta(days=170), 1, later)
    assert rows[3] == (NOW - timedelta(days=400), NOW - timedelta(days=220), 0, later)


@pytest.mark.parametrize("batch", [1, 2, 3, 500])
def test_quota_refresh_covers_every_subscription_whatever_the_batch(platform, batch):
    for sid in (1, 2, 3):
        platform.add_request(
            sid, status="delivered", requested_at=NOW - timedelta(days=sid), subscription_id=sid
        )
    assert hk.refresh_quota_windows(platform.engine, NOW, batch=batch).written == 3
    # A second pass finds nothing to correct; each clinic waits 180 days for its next backup.
    assert hk.refresh_quota_windows(platform.engine, NOW, batch=batch) == hk.QuotaRepair(3, 0, 3)
    assert {sid: row[2] for sid, row in platform.quota_windows().items()} == {1: 1, 2: 1, 3: 1}


# --- remove_objects_of_ended_request --------------------------------------------------------


def _partial_write(archives: ObjectStore, folder: str) -> Path:
    """What a write cut short by a kill leaves in the folder store: a hidden partial file (an
    error inside open_write discards it; a SIGKILL cannot)."""
    path = archives.root / folder / f".killed{PARTIAL_SUFFIX}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PK")
    return path


def test_an_ended_requests_objects_go_and_a_delivered_or_open_ones_stay(platform, archives):
    delivered_key = platform.add_delivered_request(1, archives, link_expires_at=NOW)
    archives.put_bytes("staging/1/run/pacientes.xlsx", b"workbook")  # a retried step's leftover
    platform.add_request(2, status="failed", requested_at=NOW, subscription_id=2)
    archives.put_bytes("staging/2/run/pacientes.xlsx", b"workbook")
    archives.put_bytes("respaldos/2/2/respaldo_parte-1-de-2.zip", b"PK")
    partial = _partial_write(archives, "respaldos/2/2/")
    platform.add_request(3, status="running", requested_at=NOW, subscription_id=3)
    archives.put_bytes("staging/3/run/pacientes.xlsx", b"workbook")  # a run writing now

    assert hk.remove_objects_of_ended_request(platform.engine, archives, 2) == 3
    assert hk.remove_objects_of_ended_request(platform.engine, archives, 1) == 0
    assert hk.remove_objects_of_ended_request(platform.engine, archives, 3) == 0

    assert not partial.exists()
    assert sorted(info.key for info in archives.list("")) == [
        delivered_key,
        "staging/1/run/pacientes.xlsx",
        "staging/3/run/pacientes.xlsx",
    ]
    # Done once: nothing is left of it for the next call or the sweep.
    assert hk.remove_objects_of_ended_request(platform.engine, archives, 2) == 0
