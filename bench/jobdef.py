"""The backup job bound to the benchmark's resources, reconstructable for the multiprocess executor.

Everything comes from the environment the orchestrator (bench/run.py) sets, so that the step
processes of the multiprocess executor build the same resources as the worker.
"""

from __future__ import annotations

import functools
import os
from datetime import timedelta

import dagster as dg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud import storage
from google.oauth2 import service_account

from backup_pipeline.definitions import build_definitions
from backup_pipeline.resources import build_resources
from backup_pipeline.resources.storage import ObjectStoreResource, open_store
from backup_pipeline.settings import Settings
from backup_pipeline.storage import ObjectStore, attachment_disposition
from backup_pipeline.storage.gcs import GcsStore

BACKEND_ENV = "BENCH_BACKEND"
# spawn | forkserver: the job with the multiprocess executor (max_concurrent from
# BACKUP_MAX_CONCURRENT_OPS, default 2) instead of its own in-process one.
START_METHOD_ENV = "BENCH_START_METHOD"


@functools.cache
def _signing_credentials() -> service_account.Credentials:
    # The emulator takes anonymous requests only, and anonymous credentials cannot sign the
    # delivery link: a throwaway local key signs it (signing is local, no request is made).
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return service_account.Credentials.from_service_account_info(
        {
            "type": "service_account",
            "project_id": "bench",
            "private_key_id": "bench",
            "private_key": pem,
            "client_email": "bench@bench.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": "https://oauth2.googleapis.com/token",
        },
        scopes=storage.Client.SCOPE,
    )


class BenchGcsStore(GcsStore):
    """GcsStore on the emulator whose delivery link is signed with a local throwaway key."""

    def signed_url(self, key: str, expires_in: timedelta, download_name: str) -> str:
        return self.bucket.blob(self._name(key)).generate_signed_url(
            version="v4",
            expiration=expires_in,
            method="GET",
            response_disposition=attachment_disposition(download_name),
            credentials=_signing_credentials(),
        )


def bench_store(url: str) -> ObjectStore:
    store = open_store(url)
    if isinstance(store, GcsStore):
        bucket = url.removeprefix("gs://").split("/", 1)
        return BenchGcsStore(bucket[0], bucket[1] if len(bucket) > 1 else "")
    return store


class BenchObjectStoreResource(ObjectStoreResource):
    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._store = bench_store(self.url)

    def get_store(self) -> ObjectStore:
        if self._store is None:
            self._store = bench_store(self.url)
        return self._store


def bench_resources() -> dict[str, dg.ConfigurableResource]:
    settings = Settings.from_env()
    resources = build_resources(settings)
    resources["files"] = BenchObjectStoreResource(url=settings.files_url)
    resources["archives"] = BenchObjectStoreResource(url=settings.archives_url)
    return resources


def bench_backup_job() -> dg.JobDefinition:
    """The product's backup_job with the benchmark's resources (for dg.reconstructable)."""
    job = build_definitions(Settings.from_env()).resolve_job_def("backup_job")
    start_method = os.environ.get(START_METHOD_ENV)
    if start_method:
        # The executor the job had before fe7f564, for the comparison.
        job = job.with_executor_def(
            dg.multiprocess_executor.configured(
                {
                    "max_concurrent": int(os.environ.get("BACKUP_MAX_CONCURRENT_OPS", "2")),
                    "start_method": {start_method: {}},
                }
            )
        )
    return dg.Definitions(jobs=[job], resources=bench_resources()).resolve_job_def("backup_job")


def backend() -> str:
    return os.environ.get(BACKEND_ENV, "file")
