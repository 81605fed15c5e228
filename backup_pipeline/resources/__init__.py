"""Thin Dagster resources over the adapters, all built from the settings in one place."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import dagster as dg

from backup_pipeline.resources.mailer import MailerResource
from backup_pipeline.resources.platform_db import PlatformDatabaseResource
from backup_pipeline.resources.storage import ObjectStoreResource
from backup_pipeline.settings import MAX_LINK_TTL, Settings

_DECLARED = {field.name: field for field in dataclasses.fields(Settings)}


def _declared_default(name: str) -> Any:
    """The default `Settings` declares, so that a policy built in a test without settings gets
    the same values as the code location; meanings and bounds are documented there too."""
    return _DECLARED[name].default


class BackupPolicyResource(dg.ConfigurableResource):
    """How long links live, when a request counts as late, how long partitions are kept, and
    how much the sensor and each housekeeping run take on at once (see Settings)."""

    link_ttl_hours: float = _declared_default("link_ttl_hours")
    late_after_hours: float = _declared_default("late_after_hours")
    partition_retention_days: float = _declared_default("partition_retention_days")
    sensor_batch: int = _declared_default("sensor_batch")
    expire_batch: int = _declared_default("expire_batch")
    staging_batch: int = _declared_default("staging_batch")
    late_alert_batch: int = _declared_default("late_alert_batch")
    partition_delete_batch: int = _declared_default("partition_delete_batch")
    # An archive larger than this is delivered as numbered parts, each a complete zip.
    part_size_bytes: int = _declared_default("part_size_bytes")
    # Worker processes rendering the workbooks beside the zip (datasets.parallel); None: the CPUs
    # the run may use, 0: one after another in the run's own process.
    export_workers: int | None = _declared_default("export_workers")

    @property
    def link_ttl(self) -> timedelta:
        return min(timedelta(hours=self.link_ttl_hours), MAX_LINK_TTL)

    @property
    def late_after(self) -> timedelta:
        return timedelta(hours=self.late_after_hours)

    @property
    def partition_retention(self) -> timedelta:
        return timedelta(days=self.partition_retention_days)


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """Every resource the code location uses, chosen by URL (file://, gs://, sendgrid://)."""
    return {
        # From the environment at run time when set, so a password in the URL never shows as
        # resource config in the Dagster UI.
        "platform_db": PlatformDatabaseResource(
            url=dg.EnvVar("BACKUP_PLATFORM_DB_URL")
            if settings.platform_db_url_from_env
            else settings.platform_db_url
        ),
        "files": ObjectStoreResource(
            url=settings.files_url,
            signer_email=settings.gcs_signer_email,
            project=settings.gcs_project,
        ),
        "archives": ObjectStoreResource(
            url=settings.archives_url,
            signer_email=settings.gcs_signer_email,
            project=settings.gcs_project,
        ),
        "mailer": MailerResource(
            url=settings.mail_url,
            from_email=settings.from_email,
            support_email=settings.support_email,
        ),
        "policy": BackupPolicyResource(
            link_ttl_hours=settings.link_ttl_hours,
            late_after_hours=settings.late_after_hours,
            partition_retention_days=settings.partition_retention_days,
            sensor_batch=settings.sensor_batch,
            expire_batch=settings.expire_batch,
            staging_batch=settings.staging_batch,
            late_alert_batch=settings.late_alert_batch,
            partition_delete_batch=settings.partition_delete_batch,
            part_size_bytes=settings.part_size_bytes,
            export_workers=settings.export_workers,
        ),
    }
