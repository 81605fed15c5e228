"""Settings are checked when they are read: a bad value stops the CLI and the code location's load
in one line, `verify` reads none, and the README's table is the declaration's."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import backup_pipeline
from backup_pipeline.archive.verify import SHA256SUMS, sha256sums_text
from backup_pipeline.resources import BackupPolicyResource, build_resources
from backup_pipeline.settings import (
    README_TABLE,
    Settings,
    SettingsError,
    declared_variables,
    markdown_table,
)
from backup_pipeline_tests.support.platform import build_platform

REPO = Path(backup_pipeline.__file__).resolve().parent.parent
PART_SIZE_ALLOWED = (
    "at least 1000000 bytes, as a whole number optionally followed by kB, MB, GB (powers of 1000)"
    " or KiB, MiB, GiB (powers of 1024)"
)
LINK_TTL_ALLOWED = "whole hours from 1 to 168"


def _environment(tmp_path: Path, settings: dict[str, str]) -> dict[str, str]:
    """This process's environment without any BACKUP_* of its own, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    return {
        **env,
        "PYTHONPATH": str(REPO),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "BACKUP_VAR_DIR": str(tmp_path / "var"),
        **settings,
    }


def _cli(tmp_path: Path, settings: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "backup_pipeline.cli", *args],
        cwd=tmp_path,
        env=_environment(tmp_path, settings),
        capture_output=True,
        text=True,
        timeout=300,
    )


# Type: not a number of the kind expected. Bound: a number outside what is allowed. Unit: a
# suffix that is not one of the units the setting takes.
BAD_SETTINGS = {
    "type: letters for hours": ("BACKUP_LINK_TTL", "abc", LINK_TTL_ALLOWED),
    "type: nan hours": ("BACKUP_LINK_TTL", "nan", LINK_TTL_ALLOWED),
    "type: inf hours": ("BACKUP_LINK_TTL", "inf", LINK_TTL_ALLOWED),
    "type: a fraction of an hour": ("BACKUP_LINK_TTL", "1.5", LINK_TTL_ALLOWED),
    "type: letters for bytes": ("BACKUP_PART_SIZE", "abc", PART_SIZE_ALLOWED),
    "type: a batch that is not whole": (
        "BACKUP_SENSOR_BATCH",
        "1.5",
        "a whole number from 1 to 100000",
    ),
    "type: nan seconds": (
        "BACKUP_RETRY_DELAY_SECONDS",
        "nan",
        "a number of seconds more than 0 and at most 3600",
    ),
    "type: workers neither auto nor a number": (
        "BACKUP_EXPORT_WORKERS",
        "many",
        "'auto' or a whole number from 0 to 64",
    ),
    "bound: a link longer than GCS signs": ("BACKUP_LINK_TTL", "500", LINK_TTL_ALLOWED),
    "bound: a link of no time": ("BACKUP_LINK_TTL", "0", LINK_TTL_ALLOWED),
    "bound: parts of no bytes": ("BACKUP_PART_SIZE", "0", PART_SIZE_ALLOWED),
    "bound: parts of negative bytes": ("BACKUP_PART_SIZE", "-1", PART_SIZE_ALLOWED),
    "bound: parts too small to hold a file": ("BACKUP_PART_SIZE", "999999", PART_SIZE_ALLOWED),
    "bound: negative workers": (
        "BACKUP_EXPORT_WORKERS",
        "-1",
        "'auto' or a whole number from 0 to 64",
    ),
    "bound: negative retries": ("BACKUP_OP_MAX_RETRIES", "-1", "a whole number from 0 to 20"),
    "bound: an empty batch": ("BACKUP_EXPIRE_BATCH", "0", "a whole number from 1 to 100000"),
    "bound: a sensor that never ticks": (
        "BACKUP_SENSOR_INTERVAL_SECONDS",
        "0",
        "whole seconds from 1 to 3600",
    ),
    "unit: hours with a unit": ("BACKUP_LINK_TTL", "72h", LINK_TTL_ALLOWED),
    "unit: days for hours": ("BACKUP_LINK_TTL", "3d", LINK_TTL_ALLOWED),
    "unit: an unknown size unit": ("BACKUP_PART_SIZE", "4XB", PART_SIZE_ALLOWED),
    "unit: a fraction of a gigabyte": ("BACKUP_PART_SIZE", "1.5GB", PART_SIZE_ALLOWED),
    "unit: terabytes": ("BACKUP_PART_SIZE", "1TB", PART_SIZE_ALLOWED),
    "scheme: an object store we do not have": (
        "BACKUP_ARCHIVES_URL",
        "s3://clinic-backups",
        "gs://bucket[/prefix] or file:///absolute/folder",
    ),
    "scheme: a relative folder": (
        "BACKUP_FILES_URL",
        "file://./var/files",
        "gs://bucket[/prefix] or file:///absolute/folder",
    ),
    "scheme: mail through SMTP": (
        "BACKUP_MAIL_URL",
        "smtp://mail.example.com",
        "sendgrid://[host[:port]] or file:///absolute/folder",
    ),
    "scheme: a database we do not read": (
        "BACKUP_PLATFORM_DB_URL",
        "mysql://backups@db.internal/platform",
        "a sqlite:/// or postgresql:// SQLAlchemy URL",
    ),
    "address: a sender without an address": (
        "BACKUP_FROM_EMAIL",
        "Respaldo de información",
        "an email address, optionally as 'Name <address>'",
    ),
    "address: two support addresses": (
        "BACKUP_SUPPORT_EMAIL",
        "a@clinica.example, b@clinica.example",
        "an email address, optionally as 'Name <address>'",
    ),
}


@pytest.mark.parametrize(
    ("variable", "value", "allowed"), BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys()
)
def test_a_bad_setting_stops_a_command_with_one_line_naming_it(
    tmp_path: Path, variable: str, value: str, allowed: str
) -> None:
    done = _cli(tmp_path, {variable: value}, "migrate")

    assert done.returncode == 2
    assert done.stderr == f"error: {variable}={value!r}: {allowed} expected\n"
    assert done.stdout == ""
    # Stopped before anything was created: no database, no folder of the embedded defaults.
    assert not (tmp_path / "var").exists()


def test_a_bad_setting_touches_no_request_and_tells_no_clinic(tmp_path: Path) -> None:
    (tmp_path / "platform").mkdir()
    platform = build_platform(tmp_path / "platform")
    (clinic,) = platform.seed(patients=2)
    request_id = platform.file_request(clinic)

    done = _cli(tmp_path, {**platform.env, "BACKUP_PART_SIZE": "0"}, "process")

    assert (done.returncode, done.stderr) == (
        2,
        f"error: BACKUP_PART_SIZE='0': {PART_SIZE_ALLOWED} expected\n",
    )
    assert platform.request(request_id).status == "pending"
    assert platform.sent() == []
    assert not (tmp_path / "dagster_home").exists()


def test_a_database_password_is_never_shown_in_the_error_line(tmp_path: Path) -> None:
    url = "mysql+pymysql://backups:s3cr3t-pw@db.internal/platform"

    done = _cli(tmp_path, {"BACKUP_PLATFORM_DB_URL": url}, "migrate")

    assert done.returncode == 2
    assert "s3cr3t-pw" not in done.stderr
    assert done.stderr.startswith("error: BACKUP_PLATFORM_DB_URL='mysql+pymysql://backups:***@")


def test_every_bad_setting_is_named_on_the_one_line() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"BACKUP_LINK_TTL": "72h", "BACKUP_PART_SIZE": "4XB"})

    assert str(raised.value) == (
        f"BACKUP_LINK_TTL='72h': {LINK_TTL_ALLOWED} expected; "
        f"BACKUP_PART_SIZE='4XB': {PART_SIZE_ALLOWED} expected"
    )
    # No pydantic error chained behind it: a reader sees the line, not a validation dump.
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_verify_reads_no_setting(tmp_path: Path) -> None:
    archive = tmp_path / "respaldo.zip"
    content = b"hola\n"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("LEEME.txt", content)
        zf.writestr(
            SHA256SUMS, sha256sums_text([("LEEME.txt", hashlib.sha256(content).hexdigest())])
        )
    garbage = {name: "garbage:pw@!" for v in declared_variables().values() for name in v.names}

    done = _cli(tmp_path, garbage, "verify", str(archive))

    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith(f"OK: {archive} is intact")


def test_a_bad_setting_fails_the_code_location_load_with_the_one_line(tmp_path: Path) -> None:
    # Dagster's own load of the code location, as its code server does it for the UI.
    (tmp_path / "dagster_home").mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "definitions",
            "validate",
            "-m",
            "backup_pipeline.definitions",
        ],
        cwd=tmp_path,
        env=_environment(tmp_path, {"BACKUP_LINK_TTL": "72h"}),
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode != 0
    line = f"backup_pipeline.settings.SettingsError: BACKUP_LINK_TTL='72h': {LINK_TTL_ALLOWED} expected"
    assert line in done.stdout + done.stderr
    assert "ValidationError" not in done.stdout + done.stderr


def test_the_readme_table_is_the_settings_declaration() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = README_TABLE.search(readme)

    assert match is not None
    assert match[2] == markdown_table(), (
        "the README's settings table is stale: python -m backup_pipeline.settings "
        "--update-readme README.md"
    )


def test_every_declared_default_is_within_its_own_bounds_and_the_policys() -> None:
    settings = Settings.from_env({})
    policy = build_resources(settings)["policy"]

    assert policy == BackupPolicyResource()
    assert (settings.link_ttl_hours, settings.part_size_bytes) == (72, 4_000_000_000)
    assert settings.export_workers is None


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("4000000000", 4_000_000_000),
        ("4GB", 4_000_000_000),
        ("4 gb", 4_000_000_000),
        ("4GiB", 4 * 1024**3),
        ("500MB", 500_000_000),
        ("1000kB", 1_000_000),
        ("1MiB", 1_048_576),
    ],
)
def test_a_part_size_unit_is_exact(value: str, size: int) -> None:
    assert Settings.from_env({"BACKUP_PART_SIZE": value}).part_size_bytes == size


@pytest.mark.parametrize(
    "sender",
    [
        "respaldos@clinica.example",
        "Respaldo de información <respaldos@clinica.example>",
        '"Clínica Dental, S.C." <respaldos@clinica.example>',
    ],
)
def test_a_sender_with_or_without_a_display_name_is_accepted(sender: str) -> None:
    assert Settings.from_env({"BACKUP_FROM_EMAIL": sender}).from_email == sender


def test_empty_values_count_as_unset_and_the_older_ttl_name_is_read() -> None:
    settings = Settings.from_env({"BACKUP_LINK_TTL": " ", "BACKUP_EXPORT_WORKERS": ""})
    assert (settings.link_ttl_hours, settings.export_workers) == (72, None)
    assert Settings.from_env({"BACKUP_LINK_TTL_HOURS": "36"}).link_ttl_hours == 36
    both = {"BACKUP_LINK_TTL_HOURS": "36", "BACKUP_LINK_TTL": "48"}
    assert Settings.from_env(both).link_ttl_hours == 48
    assert Settings.from_env({"BACKUP_EXPORT_WORKERS": "auto"}).export_workers is None
    assert Settings.from_env({"BACKUP_EXPORT_WORKERS": "0"}).export_workers == 0


DEFINITIONS = "backup_pipeline.definitions"
CLUSTER_LOCATIONS = {
    "BACKUP_PLATFORM_DB_URL": "postgresql+psycopg://backup_reader@10.0.0.5/platform",
    "BACKUP_FILES_URL": "gs://platform-files",
    "BACKUP_ARCHIVES_URL": "gs://clinic-backups/archives",
    "BACKUP_MAIL_URL": "sendgrid://",
    "BACKUP_FROM_EMAIL": "Respaldo de información <respaldos@clinica.mx>",
    "BACKUP_SUPPORT_EMAIL": "soporte@clinica.mx",
    "SENDGRID_API_KEY": "SG.key",
}


@pytest.mark.parametrize("missing", sorted(CLUSTER_LOCATIONS))
def test_in_a_cluster_a_missing_location_or_address_is_named_instead_of_defaulted(missing: str):
    env = {"BACKUP_DEPLOYMENT": "cluster", **CLUSTER_LOCATIONS}
    del env[missing]

    with pytest.raises(SettingsError) as raised:
        Settings.from_env(env)
    line = str(raised.value)
    assert line.startswith(f"{missing} not set: BACKUP_DEPLOYMENT=cluster")
    assert "\n" not in line


def test_in_a_cluster_stated_locations_are_used_and_embedded_ones_stay_the_default():
    stated = Settings.from_env({"BACKUP_DEPLOYMENT": "cluster", **CLUSTER_LOCATIONS})
    assert (stated.archives_url, stated.mail_url) == ("gs://clinic-backups/archives", "sendgrid://")

    embedded = Settings.from_env({"BACKUP_DEPLOYMENT": "embedded"})
    assert embedded.archives_url.startswith("file://")
    assert embedded == Settings.from_env({})


def test_an_unknown_deployment_kind_is_named():
    with pytest.raises(SettingsError, match=r"^BACKUP_DEPLOYMENT='k8s': 'embedded' or 'cluster'"):
        Settings.from_env({"BACKUP_DEPLOYMENT": "k8s"})


def test_a_cluster_without_its_locations_fails_the_code_location_load_with_one_line(
    tmp_path: Path,
) -> None:
    # Dagster's own load, as the code server does it in the cluster: nothing falls back to var/.
    (tmp_path / "dagster_home").mkdir()
    settings = {k: v for k, v in CLUSTER_LOCATIONS.items() if k != "BACKUP_FILES_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", DEFINITIONS],
        cwd=tmp_path,
        env=_environment(tmp_path, {"BACKUP_DEPLOYMENT": "cluster", **settings}),
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "SettingsError: BACKUP_FILES_URL not set: BACKUP_DEPLOYMENT=cluster" in output
    assert not (tmp_path / "var").exists()
