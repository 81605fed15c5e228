"""What every step of a backup run knows about its request (ids, never personal data), and the
run tags that name it in the Dagster UI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

REQUEST_TAG = "backup/request_id"
SUBSCRIPTION_TAG = "backup/subscription_id"


@dataclass(frozen=True)
class BackupTarget:
    request_id: int
    subscription_id: int
    timezone: str  # IANA name, already resolved (a typo in the platform falls back)
    requested_at: datetime  # naive UTC
    staging_prefix: str  # this run's scratch area in the archives store


def staging_prefix(request_id: int, run_id: str) -> str:
    """Per run, so that a re-run never reads what a killed run half wrote."""
    return f"staging/{request_id}/{run_id}"


def run_tags(request_id: int, subscription_id: int) -> dict[str, str]:
    """Ids only: a clinic's runs are found by these in the UI, and tags never carry names."""
    return {REQUEST_TAG: str(request_id), SUBSCRIPTION_TAG: str(subscription_id)}
