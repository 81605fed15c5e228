"""GCS fixtures: an in-process gcp-storage-emulator, a fresh bucket per test, a store of each backend."""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from urllib.parse import quote

import pytest
from gcp_storage_emulator import server as emulator_server
from gcp_storage_emulator.handlers import objects as emulator_objects
from gcp_storage_emulator.server import create_server
from gcp_storage_emulator.storage import RESUMABLE_DIR
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from backup_pipeline.resources.storage import open_store
from backup_pipeline.storage import ObjectStore
from backup_pipeline.storage.folder import FolderStore

EMULATOR_PROJECT = "backup-pipeline-test"


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _ClientClosedRequest:
    """GCS's answer to a cancelled upload; not in HTTPStatus, so shaped like it for the emulator."""

    value = 499
    phrase = "Client Closed Request"


def _cancel_resumable_upload(request, response, storage) -> None:
    """DELETE on a resumable session URL: drop the session, as GCS does."""
    if "upload_id" not in request.query:  # the initiation URL names no session
        response.status = HTTPStatus.BAD_REQUEST
        return
    upload_id = request.query["upload_id"][0]
    with contextlib.suppress(Exception):  # an unknown session is already gone
        storage.delete_resumable_file_obj(upload_id)
        storage._delete_file(RESUMABLE_DIR, storage.safe_id(upload_id))
    response.status = _ClientClosedRequest()


def _add_upload_cancel_route(patch: pytest.MonkeyPatch) -> None:
    # Workaround: gcp-storage-emulator 2026.7.19 answers 501 to GcsStore's upload-cancel DELETE of
    # the session URL. Harmless (the session never finalizes, so no object appears), but GCS
    # answers 499 and drops the session: teach the emulator to do the same.
    upload_path = f"^{emulator_server.settings.UPLOAD_API_ENDPOINT}/b/"
    for pattern, methods in emulator_server.HANDLERS:
        if (
            pattern.startswith(upload_path)
            and methods.get("PUT") is emulator_objects.upload_partial
        ):
            patch.setitem(methods, "DELETE", _cancel_resumable_upload)


_emulator_make_object_resource = emulator_objects._make_object_resource


def _make_object_resource_with_encoded_media_link(*args, **kwargs) -> dict:
    # Workaround: the emulator puts the raw object name into mediaLink, and the client downloads
    # from mediaLink, so names with '?', '#' or '%' download the wrong object. GCS encodes the
    # name (slashes included): do the same.
    resource = _emulator_make_object_resource(*args, **kwargs)
    raw = f"/o/{resource['name']}?"
    encoded = f"/o/{quote(resource['name'], safe='')}?"
    resource["mediaLink"] = resource["mediaLink"].replace(raw, encoded, 1)
    return resource


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """A GCS emulator on a free loopback port, with STORAGE_EMULATOR_HOST pointing at it."""
    port = _free_loopback_port()
    base_url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        _add_upload_cancel_route(patch)
        patch.setattr(
            emulator_objects,
            "_make_object_resource",
            _make_object_resource_with_encoded_media_link,
        )
        patch.setenv("STORAGE_EMULATOR_HOST", base_url)
        server = create_server("127.0.0.1", port, in_memory=True)
        server.start()
        try:
            yield base_url
        finally:
            server.stop()


@pytest.fixture
def gcs_bucket_url(gcs_emulator: str) -> str:
    """A fresh, empty bucket in the emulator, as 'gs://<bucket>/some/prefix'."""
    client = storage.Client(project=EMULATOR_PROJECT, credentials=AnonymousCredentials())
    bucket = client.create_bucket(f"bp-test-{uuid.uuid4().hex[:12]}")
    return f"gs://{bucket.name}/some/prefix"


@pytest.fixture(params=["folder", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path) -> ObjectStore:
    """An empty ObjectStore: a folder under tmp_path, or a prefix of a fresh emulator bucket."""
    if request.param == "folder":
        return FolderStore(tmp_path / "store")
    return open_store(request.getfixturevalue("gcs_bucket_url"))
