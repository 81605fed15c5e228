"""The backup job bound to the benchmark's resources, reconstructable for the multiprocess executor.

Everything comes from the environment the orchestrator (bench/run.py) sets, so that the step
processes of the multiprocess executor build the same resources as the worker.

Google's client (backup_pipeline.storage.gcs, cryptography's signing) is imported only for the
backends that use it (gcs, and latency, which stands for GCS), as the product imports it only
for gs:// stores: with the folder store the worker holds what `backup-pipeline process` holds
(imported at the top, it added ~20 MB to the tree's peak, grpc's library among it).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import TYPE_CHECKING, BinaryIO

import dagster as dg

from backup_pipeline.definitions import transient_retry
from backup_pipeline.jobs import build_backup_job
from backup_pipeline.resources import build_resources
from backup_pipeline.resources.storage import ObjectStoreResource, open_store
from backup_pipeline.settings import Settings
from backup_pipeline.storage import ObjectInfo, ObjectStore, attachment_disposition

if TYPE_CHECKING:
    from google.oauth2 import service_account

BACKEND_ENV = "BENCH_BACKEND"
# spawn | forkserver: the job with the multiprocess executor (max_concurrent from
# BACKUP_MAX_CONCURRENT_OPS, default 2) instead of its own in-process one.
START_METHOD_ENV = "BENCH_START_METHOD"
# Modules the forkserver imports once for every step process (comma-separated).
PRELOAD_ENV = "BENCH_PRELOAD"
# Milliseconds added to every request of the files store (backend "latency": the seeded folder
# as a remote store would serve it).
FILES_LATENCY_ENV = "BENCH_FILES_LATENCY_MS"


@functools.cache
def _signing_credentials() -> service_account.Credentials:
    # The emulator takes anonymous requests only, and anonymous credentials cannot sign the
    # delivery link: a throwaway local key signs it (signing is local, no request is made).
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.cloud import storage
    from google.oauth2 import service_account

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


@functools.cache
def _bench_gcs_store() -> type[ObjectStore]:
    from backup_pipeline.storage.gcs import GcsStore

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

    return BenchGcsStore


class LatencyStore(ObjectStore):
    """Another store with `seconds` of waiting before every request, as GCS spends tens of
    milliseconds before the first byte of each: one per open_read, read_into, read_head, exists,
    list and check_reachable. Reads in flight as on GCS (whose client it imports, as a run on
    GCS does)."""

    def __init__(self, inner: ObjectStore, seconds: float) -> None:
        from backup_pipeline.storage.gcs import READS_IN_FLIGHT

        self.reads_in_flight = READS_IN_FLIGHT
        self.inner = inner
        self.seconds = seconds
        self.url = inner.url

    def _request(self) -> None:
        time.sleep(self.seconds)

    def open_read(self, key: str) -> BinaryIO:
        self._request()
        return self.inner.open_read(key)

    def read_into(self, key: str, out: BinaryIO) -> int:
        self._request()
        return self.inner.read_into(key, out)

    def read_head(self, key: str, max_bytes: int) -> bytes:
        self._request()
        return self.inner.read_head(key, max_bytes)

    def open_write(
        self, key: str, content_type: str | None = None
    ) -> AbstractContextManager[BinaryIO]:
        self._request()
        return self.inner.open_write(key, content_type)

    def exists(self, key: str) -> bool:
        self._request()
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._request()
        return self.inner.list(prefix)

    def delete(self, key: str) -> bool:
        self._request()
        return self.inner.delete(key)

    def signed_url(self, key: str, expires_in: timedelta, download_name: str) -> str:
        return self.inner.signed_url(key, expires_in, download_name)

    def check_reachable(self) -> None:
        self._request()
        self.inner.check_reachable()


def bench_store(url: str, latency_ms: float = 0) -> ObjectStore:
    store = open_store(url)
    if url.startswith("gs://"):
        bucket = url.removeprefix("gs://").split("/", 1)
        store = _bench_gcs_store()(bucket[0], bucket[1] if len(bucket) > 1 else "")
    return LatencyStore(store, latency_ms / 1000) if latency_ms else store


class BenchObjectStoreResource(ObjectStoreResource):
    latency_ms: float = 0

    def _open(self) -> ObjectStore:
        return bench_store(self.url, self.latency_ms)


def bench_resources() -> dict[str, dg.ConfigurableResource]:
    settings = Settings.from_env()
    resources = build_resources(settings)
    resources["files"] = BenchObjectStoreResource(
        url=settings.files_url, latency_ms=files_latency_ms()
    )
    resources["archives"] = BenchObjectStoreResource(url=settings.archives_url)
    return resources


def bench_backup_job() -> dg.JobDefinition:
    """The product's backup_job with the benchmark's resources (for dg.reconstructable)."""
    settings = Settings.from_env()
    # The job as the code location builds it, unbound: Definitions binds the benchmark's
    # resources below (a job resolved from build_definitions comes with the product's).
    job = build_backup_job(transient_retry(settings.op_max_retries, settings.retry_delay_seconds))
    start_method = os.environ.get(START_METHOD_ENV)
    if start_method:
        # The executor the job had before fe7f564, for the comparison. forkserver preloads the
        # job's module (bench.jobdef, hence Dagster, pandas and the package) unless told others.
        options = {}
        preload = os.environ.get(PRELOAD_ENV)
        if start_method == "forkserver" and preload:
            options["preload_modules"] = preload.split(",")
        job = job.with_executor_def(
            dg.multiprocess_executor.configured(
                {
                    "max_concurrent": int(os.environ.get("BACKUP_MAX_CONCURRENT_OPS", "2")),
                    "start_method": {start_method: options},
                }
            )
        )
    return dg.Definitions(jobs=[job], resources=bench_resources()).resolve_job_def("backup_job")


def files_latency_ms() -> float:
    return float(os.environ.get(FILES_LATENCY_ENV, "0"))


def backend() -> str:
    return os.environ.get(BACKEND_ENV, "file")
