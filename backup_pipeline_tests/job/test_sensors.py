"""The request sensor, invoked as Dagster's test tools allow: what it launches and what it rejects."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.engine import make_url

from backup_pipeline import platform as db
from backup_pipeline.jobs import backup_partitions
from backup_pipeline.platform import tables as t
from backup_pipeline.rules.target import REQUEST_TAG, SUBSCRIPTION_TAG
from backup_pipeline.settings import Settings
from backup_pipeline.synthetic import file_backup_request
from backup_pipeline_tests.support.db import create_postgres_database, drop_postgres_database
from backup_pipeline_tests.support.location import (
    backup_canceled_sensor,
    backup_job,
    backup_request_sensor,
)
from backup_pipeline_tests.support.platform import (
    EVERY_DATABASE,
    ON_POSTGRES,
    Backends,
    Platform,
    open_platform,
)

CREATED = datetime(2020, 1, 1)


@pytest.fixture(params=EVERY_DATABASE)
def backends(request: pytest.FixtureRequest) -> Backends:
    """The platform of every test here once on SQLite and once on PostgreSQL."""
    return request.param


def add_past_request(
    platform: Platform, request_id: int, sid: int, uid: int, at: datetime, status: str
) -> None:
    platform.add_request(
        request_id,
        subscription_id=sid,
        by=uid,
        requested_at=at,
        status=status,
        finished_at=at + timedelta(hours=1),
    )


def tick(instance: dg.DagsterInstance, platform: Platform) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, resources=platform.resources())
    return backup_request_sensor(context)


def test_a_valid_request_becomes_one_run_request_tagged_with_ids_only(platform: Platform):
    platform.add_clinic(1)  # its owner is user 101
    request_id = file_backup_request(platform.engine, subscription_id=1, user_id=101)

    with dg.instance_for_test() as instance:
        result = tick(instance, platform)

    (run,) = result.run_requests
    assert run.run_key == f"backup-request-{request_id}"
    assert run.partition_key == str(request_id)
    assert run.tags == {REQUEST_TAG: str(request_id), SUBSCRIPTION_TAG: "1"}
    # Tags show in the UI and in every run list: ids only, never the clinic's or the user's name.
    for value in run.tags.values():
        assert value.isdigit()
    (add,) = result.dynamic_partitions_requests
    assert add.partitions_def_name == backup_partitions.name
    assert list(add.partition_keys) == [str(request_id)]
    # Accepted is not yet running: the run marks it so when it starts.
    assert platform.request(request_id).status == "pending"


def test_every_rejection_reason_is_recorded_in_spanish_and_reviewed_once(platform: Platform):
    e = platform.engine
    # 1: a valid request. 2: filed by a user of subscription 1. 3: inactive user.
    # 4: user without the authorisation. 5: suspended subscription. 6: quota used up.
    # 7: a double click. 8: only failed and rejected requests in its past.
    for sid in range(1, 9):
        platform.add_clinic(
            sid,
            status="suspended" if sid == 5 else "active",
            owner_active=sid != 3,
            owner_authorised=sid != 4,
        )
    valid = file_backup_request(e, subscription_id=1, user_id=101)
    foreign = file_backup_request(e, subscription_id=2, user_id=101)
    inactive = file_backup_request(e, subscription_id=3, user_id=301)
    unauthorised = file_backup_request(e, subscription_id=4, user_id=401)
    suspended = file_backup_request(e, subscription_id=5, user_id=501)
    # Delivered on 10 January 2025 at 15:00 UTC (09:00 in Mexico City): the next one from
    # 9 July 2025 at 09:00 local, 180 days later.
    add_past_request(platform, 6_000, 6, 601, datetime(2025, 1, 10, 15, 0), "delivered")
    over_quota = file_backup_request(
        e, subscription_id=6, user_id=601, requested_at=datetime(2025, 3, 1, 12, 0)
    )
    clicked_at = datetime(2025, 3, 1, 12, 0, 0)
    first_click = file_backup_request(e, subscription_id=7, user_id=701, requested_at=clicked_at)
    second_click = file_backup_request(e, subscription_id=7, user_id=701, requested_at=clicked_at)
    add_past_request(platform, 8_000, 8, 801, datetime(2025, 2, 1), "failed")
    add_past_request(platform, 8_001, 8, 801, datetime(2025, 2, 15), "rejected")
    after_failures = file_backup_request(
        e, subscription_id=8, user_id=801, requested_at=datetime(2025, 3, 1)
    )

    with dg.instance_for_test() as instance:
        first = tick(instance, platform)
        assert sorted(r.partition_key for r in first.run_requests) == sorted(
            str(i) for i in (valid, first_click, after_failures)
        )
        expected = {
            foreign: "El usuario que solicitó el respaldo no pertenece a esta suscripción.",
            inactive: "El usuario que solicitó el respaldo está desactivado.",
            unauthorised: "El usuario no tiene autorización para solicitar respaldos",
            suspended: "La suscripción no está activa",
            over_quota: (
                "Podrá solicitar el siguiente a partir del 9 de julio de 2025, 09:00, "
                "hora central (Ciudad de México)."
            ),
            second_click: "Ya hay otra solicitud de respaldo de esta suscripción en proceso",
        }
        before = {}
        for request_id, words in expected.items():
            row = platform.request(request_id)
            assert row.status == "rejected", request_id
            assert words in row.status_detail, (request_id, row.status_detail)
            assert row.finished_at is not None
            assert row.run_id is None
            before[request_id] = row
        # One backup used: the 180-day gap is the rule named, not the limit of two.
        assert "ha usado 1 de los 2 respaldos" in platform.request(over_quota).status_detail
        assert "al menos 180 días" in platform.request(over_quota).status_detail
        for request_id in (valid, first_click, after_failures):
            assert platform.request(request_id).status == "pending"
        assert platform.reviews_count() == 9

        second = tick(instance, platform)

    assert not second.run_requests
    assert "0 reviewed" in second.skip_reason.skip_message
    assert platform.reviews_count() == 9
    for request_id, row in before.items():
        assert platform.request(request_id) == row  # not touched again


def insert_pending_backlog(
    engine: Engine, subscriptions: int, requests: int, start: datetime
) -> dict[int, int]:
    """Subscriptions, their owners and `requests` pending requests in random time order, in bulk.

    Ids grow with requested_at, as the platform assigns them. Returns request id -> subscription.
    """
    rng = random.Random(20250301)
    owners = [rng.randrange(subscriptions) + 1 for _ in range(requests)]
    owners[:subscriptions] = range(1, subscriptions + 1)  # every subscription asks at least once
    rng.shuffle(owners)
    with engine.begin() as conn:
        conn.execute(
            insert(t.subscriptions),
            [
                {
                    "id": sid,
                    "name": f"Clínica {sid}",
                    "timezone": "America/Mexico_City",
                    "status": "active",
                    "created_at": CREATED,
                }
                for sid in range(1, subscriptions + 1)
            ],
        )
        conn.execute(
            insert(t.users),
            [
                {
                    "id": sid,
                    "subscription_id": sid,
                    "email": f"dueno{sid}@clinica.mx",
                    "full_name": f"Dueño {sid}",
                    "role": "owner",
                    "is_active": True,
                    "can_request_backup": True,
                    "created_at": CREATED,
                }
                for sid in range(1, subscriptions + 1)
            ],
        )
        conn.execute(
            insert(t.backup_requests),
            [
                {
                    "id": n + 1,
                    "subscription_id": sid,
                    "requested_by_user_id": sid,
                    "requested_at": start + timedelta(seconds=n),
                    "status": "pending",
                }
                for n, sid in enumerate(owners)
            ],
        )
    return {n + 1: sid for n, sid in enumerate(owners)}


def test_a_backlog_of_ten_thousand_is_reviewed_in_bounded_batches(platform: Platform):
    requests = insert_pending_backlog(
        platform.engine, subscriptions=2_000, requests=10_000, start=datetime(2025, 3, 1)
    )
    # Of each subscription's requests, the oldest is the one backup; the rest are double clicks.
    oldest: dict[int, int] = {}
    for request_id, sid in requests.items():
        oldest[sid] = min(request_id, oldest.get(sid, request_id))
    assert Settings.from_env({}).sensor_batch == 2_000

    launched: list[dg.RunRequest] = []
    reviewed_per_tick: list[int] = []
    with dg.instance_for_test() as instance:
        for _ in range(10):
            before = platform.reviews_count()
            result = tick(instance, platform)
            reviewed_per_tick.append(platform.reviews_count() - before)
            if result.run_requests:
                (add,) = result.dynamic_partitions_requests
                assert sorted(add.partition_keys) == sorted(
                    r.partition_key for r in result.run_requests
                )
            launched += result.run_requests
            if reviewed_per_tick[-1] == 0:
                break

    assert reviewed_per_tick == [2_000] * 5 + [0]
    assert sorted(int(r.partition_key) for r in launched) == sorted(oldest.values())
    assert len({r.run_key for r in launched}) == len(launched) == 2_000
    for run in launched:
        assert run.tags == {
            REQUEST_TAG: run.partition_key,
            SUBSCRIPTION_TAG: str(requests[int(run.partition_key)]),
        }
    with platform.engine.connect() as conn:
        r = t.backup_requests.c
        statuses = dict(conn.execute(select(r.status, func.count()).group_by(r.status)).all())
        decisions = dict(
            conn.execute(
                select(t.backup_request_reviews.c.decision, func.count()).group_by(
                    t.backup_request_reviews.c.decision
                )
            ).all()
        )
    assert statuses == {"pending": 2_000, "rejected": 8_000}
    assert decisions == {"accepted": 2_000, "rejected": 8_000}


PRODUCTION_INSTANCE = Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml"


def test_sensor_tick_and_backup_on_a_dagster_instance_stored_in_postgres(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
):
    """Dagster's storage exactly as deploy/dagster.yaml declares it, on a fresh database: the
    sensor's tick and a whole run write their events there, and the run is found by its tag."""
    dagster_url, dagster_admin = create_postgres_database()
    try:
        dagster_db = make_url(dagster_url)
        if (dagster_db.port or 5432) != 5432:
            pytest.skip("deploy/dagster.yaml uses PostgreSQL's standard port 5432")
        monkeypatch.setenv("DAGSTER_PG_USERNAME", dagster_db.username or "postgres")
        monkeypatch.setenv("DAGSTER_PG_PASSWORD", dagster_db.password or "")
        monkeypatch.setenv("DAGSTER_PG_HOST", dagster_db.host or "127.0.0.1")
        monkeypatch.setenv("DAGSTER_PG_DB", dagster_db.database or "")
        storage = yaml.safe_load(PRODUCTION_INSTANCE.read_text(encoding="utf-8"))["storage"]

        platform = open_platform(request, ON_POSTGRES)
        (clinic,) = platform.seed(patients=4, seed=3)
        sid = clinic.subscription_id
        request_id = platform.file_request(clinic)
        resources = platform.resources()
        with dg.instance_for_test(overrides={"storage": storage}) as instance:
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            result = backup_request_sensor(
                dg.build_sensor_context(instance=instance, resources=resources)
            )
            (run_request,) = result.run_requests
            for add in result.dynamic_partitions_requests:
                instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
            executed = backup_job.execute_in_process(
                instance=instance,
                partition_key=run_request.partition_key,
                tags=run_request.tags,
                resources=resources,
            )
            assert executed.success
            (found,) = instance.get_runs(filters=dg.RunsFilter(tags={REQUEST_TAG: str(request_id)}))
            assert found.run_id == executed.run_id
            assert found.status == dg.DagsterRunStatus.SUCCESS
            assert found.tags[SUBSCRIPTION_TAG] == str(sid)
            assert instance.has_dynamic_partition(backup_partitions.name, str(request_id))
        row = platform.request(request_id)
        assert row.status == "delivered"
        assert row.run_id == executed.run_id
    finally:
        drop_postgres_database(dagster_url, dagster_admin)


def test_an_accepted_request_whose_run_never_started_is_asked_for_again(platform: Platform):
    platform.add_clinic(1)  # its owner is user 101
    request_id = file_backup_request(platform.engine, subscription_id=1, user_id=101)

    with dg.instance_for_test() as instance:
        (first,) = tick(instance, platform).run_requests
        # A fresh acceptance is not repeated: its run request is on its way.
        assert not tick(instance, platform).run_requests
        # The tick's result was lost (the daemon died): ten minutes on, still pending, no run.
        with platform.engine.begin() as conn:
            conn.execute(
                update(t.backup_request_reviews)
                .where(t.backup_request_reviews.c.request_id == request_id)
                .values(reviewed_at=db.utcnow() - timedelta(minutes=11))
            )
        (again,) = tick(instance, platform).run_requests
        assert (again.run_key, again.partition_key) == (first.run_key, first.partition_key)
        # Once a run marks it running, nothing is asked for again.
        with platform.engine.begin() as conn:
            db.mark_running(conn, request_id, "some-run")
        assert not tick(instance, platform).run_requests
    assert platform.reviews_count() == 1


def test_a_cancelled_run_fails_its_request_and_tells_support_and_the_requester(
    platform: Platform,
):
    platform.add_clinic(1)  # its owner is user 101
    request_id = file_backup_request(platform.engine, subscription_id=1, user_id=101)
    with platform.engine.begin() as conn:
        db.mark_running(conn, request_id, "cancelled-run")

    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(
            job_def=backup_job,
            tags={REQUEST_TAG: str(request_id), SUBSCRIPTION_TAG: "1"},
        )
        instance.report_run_canceled(run)
        event = next(
            record.dagster_event
            for record in instance.all_logs(run.run_id)
            if record.dagster_event
            and record.dagster_event.event_type == dg.DagsterEventType.RUN_CANCELED
        )
        context = dg.build_run_status_sensor_context(
            sensor_name=backup_canceled_sensor.name,
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(run.run_id),
            dagster_event=event,
            resources=platform.resources(),
        )
        backup_canceled_sensor(context)
        backup_canceled_sensor(context)  # a second evaluation tells no one again

    row = platform.request(request_id)
    assert row.status == "failed"
    assert "no cuenta" in row.status_detail
    keys = sorted(p.name.split("_", 1)[1] for p in platform.outbox.glob("*.eml"))
    assert keys == [
        f"backup-{request_id}-failed.eml",
        f"backup-{request_id}-failure-alert.eml",
    ]
