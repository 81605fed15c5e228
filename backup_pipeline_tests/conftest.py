"""Shared fixtures: each one starts a real component (see backup_pipeline_tests/support/)."""

pytest_plugins = [
    "backup_pipeline_tests.support.db",
    "backup_pipeline_tests.support.gcs",
    "backup_pipeline_tests.support.sendgrid",
    "backup_pipeline_tests.support.faultproxy",
]
