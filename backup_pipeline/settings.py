"""Configuration read from the environment, with embedded defaults under ./var."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

MAX_LINK_TTL = timedelta(days=7)  # GCS V4 signed URLs cannot live longer


def _var_dir() -> Path:
    return Path(os.environ.get("BACKUP_VAR_DIR", "var")).resolve()


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
            from_email=env.get("BACKUP_FROM_EMAIL", "respaldos@clinica.example"),
            support_email=env.get("BACKUP_SUPPORT_EMAIL", "soporte@clinica.example"),
            link_ttl=link_ttl,
            late_after=timedelta(hours=float(env.get("BACKUP_LATE_AFTER_HOURS", "24"))),
            partition_retention=timedelta(
                days=float(env.get("BACKUP_PARTITION_RETENTION_DAYS", "90"))
            ),
            gcs_project=env.get("GOOGLE_CLOUD_PROJECT"),
            gcs_signer_email=env.get("BACKUP_GCS_SIGNER_EMAIL") or None,
        )
