"""Configuration read from the environment, with embedded defaults under ./var."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

MAX_LINK_TTL = timedelta(days=7)  # GCS V4 signed URLs cannot live longer


def _var_dir() -> Path:
    return Path(os.environ.get("BACKUP_VAR_DIR", "var")).resolve()


def dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to ./var/dagster_home (the embedded instance of the CLI)."""
    return Path(os.environ.get("DAGSTER_HOME") or Path("var/dagster_home").resolve())


def secret_environment(*names: str) -> dict[str, str]:
    """The named secrets (e.g. SENDGRID_API_KEY), read when an adapter is first used in the
    process that needs them: never held in Settings or resource config, so never shown in the UI."""
    return {name: os.environ[name] for name in names if name in os.environ}


DEFAULT_FROM_EMAIL = "Respaldo de información <respaldos@clinica.example>"


@dataclass(frozen=True)
class Settings:
    platform_db_url: str
    files_url: str
    archives_url: str
    mail_url: str
    from_email: str
    support_email: str
    link_ttl: timedelta
    late_after: timedelta
    partition_retention: timedelta
    # Google's own variable; None lets object calls run without a project (they need none).
    gcs_project: str | None = None
    # Signs links when the credentials hold no key (workload identity) and the gs:// URL names no
    # ?signer=.
    gcs_signer_email: str | None = None
    # True when the database URL came from BACKUP_PLATFORM_DB_URL: the resource then names the
    # variable instead of holding the URL, so a password never shows as config in the UI.
    platform_db_url_from_env: bool = False
    # Transient errors (storage 5xx, dropped connections) are retried with exponential backoff.
    op_max_retries: int = 3
    retry_delay_seconds: float = 5.0
    sensor_interval_seconds: int = 30
    sensor_batch: int = 2_000  # pending requests reviewed per tick
    expire_batch: int = 500
    staging_batch: int = 10_000
    late_alert_batch: int = 200
    partition_delete_batch: int = 10_000
    part_size_bytes: int = 4_000_000_000  # archive.parts.DEFAULT_PART_SIZE: fits FAT32
    # Worker processes rendering workbooks beside the zip; None: the CPUs the run may use
    # (datasets.parallel.usable_cpus), 0: one after another in the run's own process.
    export_workers: int | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        var = _var_dir()
        ttl_hours = float(env.get("BACKUP_LINK_TTL_HOURS", env.get("BACKUP_LINK_TTL", "72")))
        link_ttl = timedelta(hours=ttl_hours)
        if not timedelta(0) < link_ttl <= MAX_LINK_TTL:
            raise ValueError(
                f"BACKUP_LINK_TTL must be more than 0 and at most 168 hours (7 days), got {ttl_hours}"
            )
        return cls(
            platform_db_url=env.get("BACKUP_PLATFORM_DB_URL", f"sqlite:///{var / 'platform.db'}"),
            files_url=env.get("BACKUP_FILES_URL", (var / "files").as_uri()),
            archives_url=env.get("BACKUP_ARCHIVES_URL", (var / "archives").as_uri()),
            mail_url=env.get("BACKUP_MAIL_URL", (var / "outbox").as_uri()),
            # With a display name: the clinic's inbox shows who wrote, not a bare address.
            from_email=env.get("BACKUP_FROM_EMAIL", DEFAULT_FROM_EMAIL),
            support_email=env.get("BACKUP_SUPPORT_EMAIL", "soporte@clinica.example"),
            link_ttl=link_ttl,
            late_after=timedelta(hours=float(env.get("BACKUP_LATE_AFTER_HOURS", "24"))),
            partition_retention=timedelta(
                days=float(env.get("BACKUP_PARTITION_RETENTION_DAYS", "90"))
            ),
            gcs_project=env.get("GOOGLE_CLOUD_PROJECT"),
            gcs_signer_email=env.get("BACKUP_GCS_SIGNER_EMAIL") or None,
            # Dagster resolves an EnvVar from the process's environment, not from `environ`.
            platform_db_url_from_env=environ is None and "BACKUP_PLATFORM_DB_URL" in env,
            op_max_retries=int(env.get("BACKUP_OP_MAX_RETRIES", "3")),
            retry_delay_seconds=float(env.get("BACKUP_RETRY_DELAY_SECONDS", "5")),
            sensor_interval_seconds=int(env.get("BACKUP_SENSOR_INTERVAL_SECONDS", "30")),
            sensor_batch=int(env.get("BACKUP_SENSOR_BATCH", "2000")),
            expire_batch=int(env.get("BACKUP_EXPIRE_BATCH", "500")),
            staging_batch=int(env.get("BACKUP_STAGING_BATCH", "10000")),
            late_alert_batch=int(env.get("BACKUP_LATE_ALERT_BATCH", "200")),
            partition_delete_batch=int(env.get("BACKUP_PARTITION_DELETE_BATCH", "10000")),
            part_size_bytes=int(env.get("BACKUP_PART_SIZE", "4000000000")),
            export_workers=_export_workers(env.get("BACKUP_EXPORT_WORKERS", "auto")),
        )


def _export_workers(value: str) -> int | None:
    if value.strip().lower() in ("", "auto"):
        return None
    workers = int(value)
    if workers < 0:
        raise ValueError(f"BACKUP_EXPORT_WORKERS must be 'auto' or 0 or more, got {value!r}")
    return workers
