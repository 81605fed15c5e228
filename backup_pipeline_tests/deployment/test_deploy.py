"""deploy/ works on a first deploy: the values pass the chart's schema, the instance the chart
renders from them loads with Dagster's own checks, a run pod's Job built by dagster-k8s's own code
gets the runs' account, namespace, resources and settings, migrate runs as a Helm hook, and the
image installs only what it runs, pinned."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import tomllib
import uuid
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import dagster as dg
import jsonschema
import pytest
import yaml
from dagster_k8s import K8sRunLauncher
from dagster_k8s.job import construct_dagster_k8s_job, get_job_name_from_run_id
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from backup_pipeline import cli
from backup_pipeline.definitions import build_definitions
from backup_pipeline.jobs import BACKUP_JOB_NAME
from backup_pipeline.settings import Settings, SettingsError
from backup_pipeline_tests.job.test_schedules import FAKE_KUBECONFIG, validated_instance_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# Dagster's chart schema for 1.13.27, as far as these values use it: data/README.md says where
# it comes from.
CHART_SCHEMA = Path(__file__).parent / "data" / "dagster-chart-values.schema.json"

# The release as deploy/README.md installs it.
RELEASE = "dagster"
NAMESPACE = "backups"
RELEASE_ENV = {
    "BACKUP_IMAGE": "europe-docker.pkg.dev/my-gcp-project/backups/backup-pipeline",
    "BACKUP_IMAGE_TAG": "4f1c2a9e8b7d6c5b4a39281706f5e4d3c2b1a098",  # a full git SHA: 40 chars
    "GCP_PROJECT": "my-gcp-project",
    "DAGSTER_PG_PASSWORD": "dagster-db-password",
    "PLATFORM_DB_PASSWORD": "platform-db-password",
    "SENDGRID_API_KEY": "SG.test-key",
}

# Kubernetes' limits: an object or label name is at most 63 characters of DNS-1123 label; a
# label value at most 63 characters; a label key's prefix a DNS-1123 subdomain.
DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
DNS_1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def _envsubst(text: str, names: set[str]) -> str:
    """What `envsubst '$A $B'` does with RELEASE_ENV: only the named variables are replaced."""
    return re.sub(
        r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
        lambda m: RELEASE_ENV[m[1]] if m[1] in names else m[0],
        text,
    )


def _readme_substitutions() -> dict[str, set[str]]:
    """Each deploy/ file deploy/README.md pipes through envsubst, with the variables it names."""
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    found: dict[str, set[str]] = {}
    for names, path in re.findall(r"envsubst '([^']*)'\s*(?:\\\n\s*)?< (deploy/\S+)", readme):
        found.setdefault(path, set()).update(n.lstrip("$") for n in names.split())
    return found


def _rendered(name: str) -> list[dict[str, Any]]:
    """deploy/<name>'s documents as the README applies them (after envsubst)."""
    names = _readme_substitutions().get(f"deploy/{name}", set())
    text = _envsubst((DEPLOY / name).read_text(encoding="utf-8"), names)
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    (document,) = _rendered("values.yaml")
    return document


@pytest.fixture(scope="module")
def instance() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text(encoding="utf-8"))


def _deployment(values: dict[str, Any]) -> dict[str, Any]:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def _image(values: dict[str, Any]) -> str:
    image = _deployment(values)["image"]
    return f"{image['repository']}:{image['tag']}"


def _migrate_job(values: dict[str, Any]) -> dict[str, Any]:
    (job,) = [m for m in values["extraManifests"] if m["kind"] == "Job"]
    return job


def _objects() -> dict[tuple[str, str], dict[str, Any]]:
    """The objects applied with kubectl before the chart, by (kind, name)."""
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for name in ("config.yaml", "secrets.yaml", "serviceaccount.yaml")
        for doc in _rendered(name)
    }


# --- the chart's rendering of the instance (templates/configmap-instance.yaml and
# templates/helpers/instance/*.tpl), for the keys deploy/values.yaml sets


def _postgres(values: dict[str, Any]) -> dict[str, Any]:
    pg = values["postgresql"]
    return {
        "postgres_db": {
            "username": pg["postgresqlUsername"],
            "password": {"env": "DAGSTER_PG_PASSWORD"},
            "hostname": pg["postgresqlHost"],
            "db_name": pg["postgresqlDatabase"],
            "port": pg["service"]["port"],
            "params": {},
            "scheme": pg["postgresqlScheme"],
        }
    }


def _run_launcher(values: dict[str, Any]) -> dict[str, Any]:
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    run_k8s = k8s.get("runK8sConfig", {})
    return {
        "module": "dagster_k8s",
        "class": "K8sRunLauncher",
        "config": {
            "load_incluster_config": True,  # the chart's default
            "job_namespace": k8s.get("jobNamespace") or NAMESPACE,
            "image_pull_policy": "Always",  # the chart's default
            # dagster.serviceAccountName: the chart's own account, the webserver's and daemon's.
            "service_account_name": values["serviceAccount"]["name"],
            "dagster_home": "/opt/dagster/dagster_home",
            "instance_config_map": f"{RELEASE}-instance",
            "postgres_password_secret": values["global"]["postgresqlSecretName"],
            "env_config_maps": [m["name"] for m in k8s["envConfigMaps"]],
            "env_secrets": [s["name"] for s in k8s["envSecrets"]],
            "labels": k8s["labels"],
            "resources": k8s["resources"],
            "run_k8s_config": {
                "pod_spec_config": run_k8s["podSpecConfig"],
                "job_spec_config": run_k8s["jobSpecConfig"],
            },
        },
    }


def render_instance(values: dict[str, Any]) -> dict[str, Any]:
    daemon = values["dagsterDaemon"]
    monitoring = daemon["runMonitoring"]
    logs = values["computeLogManager"]["config"]["gcsComputeLogManager"]
    return {
        "scheduler": {"module": "dagster.core.scheduler", "class": "DagsterDaemonScheduler"},
        "schedule_storage": {
            "module": "dagster_postgres.schedule_storage",
            "class": "PostgresScheduleStorage",
            "config": _postgres(values),
        },
        "run_launcher": _run_launcher(values),
        "run_storage": {
            "module": "dagster_postgres.run_storage",
            "class": "PostgresRunStorage",
            "config": _postgres(values),
        },
        "event_log_storage": {
            "module": "dagster_postgres.event_log",
            "class": "PostgresEventLogStorage",
            "config": _postgres(values),
        },
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": daemon["runCoordinator"]["type"],
        },
        "compute_logs": {
            "module": "dagster_gcp.gcs.compute_log_manager",
            "class": "GCSComputeLogManager",
            "config": {
                "bucket": logs["bucket"],
                "prefix": logs["prefix"],
                "upload_interval": logs["uploadInterval"],
            },
        },
        "run_monitoring": {
            "enabled": monitoring["enabled"],
            "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "cancel_timeout_seconds": monitoring["cancelTimeoutSeconds"],
            "max_resume_run_attempts": monitoring["maxResumeRunAttempts"],
            "max_runtime_seconds": monitoring["maxRuntimeSeconds"],
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
        },
        "sensors": {
            "use_threads": daemon["sensors"]["useThreads"],
            "num_workers": daemon["sensors"]["numWorkers"],
        },
        "schedules": {
            "use_threads": daemon["schedules"]["useThreads"],
            "num_workers": daemon["schedules"]["numWorkers"],
        },
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
        "retention": {
            "sensor": {"purge_after_days": values["retention"]["sensor"]["purgeAfterDays"]},
            "schedule": {"purge_after_days": values["retention"]["schedule"]["purgeAfterDays"]},
        },
        "concurrency": {
            "runs": {
                "max_concurrent_runs": values["concurrency"]["runs"]["maxConcurrentRuns"],
                "tag_concurrency_limits": values["concurrency"]["runs"]["tagConcurrencyLimits"],
            }
        },
    }


# --- the values


def test_every_placeholder_is_one_the_readme_fills_in():
    substitutions = _readme_substitutions()
    for path in sorted(DEPLOY.glob("*.yaml")):
        named = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", path.read_text(encoding="utf-8")))
        assert named == substitutions.get(f"deploy/{path.name}", set()), path.name
        assert "PROJECT/" not in path.read_text() and "GIT_SHA" not in path.read_text()


def test_the_values_pass_the_charts_schema_with_every_key_declared(values: dict[str, Any]):
    schema = json.loads(CHART_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    assert [e.message for e in validator.iter_errors(values)] == []

    misspelled = json.loads(json.dumps(values))
    misspelled["dagsterDaemon"]["runMonitoring"]["maxRunTimeSeconds"] = 43200
    assert not validator.is_valid(misspelled)


def test_the_code_server_hands_no_pod_settings_to_the_runs(values: dict[str, Any]):
    # The chart's default (absent) is on: every run would take the code server's account,
    # namespace and 512Mi, overriding the launcher's.
    assert _deployment(values)["includeConfigInLaunchedRuns"] == {"enabled": False}


def test_the_rendered_instance_passes_dagsters_checks_and_says_what_dagster_yaml_says(
    values: dict[str, Any], instance: dict[str, Any], tmp_path: Path
):
    pytest.importorskip("dagster_gcp")
    rendered = render_instance(values)
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(rendered))
    checked = validated_instance_config(tmp_path / "dagster.yaml")

    assert checked["run_monitoring"]["max_runtime_seconds"] == 12 * 3600
    for section in ("run_monitoring", "concurrency", "sensors", "schedules", "telemetry"):
        assert checked[section] == instance[section], section
    launcher, reference = checked["run_launcher"]["config"], instance["run_launcher"]["config"]
    for key in ("job_namespace", "env_config_maps", "env_secrets", "labels", "resources"):
        assert launcher[key] == reference[key], key
    assert launcher["postgres_password_secret"] == reference["postgres_password_secret"]
    assert launcher["instance_config_map"] == reference["instance_config_map"]
    assert (
        checked["compute_logs"]["config"]["prefix"] == instance["compute_logs"]["config"]["prefix"]
    )


def _launcher(values: dict[str, Any], tmp_path: Path) -> K8sRunLauncher:
    """The K8sRunLauncher of the rendered instance, after Dagster's config check; a kubeconfig
    instead of the in-cluster one (loading it connects to nothing)."""
    rendered = render_instance(values)
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(rendered))
    config = dict(validated_instance_config(tmp_path / "dagster.yaml")["run_launcher"]["config"])
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(FAKE_KUBECONFIG))
    from backup_pipeline_tests.support.dagster_internals import validate_config

    processed = validate_config(
        K8sRunLauncher.config_type(),
        {**config, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)},
    )
    assert processed.success, processed.errors
    return K8sRunLauncher(**processed.value)


def _cluster_settings() -> Settings:
    """The settings the ConfigMap and the Secret give a pod, in a cluster."""
    objects = _objects()
    env = dict(objects["ConfigMap", "backup-pipeline-config"]["data"])
    env.update(objects["Secret", "backup-pipeline-secrets"]["stringData"])
    return Settings.from_env(env)


def _names_and_labels_fit(metadata: dict[str, Any] | Any) -> None:
    """A name (where there is one) and every label within Kubernetes' limits."""
    name = metadata.get("name") if isinstance(metadata, dict) else metadata.name
    labels = (metadata.get("labels") if isinstance(metadata, dict) else metadata.labels) or {}
    assert name is None or DNS_1123_LABEL.fullmatch(name), name
    assert labels, "labelled, so that kubectl -l finds it"
    for key, value in labels.items():
        prefix, _, label_name = key.rpartition("/")
        assert not prefix or (len(prefix) <= 253 and DNS_1123_SUBDOMAIN.fullmatch(prefix)), key
        assert LABEL_NAME.fullmatch(label_name), key
        assert LABEL_VALUE.fullmatch(value), (key, value)


def test_a_run_pod_gets_the_runs_account_namespace_resources_and_settings(
    values: dict[str, Any], tmp_path: Path
):
    launcher = _launcher(values, tmp_path)
    settings = _cluster_settings()  # the ConfigMap states every location: the load goes on
    job_def = build_definitions(settings).get_job_def(BACKUP_JOB_NAME)
    run = dg.DagsterRun(
        job_name=BACKUP_JOB_NAME,
        run_id=str(uuid.uuid4()),
        tags={**job_def.tags, "backup/request_id": "812", "dagster/partition": "812"},
    )

    # The launcher's own steps (K8sRunLauncher._launch_k8s_job_with_args), with the image the
    # code server reports (the chart sets DAGSTER_CURRENT_IMAGE to the deployment's image).
    context = launcher.get_container_context_for_run(run)
    job_name = get_job_name_from_run_id(run.run_id)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image=_image(values), run_launcher=launcher),
        args=["dagster", "api", "execute_run", "{}"],
        job_name=job_name,
        pod_name=job_name,
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={
            "dagster/job": BACKUP_JOB_NAME,
            "dagster/run-id": run.run_id,
            "dagster/code-location": "backup_pipeline",
        },
    )
    pod = job.spec.template.spec
    (container,) = pod.containers
    objects = _objects()

    assert context.namespace == NAMESPACE
    assert pod.service_account_name == "backup-pipeline-runs"
    assert ("ServiceAccount", pod.service_account_name) in objects
    assert container.image == _image(values)
    assert container.resources.requests == {"cpu": "2", "memory": "1Gi"}
    assert container.resources.limits == {"memory": "2Gi"}
    config_maps = [e.config_map_ref.name for e in container.env_from if e.config_map_ref]
    secrets = [e.secret_ref.name for e in container.env_from if e.secret_ref]
    assert config_maps == ["backup-pipeline-config"]
    assert secrets == ["backup-pipeline-secrets"]
    assert {("ConfigMap", config_maps[0]), ("Secret", secrets[0])} <= set(objects)
    # Dagster's database password from the chart's Secret, which is applied beside them.
    (password,) = [e for e in container.env if e.name == "DAGSTER_PG_PASSWORD"]
    assert ("Secret", password.value_from.secret_key_ref.name) in objects
    for obj in objects.values():
        assert obj["metadata"]["namespace"] == NAMESPACE
    assert job.spec.ttl_seconds_after_finished == 86400

    _names_and_labels_fit(job.metadata)
    _names_and_labels_fit(job.spec.template.metadata)
    assert pod.containers[0].name and DNS_1123_LABEL.fullmatch(pod.containers[0].name)
    assert settings.archives_url.startswith("gs://") and settings.files_url.startswith("gs://")


def test_a_misconfigured_launcher_would_have_been_caught(values: dict[str, Any], tmp_path: Path):
    # Without the pod spec's account the run would run as the webserver's and daemon's account,
    # which cannot read the files bucket: the check above is not vacuous.
    broken = json.loads(json.dumps(values))
    del broken["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]
    broken["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"] = {}
    launcher = _launcher(broken, tmp_path)
    run = dg.DagsterRun(job_name=BACKUP_JOB_NAME, run_id=str(uuid.uuid4()))
    context = launcher.get_container_context_for_run(run)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image=_image(values), run_launcher=launcher),
        args=[],
        job_name="dagster-run-x",
        pod_name="dagster-run-x",
        user_defined_k8s_config=context.run_k8s_config,
    )
    assert job.spec.template.spec.service_account_name == values["serviceAccount"]["name"]


def test_the_configmap_without_a_location_stops_the_load_in_one_line():
    objects = _objects()
    env = dict(objects["ConfigMap", "backup-pipeline-config"]["data"])
    env.update(objects["Secret", "backup-pipeline-secrets"]["stringData"])
    del env["BACKUP_ARCHIVES_URL"]

    with pytest.raises(SettingsError) as raised:
        Settings.from_env(env)
    assert str(raised.value).startswith("BACKUP_ARCHIVES_URL not set")
    assert "\n" not in str(raised.value)


def test_the_chart_objects_names_fit_kubernetes_limits(values: dict[str, Any]):
    # The chart names the code server's Deployment "<fullname>-<deployment name>" and the
    # instance ConfigMap "<fullname>-instance"; fullname is the release name when it holds "dagster".
    for name in (
        f"{RELEASE}-{_deployment(values)['name']}",
        f"{RELEASE}-instance",
        values["serviceAccount"]["name"],
        values["dagster-user-deployments"]["serviceAccount"]["name"],
    ):
        assert DNS_1123_LABEL.fullmatch(name), name
    for obj in _objects().values():
        _names_and_labels_fit(obj["metadata"])


# --- migrate before each rollout


def test_migrate_runs_as_a_hook_before_each_install_and_upgrade_with_the_releases_image(
    values: dict[str, Any],
):
    job = _migrate_job(values)
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    _names_and_labels_fit(job["metadata"])
    _names_and_labels_fit(job["spec"]["template"]["metadata"])

    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["image"] == _image(values)
    assert container["command"] == ["backup-pipeline", "migrate"]
    assert cli.build_parser().parse_args(container["command"][1:]).command == "migrate"
    deployment = _deployment(values)
    assert [s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s] == [
        m["name"] for m in deployment["envConfigMaps"]
    ]
    assert [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s] == [
        s["name"] for s in deployment["envSecrets"]
    ]
    (user,) = [args for instruction, args in _dockerfile() if instruction == "USER"]
    assert spec["securityContext"]["runAsUser"] == int(user)
    assert deployment["podSecurityContext"]["runAsUser"] == int(user)


def test_a_full_sha_tag_keeps_every_name_within_63_characters(values: dict[str, Any]):
    assert len(RELEASE_ENV["BACKUP_IMAGE_TAG"]) == 40
    job = _migrate_job(values)
    assert len(job["metadata"]["name"]) <= 63
    assert RELEASE_ENV["BACKUP_IMAGE_TAG"] not in job["metadata"]["name"]


# --- the image


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


def _dockerignored() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_image_is_pinned_runs_as_a_user_and_installs_the_package_under_constraints():
    instructions = _dockerfile()
    (base,) = [args for instruction, args in instructions if instruction == "FROM"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base
    (user,) = [args for instruction, args in instructions if instruction == "USER"]
    assert user not in {"root", "0"}
    assert ("RUN", "pip install --constraint constraints.txt .") in instructions


def test_the_build_context_is_only_what_the_image_copies():
    ignored = _dockerignored()
    assert ignored[0] == "**"  # everything is left out but what is named below
    kept = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    copied = set()
    for instruction, args in _dockerfile():
        if instruction == "COPY":
            *sources, _ = shlex.split(args)
            copied.update(source.rstrip("/") for source in sources)
    assert kept == copied
    assert all((REPO / source).exists() for source in copied)
    assert "**/__pycache__" in ignored


def _constraints_module() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_constraints", DEPLOY / "constraints.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_constraints_pin_exactly_what_the_image_installs():
    pinned = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", line
            pinned[canonicalize_name(requirement.name)] = specifier.version
    # The image installs the package without extras: no test tools, no webserver.
    assert pinned == _constraints_module().image_requirements(), (
        "constraints.txt is stale: python deploy/constraints.py > constraints.txt"
    )
    for unused in ("pytest", "hypothesis", "ruff", "dagster-webserver", "coverage"):
        assert canonicalize_name(unused) not in pinned, unused


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
    assert pyproject["project"]["scripts"]["backup-pipeline"] == "backup_pipeline.cli:main"
    assert "backup-pipeline" in _console_scripts()


def test_every_pod_that_reaches_gcs_runs_as_an_account_bound_through_workload_identity(
    values: dict[str, Any],
):
    # The webserver and the daemon (the chart's account): the compute-log manager checks its
    # bucket when they start. The code server (its sensors) and the runs: backup-pipeline-runs.
    workload_identity = "iam.gke.io/gcp-service-account"
    gcp_account = re.compile(rf"[a-z0-9-]+@{RELEASE_ENV['GCP_PROJECT']}\.iam\.gserviceaccount\.com")
    assert values["serviceAccount"]["create"] is True
    assert gcp_account.fullmatch(values["serviceAccount"]["annotations"][workload_identity])

    code_server = values["dagster-user-deployments"]["serviceAccount"]
    runs = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]
    assert code_server["name"] == runs["serviceAccountName"]
    account = _objects()["ServiceAccount", code_server["name"]]
    assert gcp_account.fullmatch(account["metadata"]["annotations"][workload_identity])
    config = _objects()["ConfigMap", "backup-pipeline-config"]["data"]
    # Links are signed by the same GCP account the runs act as (no key under Workload Identity).
    assert (
        config["BACKUP_GCS_SIGNER_EMAIL"] == account["metadata"]["annotations"][workload_identity]
    )
