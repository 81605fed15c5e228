"""Load: 1,000 pending requests across 200 subscriptions through the request sensor's ticks.

Every subscription has five pending requests, and its group decides what should happen to them:
double clicks, users who may not ask, an exhausted quota, a backup already running, a suspended
subscription. The sensor must launch exactly one run per valid request, never two for one
subscription, and reject the rest with a reason; the run queue must hold a second run of a
subscription (a re-run by hand) until the first ends. No backup is actually run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
import yaml
from sqlalchemy import Engine, event, insert, select

from backup_pipeline.instance import prepare_embedded_instance
from backup_pipeline.jobs import KIND_TAG
from backup_pipeline.platform import create_schema
from backup_pipeline.platform import tables as t
from backup_pipeline.resources import BackupPolicyResource
from backup_pipeline.resources.platform_db import PlatformDatabaseResource
from backup_pipeline.rules import checks
from backup_pipeline.rules.target import REQUEST_TAG, SUBSCRIPTION_TAG, run_tags
from backup_pipeline.schedules import HOUSEKEEPING_JOBS
from backup_pipeline.sensors import evaluate_pending_requests
from backup_pipeline_tests.support.location import backup_job, backup_request_sensor

REPO = Path(__file__).resolve().parents[2]
INSTANCE_CONFIGS = [REPO / "dagster.yaml", REPO / "deploy" / "dagster.yaml"]
NOW = datetime(2026, 3, 2, 12, 0)
SUBSCRIPTIONS = 200
CLICKS = 5  # pending requests per subscription: 1,000 in all

# What each group of subscriptions (subscription id % 8) must end with, click by click.
ACCEPT, IN_PROGRESS = "accepted", checks.BACKUP_IN_PROGRESS
EXPECTED = {
    0: [ACCEPT] + [IN_PROGRESS] * 4,  # the owner double-clicks
    1: [  # others try first, then the owner, twice
        checks.REQUESTER_NOT_AUTHORIZED,
        checks.REQUESTER_INACTIVE,
        checks.REQUESTER_NOT_IN_SUBSCRIPTION,
        ACCEPT,
        IN_PROGRESS,
    ],
    2: [checks.QUOTA_EXCEEDED] * 5,  # a backup delivered 30 days ago
    3: [ACCEPT] + [IN_PROGRESS] * 4,  # only failed and rejected requests lately: they never count
    4: [IN_PROGRESS] * 5,  # a backup is already running
    5: [checks.SUBSCRIPTION_INACTIVE] * 5,  # suspended
    6: [checks.REQUESTER_NOT_AUTHORIZED] * 5,  # staff without the permission
    7: [ACCEPT] + [IN_PROGRESS] * 4,  # owner and admin click in turns
}
HISTORY = {  # group -> (days ago, status) of earlier requests
    2: [(30, "delivered")],
    3: [(10, "failed"), (5, "rejected"), (200, "expired")],
    4: [(0.05, "running")],
}


def owner(sid: int) -> int:
    return sid * 100 + 1


def requester(sid: int, click: int) -> int:
    group = sid % 8
    if group == 1:
        # staff without permission, an inactive admin, the next clinic's owner, then the owner
        return [sid * 100 + 3, sid * 100 + 4, owner(sid % SUBSCRIPTIONS + 1), owner(sid), owner(sid)][click]  # fmt: skip
    if group == 6:
        return sid * 100 + 3
    if group == 7:
        return sid * 100 + 1 + click % 2  # owner, admin, owner, ...
    return owner(sid)


@dataclass(frozen=True)
class Click:
    request_id: int
    subscription_id: int
    expected: str  # ACCEPT or the rejection's reason code


def load_platform(engine: Engine) -> list[Click]:
    """200 subscriptions, their users and history, and 1,000 pending requests, interleaved in
    time so that one subscription's clicks land in different sensor batches."""
    create_schema(engine)
    subscriptions, users, requests, clicks = [], [], [], []
    for sid in range(1, SUBSCRIPTIONS + 1):
        subscriptions.append(
            {
                "id": sid,
                "name": f"Clínica {sid}",
                "timezone": "America/Mexico_City",
                "status": "suspended" if sid % 8 == 5 else "active",
                "created_at": NOW - timedelta(days=900),
            }
        )
        for n, (role, active, allowed) in enumerate(
            [("owner", True, True), ("admin", True, True), ("staff", True, False), ("admin", False, True)],
            start=1,
        ):  # fmt: skip
            users.append(
                {
                    "id": sid * 100 + n,
                    "subscription_id": sid,
                    "email": f"u{sid}-{n}@clinica.example",
                    "full_name": f"Usuario {n}",
                    "role": role,
                    "is_active": active,
                    "can_request_backup": allowed,
                    "created_at": NOW - timedelta(days=800),
                }
            )
        for k, (days, status) in enumerate(HISTORY.get(sid % 8, [])):
            requests.append(
                {
                    "id": 500_000 + sid * 10 + k,
                    "subscription_id": sid,
                    "requested_by_user_id": owner(sid),
                    "requested_at": NOW - timedelta(days=days),
                    "status": status,
                }
            )
    for click in range(CLICKS):
        for sid in range(1, SUBSCRIPTIONS + 1):
            request_id = 1_000_000 + click * SUBSCRIPTIONS + sid
            requests.append(
                {
                    "id": request_id,
                    "subscription_id": sid,
                    "requested_by_user_id": requester(sid, click),
                    "requested_at": NOW + timedelta(seconds=click * SUBSCRIPTIONS + sid),
                    "status": "pending",
                }
            )
            clicks.append(Click(request_id, sid, EXPECTED[sid % 8][click]))
    with engine.begin() as conn:
        conn.execute(insert(t.subscriptions), subscriptions)
        conn.execute(insert(t.users), users)
        conn.execute(insert(t.backup_requests), requests)
    return clicks


@pytest.fixture
def platform(db_url: str) -> Iterator[tuple[PlatformDatabaseResource, list[Click]]]:
    resource = PlatformDatabaseResource(url=db_url)
    clicks = load_platform(resource.get_engine())
    yield resource, clicks
    resource.get_engine().dispose()


@pytest.fixture
def statements(platform) -> Iterator[list[str]]:
    """The SQL statements sent to the platform's database (one per executemany)."""
    engine = platform[0].get_engine()
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


def assert_outcome(engine: Engine, clicks: list[Click], run_requests: list[dg.RunRequest]) -> None:
    expected_runs = {c.request_id: c.subscription_id for c in clicks if c.expected == ACCEPT}
    assert len(expected_runs) == 100
    # Exactly one run per valid request, tagged with its ids, and one per subscription at most.
    launched = {int(r.partition_key): int(r.tags[SUBSCRIPTION_TAG]) for r in run_requests}
    assert len(run_requests) == len(launched) == len(expected_runs)
    assert launched == expected_runs
    assert Counter(launched.values()).most_common(1)[0][1] == 1
    assert all(r.run_key == f"backup-request-{r.partition_key}" for r in run_requests)
    assert all(r.tags[REQUEST_TAG] == r.partition_key for r in run_requests)

    r, rv = t.backup_requests.c, t.backup_request_reviews.c
    with engine.connect() as conn:
        rows = {
            row.id: row
            for row in conn.execute(
                select(r.id, r.status, r.status_detail, rv.decision, rv.reason_code)
                .join(t.backup_request_reviews, rv.request_id == r.id)
                .where(r.id >= 1_000_000)
            )
        }
    assert len(rows) == len(clicks)  # every request reviewed exactly once
    for click in clicks:
        row = rows[click.request_id]
        if click.expected == ACCEPT:
            # Still pending: the run marks it running when it starts.
            assert (row.status, row.decision, row.reason_code) == ("pending", "accepted", None)
        else:
            assert (row.status, row.decision) == ("rejected", "rejected"), click
            assert row.reason_code == click.expected, click
            assert row.status_detail and row.status_detail[0].isupper()
            if click.expected == checks.QUOTA_EXCEEDED:
                assert "Podrá solicitar el siguiente a partir del" in row.status_detail


def skip_message(result: dg.SensorResult) -> str:
    return result.skip_reason.skip_message if result.skip_reason else ""


def test_one_tick_of_the_sensor_launches_one_run_per_valid_request_of_a_thousand(
    platform, statements: list[str]
) -> None:
    resource, clicks = platform

    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance, resources={"platform_db": resource, "policy": BackupPolicyResource()}
        )
        result = backup_request_sensor(context)
        queries = len(statements)
        again = backup_request_sensor(
            dg.build_sensor_context(
                instance=instance,
                resources={"platform_db": resource, "policy": BackupPolicyResource()},
            )
        )

    assert_outcome(resource.get_engine(), clicks, result.run_requests)
    (add,) = result.dynamic_partitions_requests
    assert sorted(add.partition_keys) == sorted(r.partition_key for r in result.run_requests)
    # A few set queries for the whole batch, not a few per request.
    assert queries <= 20, statements
    assert not again.run_requests and "(0 reviewed" in skip_message(again)


def test_bounded_ticks_never_accept_two_requests_of_one_subscription(platform) -> None:
    resource, clicks = platform
    run_requests: list[dg.RunRequest] = []
    ticks = 0
    while True:
        ticks += 1
        result = evaluate_pending_requests(resource, limit=230)
        if "(0 reviewed" in skip_message(result):
            break
        run_requests += result.run_requests
        assert ticks < 10

    assert ticks == 6  # 1,000 requests in batches of 230, then nothing left
    assert_outcome(resource.get_engine(), clicks, run_requests)


# --- the run queue --------------------------------------------------------------------------------


def queue_limits(path: Path) -> tuple[int, list[dict]]:
    runs = yaml.safe_load(path.read_text())["concurrency"]["runs"]
    return runs["max_concurrent_runs"], runs["tag_concurrency_limits"]


def dequeue(queued: list[dict[str, str]], path: Path) -> list[dict[str, str]]:
    """The runs the queue daemon would launch from `queued`, in order, with the instance's limits.

    Dagster's own counter decides (internal, see support/dagster_internals.py: it is the rule the
    QueuedRunCoordinatorDaemon applies, and the point is to test the config against it).
    """
    from backup_pipeline_tests.support.dagster_internals import TagConcurrencyLimitsCounter

    max_runs, limits = queue_limits(path)
    counter = TagConcurrencyLimitsCounter(limits, [])
    launched = []
    for tags in queued:
        run = SimpleNamespace(tags=tags)
        if len(launched) < max_runs and not counter.is_blocked(run):
            counter.update_counters_with_launched_item(run)
            launched.append(tags)
    return launched


@pytest.mark.parametrize("path", INSTANCE_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_the_run_queue_holds_a_second_run_of_a_subscription(path: Path) -> None:
    # Support re-runs subscription 7's failed request while the sensor's run for its new request
    # waits in the queue, ahead of other clinics' runs.
    queued = [run_tags(1_000_007, 7), run_tags(900_007, 7)] + [
        run_tags(1_000_000 + sid, sid) for sid in range(8, 60)
    ]

    launched = dequeue(queued, path)

    max_runs, _limits = queue_limits(path)
    assert len(launched) == min(max_runs, len(queued) - 1)
    subscriptions = [tags[SUBSCRIPTION_TAG] for tags in launched]
    assert len(subscriptions) == len(set(subscriptions))
    assert launched[0] == run_tags(1_000_007, 7)
    assert run_tags(900_007, 7) not in launched


@pytest.mark.parametrize("path", INSTANCE_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_housekeeping_and_the_late_alert_are_not_held_back_by_backups(path: Path) -> None:
    # Far more backups than the queue holds wait ahead of every housekeeping job (the worst
    # order; their higher priority would only help). Some backups may be runs whose process
    # died and that still hold their slots: the late alert must run all the same.
    backups = [{**backup_job.tags, **run_tags(2_000_000 + sid, sid)} for sid in range(1, 200)]
    housekeeping = [dict(job.tags) for job in HOUSEKEEPING_JOBS]

    launched = dequeue(backups + housekeeping, path)

    assert all(tags in launched for tags in housekeeping)
    max_runs, limits = queue_limits(path)
    (backup_share,) = [limit["limit"] for limit in limits if limit["key"] == KIND_TAG]
    assert sum(1 for tags in launched if tags.get(KIND_TAG) == "backup") == backup_share
    assert backup_share + len(HOUSEKEEPING_JOBS) <= max_runs


def test_the_embedded_instance_queues_runs_with_the_limits_of_its_config(tmp_path: Path) -> None:
    # What the queue daemon reads (DagsterInstance.get_concurrency_config) is what the tests above
    # count with: dagster.yaml as prepare-instance installs it.
    home = prepare_embedded_instance(tmp_path / "home", REPO / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
    max_runs, limits = queue_limits(REPO / "dagster.yaml")
    assert queue.max_concurrent_runs == max_runs
    assert list(queue.tag_concurrency_limits) == limits
