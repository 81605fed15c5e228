"""The housekeeping schedules through Dagster's own tools, and the instance configs (local and production)."""

from __future__ import annotations

import importlib
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import yaml
from sqlalchemy.engine import make_url

from backup_pipeline import schedules as s
from backup_pipeline.jobs import backup_partitions
from backup_pipeline.mail import Mailer
from backup_pipeline.resources import BackupPolicyResource
from backup_pipeline.resources.mailer import MailerResource
from backup_pipeline.resources.platform_db import PlatformDatabaseResource
from backup_pipeline.resources.storage import ObjectStoreResource, open_store
from backup_pipeline_tests.job.test_housekeeping import (
    NOW,
    SENDER,
    SUPPORT,
    FlakyMailer,
    add_three_clinics,
    sent_emails,
)
from backup_pipeline_tests.support.platform import EVERY_DATABASE, Backends, Platform

REPO = Path(__file__).resolve().parents[2]
TICK = NOW.replace(tzinfo=UTC)  # what the daemon passes: an aware datetime in the schedule's zone


@pytest.fixture(params=EVERY_DATABASE)
def backends(request: pytest.FixtureRequest) -> Backends:
    """The platform of every test here once on SQLite and once on PostgreSQL."""
    return request.param


@pytest.fixture
def platform(platform: Platform) -> Platform:
    return add_three_clinics(platform)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def resources(platform: Platform) -> dict[str, Any]:
    return {
        "platform_db": PlatformDatabaseResource(url=platform.url),
        "archives": ObjectStoreResource(url=platform.settings.archives_url),
        "mailer": MailerResource(
            url=platform.settings.mail_url, from_email=SENDER, support_email=SUPPORT
        ),
        "policy": BackupPolicyResource(late_after_hours=24, partition_retention_days=90),
    }


def tick(
    schedule: dg.ScheduleDefinition,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    at: datetime = TICK,
) -> dg.ExecuteInProcessResult:
    """One tick of the schedule, and the run it asks for, executed here on `instance`."""
    request = schedule.evaluate_tick(
        dg.build_schedule_context(instance=instance, scheduled_execution_time=at)
    ).run_requests[0]
    result = schedule.job.execute_in_process(
        run_config=request.run_config,
        instance=instance,
        resources=resources,
        tags=request.tags,
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


# --- The schedules themselves -------------------------------------------------------------


def test_every_schedule_runs_by_default_in_utc_with_a_description():
    names = {schedule.name for schedule in s.HOUSEKEEPING_SCHEDULES}
    assert names == {
        "expire_archives",
        "alert_late_requests",
        "refresh_quota_windows",
        "prune_backup_partitions",
    }
    for schedule in s.HOUSEKEEPING_SCHEDULES:
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        assert schedule.execution_timezone == "UTC"
        assert len(schedule.description or "") > 40


def test_housekeeping_jobs_jump_the_backup_queue_and_run_one_at_a_time():
    for schedule in s.HOUSEKEEPING_SCHEDULES:
        tags = schedule.job.tags
        assert tags[s.HOUSEKEEPING_TAG] == schedule.job.name
        assert int(tags["dagster/priority"]) > 0  # backups run at the default priority, 0


def test_a_tick_asks_for_one_run_judged_at_its_scheduled_time(instance):
    mexico_tick = datetime(2026, 3, 1, 6, 5, tzinfo=UTC).astimezone(ZoneInfo("America/Mexico_City"))
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=mexico_tick)
    request = s.expire_archives_schedule.evaluate_tick(context).run_requests[0]

    assert request.run_key == "expire_archives-2026-03-01T06:05:00"
    assert request.run_config["ops"]["expire_archives"]["config"] == {
        "as_of": "2026-03-01T06:05:00"
    }


def test_the_schedules_load_with_the_code_locations_definitions(tmp_path):
    from backup_pipeline.definitions import build_definitions
    from backup_pipeline.settings import Settings

    defs = build_definitions(Settings.from_env({"BACKUP_VAR_DIR": str(tmp_path)}))
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    for schedule in s.HOUSEKEEPING_SCHEDULES:
        assert repository.get_job(schedule.job_name).name == schedule.job.name


# --- Runs of the housekeeping jobs --------------------------------------------------------


def test_the_hourly_tick_expires_links_as_of_its_time_and_clears_staging(
    platform, instance, resources
):
    archives = open_store(resources["archives"].url)
    expired = platform.add_delivered_request(
        1, archives, link_expires_at=NOW - timedelta(minutes=5)
    )
    # Already past on the wall clock, but not at the tick: the run judges at the tick's time.
    later = platform.add_delivered_request(2, archives, link_expires_at=NOW + timedelta(minutes=5))
    platform.add_request(3, status="failed", requested_at=NOW - timedelta(hours=2))
    platform.add_request(4, status="running", requested_at=NOW - timedelta(hours=1))
    for request_id in (3, 4):
        archives.put_bytes(f"staging/{request_id}/run/pacientes.xlsx", b"x")

    result = tick(s.expire_archives_schedule, instance, resources)

    assert result.output_for_node("expire_archives") == 1
    assert (platform.status(1), archives.exists(expired)) == ("expired", False)
    assert (platform.status(2), archives.exists(later)) == ("delivered", True)
    assert [info.key for info in archives.list("staging/")] == ["staging/4/run/pacientes.xlsx"]
    run = instance.get_run_by_id(result.run_id)
    assert run.tags[s.HOUSEKEEPING_TAG] == "archive_housekeeping_job"


class OutageMailerResource(MailerResource):
    """The configured outbox behind a provider that answers 503 to every send."""

    def get_mailer(self) -> Mailer:
        return Mailer(
            FlakyMailer(Path(self.url.removeprefix("file://")), failures=10**6),
            from_email=self.from_email,
            support_email=self.support_email,
        )


def test_a_late_request_alerts_support_once_even_after_an_outage(platform, instance, resources):
    platform.add_request(1, status="running", requested_at=NOW - timedelta(hours=30), run_id="r-1")
    platform.add_request(2, status="delivered", requested_at=NOW - timedelta(hours=30))
    outbox = Path(resources["mailer"].url.removeprefix("file://"))
    during_outage = {
        **resources,
        "mailer": OutageMailerResource(
            url=resources["mailer"].url, from_email=SENDER, support_email=SUPPORT
        ),
    }

    first = tick(s.alert_late_requests_schedule, instance, during_outage)
    assert first.output_for_node("alert_late_requests") == 0
    assert platform.alerts() == [] and sent_emails(outbox) == []

    second = tick(s.alert_late_requests_schedule, instance, resources, TICK + timedelta(hours=1))
    third = tick(s.alert_late_requests_schedule, instance, resources, TICK + timedelta(hours=2))

    assert (
        second.output_for_node("alert_late_requests"),
        third.output_for_node("alert_late_requests"),
    ) == (1, 0)
    assert [row[:2] for row in platform.alerts()] == [(1, "late")]
    emails = sent_emails(outbox)
    assert len(emails) == 1 and "Backup request 1 " in emails[0]


def test_the_daily_tick_writes_quota_windows(platform, instance, resources):
    platform.add_request(1, status="delivered", requested_at=NOW - timedelta(days=30))

    result = tick(s.refresh_quota_windows_schedule, instance, resources)

    assert result.output_for_node("refresh_quota_windows") == 1
    assert platform.quota_windows() == {
        1: (NOW - timedelta(days=30), NOW + timedelta(days=150), 1, NOW)
    }


def test_partition_retention_deletes_old_finished_and_gone_requests_only(
    platform, instance, resources
):
    old, recent = NOW - timedelta(days=120), NOW - timedelta(days=5)
    platform.add_request(1, status="delivered", requested_at=old)
    platform.add_request(2, status="failed", requested_at=old)
    platform.add_request(3, status="expired", requested_at=recent)
    platform.add_request(4, status="running", requested_at=old)
    platform.add_request(5, status="pending", requested_at=recent)
    instance.add_dynamic_partitions(backup_partitions.name, ["1", "2", "3", "4", "5", "404"])

    result = tick(s.prune_backup_partitions_schedule, instance, resources)

    assert result.output_for_node("prune_backup_partitions") == 3
    assert sorted(instance.get_dynamic_partitions(backup_partitions.name)) == ["3", "4", "5"]


# --- Instance configs (dagster.yaml) ------------------------------------------------------
#
# Dagster validates dagster.yaml only when an instance is created, and has no public function
# for it; these tests use its private config check (support/dagster_internals.py) so that a
# wrong key fails here instead of in a pod at deploy time.

INSTANCE_CONFIGS = {"local": REPO / "dagster.yaml", "production": REPO / "deploy" / "dagster.yaml"}


def validated_instance_config(path: Path) -> dict[str, Any]:
    """The instance config after Dagster's schema check, plus each pluggable class's own check."""
    from backup_pipeline_tests.support.dagster_internals import (
        dagster_instance_config,
        validate_config,
    )

    config, _custom_class = dagster_instance_config(str(path.parent), path.name)
    for section in ("run_launcher", "compute_logs", "scheduler", "run_coordinator"):
        pluggable = config.get(section)
        if not pluggable:
            continue
        try:
            module = importlib.import_module(pluggable["module"])
        except ImportError:
            continue  # checked by its own test, which says what is missing
        checked = validate_config(
            getattr(module, pluggable["class"]).config_type(), pluggable.get("config") or {}
        )
        if not checked.success:
            raise dg.DagsterInvalidConfigError(
                f"{section} in {path.name}", checked.errors, pluggable.get("config")
            )
    return dict(config)


@pytest.mark.parametrize("name", sorted(INSTANCE_CONFIGS))
def test_instance_config_matches_dagsters_schema(name):
    config = validated_instance_config(INSTANCE_CONFIGS[name])
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {
        "key": "backup/subscription_id",
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 1,
    } in limits
    assert config["telemetry"] == {"enabled": False}


def test_the_local_instance_dequeues_runs_every_second(tmp_path):
    """The local dagster.yaml with Dagster's own loader: the daemon's run queue polls every
    second (Dagster's default is five), with the run limits still taken from `concurrency`."""
    shutil.copy(INSTANCE_CONFIGS["local"], tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, dg.QueuedRunCoordinator)
        assert coordinator.dequeue_interval_seconds == 1
        # What the daemon dequeues by: `concurrency > runs` merged over the run queue's config.
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 6
        assert {"key": "backup/kind", "value": "backup", "limit": 2} in queue.tag_concurrency_limits


def test_a_misspelled_key_in_the_production_config_is_caught(tmp_path):
    broken = tmp_path / "dagster.yaml"
    text = INSTANCE_CONFIGS["production"].read_text()
    broken.write_text(text.replace("job_namespace:", "job_namespce:"))
    with pytest.raises(dg.DagsterInvalidConfigError, match="job_namespce"):
        validated_instance_config(broken)


def test_production_compute_logs_match_the_gcs_manager_schema():
    pytest.importorskip(
        "dagster_gcp", reason="dagster-gcp==0.29.27 (GCSComputeLogManager) is not installed"
    )
    config = validated_instance_config(INSTANCE_CONFIGS["production"])
    assert config["compute_logs"]["class"] == "GCSComputeLogManager"


FAKE_KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
    "users": [{"name": "u", "user": {"token": "test"}}],
    "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
    "current-context": "ctx",
}


def test_production_instance_loads_on_postgresql_with_its_k8s_launcher_and_run_queue(
    postgres_url, tmp_path, monkeypatch
):
    """The real instance from deploy/dagster.yaml: storage on a real PostgreSQL and the
    K8sRunLauncher as configured, pointed at a kubeconfig instead of the in-cluster one (loading
    it connects to nothing); only the GCS compute logs are swapped out (they need a bucket)."""
    url = make_url(postgres_url)
    monkeypatch.setenv("DAGSTER_PG_USERNAME", url.username or "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", url.password or "")
    monkeypatch.setenv("DAGSTER_PG_HOST", url.host or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_DB", url.database or "")
    if url.port and url.port != 5432:
        pytest.skip("deploy/dagster.yaml uses PostgreSQL's standard port 5432")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_CONFIGS["production"], home / "dagster.yaml")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(FAKE_KUBECONFIG))
    launcher = yaml.safe_load((home / "dagster.yaml").read_text())["run_launcher"]
    launcher["config"].update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))

    config = yaml.safe_load((home / "dagster.yaml").read_text())
    config["run_launcher"] = launcher
    config["compute_logs"] = {"module": "dagster", "class": "NoOpComputeLogManager"}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.run_launcher).__name__ == "K8sRunLauncher"
        assert instance.run_launcher.job_namespace == "backups"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 26
        # 20 backups at a time; the other slots are housekeeping's and support's.
        assert {
            "key": "backup/kind",
            "value": "backup",
            "limit": 20,
        } in queue.tag_concurrency_limits
        assert instance.run_monitoring_enabled
        # The storage the partition retention schedule works on.
        instance.add_dynamic_partitions(backup_partitions.name, ["1", "2"])
        instance.delete_dynamic_partition(backup_partitions.name, "1")
        assert instance.get_dynamic_partitions(backup_partitions.name) == ["2"]


def test_local_instance_loads_with_its_run_queue(tmp_path):
    shutil.copy(INSTANCE_CONFIGS["local"], tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs >= 1
        assert any(
            limit["key"] == "backup/subscription_id" for limit in queue.tag_concurrency_limits
        )
