"""Shared fixtures: each one starts a real component (see backup_pipeline_tests/support/)."""

import os

# Op retries wait seconds in production; the tests that exercise them need only their count.
# Set before anything imports backup_pipeline.jobs, whose RetryPolicy reads it at import.
os.environ.setdefault("BACKUP_RETRY_DELAY_SECONDS", "0.05")

pytest_plugins = [
    "backup_pipeline_tests.support.db",
    "backup_pipeline_tests.support.gcs",
    "backup_pipeline_tests.support.sendgrid",
    "backup_pipeline_tests.support.faultproxy",
    "backup_pipeline_tests.support.platform",
]
