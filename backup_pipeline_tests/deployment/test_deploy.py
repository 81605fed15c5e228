"""deploy/ loads: the Helm values use the chart's keys and say what dagster.yaml says, and the
Dockerfile and the migrate Job run commands the installed package really has."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml

from backup_pipeline import cli

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# The keys of Dagster's Helm chart, from its schema (dagster-io/dagster,
# helm/dagster/schema/schema/charts/dagster/values.py and
# dagster_user_deployments/subschema/user_deployments.py, as of the 1.13 line the chart version
# 1.13.27 is cut from). Re-read them when the chart's version changes.
CHART_TOP_LEVEL_KEYS = {
    "dagsterWebserver",
    "dagster-user-deployments",
    "postgresql",
    "generatePostgresqlPasswordSecret",
    "generateCeleryConfigSecret",
    "rabbitmq",
    "redis",
    "flower",
    "ingress",
    "imagePullSecrets",
    "computeLogManager",
    "scheduler",
    "runLauncher",
    "pythonLogs",
    "dagsterDaemon",
    "busybox",
    "migrate",
    "telemetry",
    "serviceAccount",
    "global",
    "retention",
    "concurrency",
    "additionalInstanceConfig",
}
CHART_USER_DEPLOYMENTS_KEYS = {"enabled", "enableSubchart", "imagePullSecrets", "deployments"}
CHART_USER_DEPLOYMENT_KEYS = {
    "name",
    "image",
    "dagsterApiGrpcArgs",
    "codeServerArgs",
    "includeConfigInLaunchedRuns",
    "deploymentNamespace",
    "port",
    "replicaCount",
    "env",
    "envConfigMaps",
    "envSecrets",
    "annotations",
    "nodeSelector",
    "affinity",
    "tolerations",
    "podSecurityContext",
    "securityContext",
    "resources",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "labels",
    "volumeMounts",
    "volumes",
    "schedulerName",
    "initContainers",
    "sidecarContainers",
    "deploymentStrategy",
}
CHART_IMAGE_KEYS = {"repository", "tag", "pullPolicy"}
# concurrency.py forbids extra keys at every level.
CHART_CONCURRENCY_KEYS = {"enabled", "pools", "runs"}
CHART_CONCURRENCY_RUNS_KEYS = {"maxConcurrentRuns", "tagConcurrencyLimits"}
CHART_TAG_LIMIT_KEYS = {"key", "value", "limit"}


def _yaml(name: str) -> Any:
    return yaml.safe_load((DEPLOY / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return _yaml("values.yaml")


@pytest.fixture(scope="module")
def instance() -> dict[str, Any]:
    return _yaml("dagster.yaml")


@pytest.fixture(scope="module")
def job() -> dict[str, Any]:
    return _yaml("migrate-job.yaml")


def _deployment(values: dict[str, Any]) -> dict[str, Any]:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text(encoding="utf-8"))
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _exec_form(instructions: list[tuple[str, str]], name: str) -> list[str]:
    (argv,) = [json.loads(args) for instruction, args in instructions if instruction == name]
    return argv


def _console_scripts() -> set[str]:
    return {ep.name for ep in entry_points(group="console_scripts")}


def test_values_use_only_the_charts_keys(values: dict[str, Any]):
    assert set(values) <= CHART_TOP_LEVEL_KEYS
    assert set(values["dagster-user-deployments"]) <= CHART_USER_DEPLOYMENTS_KEYS
    deployment = _deployment(values)
    assert set(deployment) <= CHART_USER_DEPLOYMENT_KEYS
    assert set(deployment["image"]) <= CHART_IMAGE_KEYS
    assert set(values["concurrency"]) <= CHART_CONCURRENCY_KEYS
    assert set(values["concurrency"]["runs"]) <= CHART_CONCURRENCY_RUNS_KEYS
    for limit in values["concurrency"]["runs"]["tagConcurrencyLimits"]:
        assert set(limit) <= CHART_TAG_LIMIT_KEYS


def test_values_render_the_instance_of_dagster_yaml(
    values: dict[str, Any], instance: dict[str, Any]
):
    runs = instance["concurrency"]["runs"]
    assert values["concurrency"]["enabled"] is True
    assert values["concurrency"]["runs"] == {
        "maxConcurrentRuns": runs["max_concurrent_runs"],
        "tagConcurrencyLimits": runs["tag_concurrency_limits"],
    }
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"

    launcher = instance["run_launcher"]["config"]
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert values["runLauncher"]["type"] == instance["run_launcher"]["class"] == "K8sRunLauncher"
    assert k8s["jobNamespace"] == launcher["job_namespace"]
    assert [s["name"] for s in k8s["envSecrets"]] == launcher["env_secrets"]
    assert [c["name"] for c in k8s["envConfigMaps"]] == launcher["env_config_maps"]
    assert k8s["labels"] == launcher["labels"]
    assert k8s["resources"] == launcher["resources"]
    assert (
        k8s["runK8sConfig"]["podSpecConfig"]["serviceAccountName"]
        == (launcher["service_account_name"])
    )
    assert (
        k8s["runK8sConfig"]["jobSpecConfig"]["ttlSecondsAfterFinished"]
        == (launcher["run_k8s_config"]["job_spec_config"]["ttl_seconds_after_finished"])
    )

    postgres = instance["storage"]["postgres"]["postgres_db"]
    assert values["postgresql"]["enabled"] is False
    assert values["postgresql"]["postgresqlScheme"] == postgres["scheme"]
    assert values["postgresql"]["service"]["port"] == postgres["port"]
    assert values["global"]["postgresqlSecretName"] == launcher["postgres_password_secret"]

    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["enabled"] == instance["run_monitoring"]["enabled"]
    assert monitoring["startTimeoutSeconds"] == instance["run_monitoring"]["start_timeout_seconds"]
    assert (
        monitoring["maxResumeRunAttempts"]
        == (instance["run_monitoring"]["max_resume_run_attempts"])
    )
    assert monitoring["pollIntervalSeconds"] == instance["run_monitoring"]["poll_interval_seconds"]
    assert values["dagsterDaemon"]["runRetries"]["enabled"] == instance["run_retries"]["enabled"]
    for section in ("sensors", "schedules"):
        assert values["dagsterDaemon"][section] == {
            "useThreads": instance[section]["use_threads"],
            "numWorkers": instance[section]["num_workers"],
        }

    logs = values["computeLogManager"]["config"]["gcsComputeLogManager"]
    assert values["computeLogManager"]["type"] == instance["compute_logs"]["class"]
    assert logs["prefix"] == instance["compute_logs"]["config"]["prefix"]
    assert logs["uploadInterval"] == instance["compute_logs"]["config"]["upload_interval"]
    assert values["telemetry"]["enabled"] == instance["telemetry"]["enabled"]
    assert (
        values["retention"]["schedule"]["purgeAfterDays"]
        == (instance["retention"]["schedule"]["purge_after_days"])
    )
    sensor_purge = values["retention"]["sensor"]["purgeAfterDays"]
    for outcome, days in instance["retention"]["sensor"]["purge_after_days"].items():
        assert sensor_purge[outcome] == days


def test_the_image_is_pinned_runs_as_a_user_and_installs_the_package():
    instructions = _dockerfile()
    (base,) = [args for instruction, args in instructions if instruction == "FROM"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base
    (user,) = [args for instruction, args in instructions if instruction == "USER"]
    assert user not in {"root", "0"}
    assert ("RUN", "pip install .") in instructions
    for instruction, args in instructions:
        if instruction == "COPY":
            *sources, _ = shlex.split(args)
            assert all((REPO / source).exists() for source in sources), args


def test_the_images_command_is_the_charts_code_server_for_this_code_location(
    values: dict[str, Any],
):
    argv = _exec_form(_dockerfile(), "CMD")
    assert argv[0] in _console_scripts()
    assert argv[:3] == ["dagster", "code-server", "start"]
    deployment = _deployment(values)
    assert argv[argv.index("-p") + 1] == str(deployment["port"])
    module = argv[argv.index("-m") + 1]
    assert deployment["codeServerArgs"] == ["-m", module]
    assert importlib.util.find_spec(module) is not None
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["tool"]["dagster"]["module_name"] == module


def test_the_migrate_job_runs_backup_pipeline_migrate_with_the_code_locations_image_and_env(
    values: dict[str, Any], job: dict[str, Any]
):
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    command = container["command"]
    assert command == ["backup-pipeline", "migrate"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["backup-pipeline"] == "backup_pipeline.cli:main"
    assert "backup-pipeline" in _console_scripts()
    assert cli.build_parser().parse_args(command[1:]).command == "migrate"

    deployment = _deployment(values)
    image = deployment["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"
    assert [s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s] == [
        m["name"] for m in deployment["envConfigMaps"]
    ]
    assert [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s] == [
        s["name"] for s in deployment["envSecrets"]
    ]
    (user,) = [args for instruction, args in _dockerfile() if instruction == "USER"]
    assert spec["securityContext"]["runAsUser"] == int(user)
    assert deployment["podSecurityContext"]["runAsUser"] == int(user)
