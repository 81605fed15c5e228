"""The object store adapter: one suite on a folder and on the GCS emulator, plus each backend's own promises."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

import dagster as dg
import google.auth.credentials
import google.auth.transport.requests
import google_crc32c
import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.cloud import storage
from google.cloud.storage import _signing
from google.oauth2 import service_account

from backup_pipeline.resources import build_resources
from backup_pipeline.resources.storage import ObjectStoreResource, open_store
from backup_pipeline.settings import Settings
from backup_pipeline.storage import ObjectNotFound, ObjectStore, StoreRefused
from backup_pipeline.storage import folder as folder_store
from backup_pipeline.storage.folder import FolderStore
from backup_pipeline.storage.gcs import GcsStore
from backup_pipeline_tests.support.gcs import EMULATOR_PROJECT
from backup_pipeline_tests.support.signing import (
    new_private_key,
    service_account_info,
)

MiB = 1024 * 1024
SIGNER = "backup-archives@clinic-platform.iam.gserviceaccount.com"
DOWNLOAD_NAME = "respaldo_clínica-sonrisas_2026-03-01.zip"


def keys_of(store: ObjectStore, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


# --- one suite, both backends ------------------------------------------------------------------


def test_bytes_round_trip(store: ObjectStore) -> None:
    payload = bytes(range(256)) * 3
    store.put_bytes("reports/2026/summary.bin", payload, "application/octet-stream")
    store.put_bytes("empty", b"")

    assert store.get_bytes("reports/2026/summary.bin") == payload
    assert store.get_bytes("empty") == b""
    assert store.exists("reports/2026/summary.bin")
    assert not store.exists("reports/2026")  # a "folder" is not an object


def test_rewriting_a_key_replaces_the_object(store: ObjectStore) -> None:
    store.put_bytes("k", b"first version, longer")
    store.put_bytes("k", b"second")

    assert store.get_bytes("k") == b"second"
    assert [(info.key, info.size) for info in store.list()] == [("k", 6)]


def test_a_20_mb_object_streams_in_and_out_in_chunks(store: ObjectStore) -> None:
    block = os.urandom(MiB)
    written = hashlib.sha256()
    with store.open_write("archives/big.zip", "application/zip") as out:
        for index in range(20):
            piece = index.to_bytes(4, "big") + block[4:]  # each MiB differs: order matters
            out.write(piece)
            written.update(piece)

    read = hashlib.sha256()
    sizes = []
    with store.open_read("archives/big.zip") as src:
        while piece := src.read(MiB):
            sizes.append(len(piece))
            read.update(piece)

    assert read.hexdigest() == written.hexdigest()
    assert sizes == [MiB] * 20
    assert [(info.key, info.size) for info in store.list("archives/")] == [
        ("archives/big.zip", 20 * MiB)
    ]


@pytest.mark.parametrize(
    "key",
    [
        "adjuntos/Pérez Núñez José (17)/radiografía panorámica.jpg",
        "adjuntos/Ñandú 😀/sonrisa 🦷.png",
        "facturación/ingresos/xml/a b  c.xml",
        "with+plus&amp;=eq?query#hash%20.txt",
    ],
)
def test_keys_with_accents_emoji_spaces_and_url_characters(store: ObjectStore, key: str) -> None:
    store.put_bytes(key, key.encode())

    assert store.get_bytes(key) == key.encode()
    assert keys_of(store) == [key]
    assert store.delete(key)
    assert keys_of(store) == []


def test_list_by_prefix_is_a_string_prefix_sorted_by_key(store: ObjectStore) -> None:
    for key in ["a/b/2/x", "a/bc", "a/b/1", "z", "a/b.txt", "a/b0"]:
        store.put_bytes(key, key.encode())

    assert keys_of(store, "a/b/") == ["a/b/1", "a/b/2/x"]
    assert keys_of(store, "a/b") == ["a/b.txt", "a/b/1", "a/b/2/x", "a/b0", "a/bc"]
    assert keys_of(store, "a/b/2/x") == ["a/b/2/x"]
    assert keys_of(store, "nothing/") == []
    assert keys_of(store) == ["a/b.txt", "a/b/1", "a/b/2/x", "a/b0", "a/bc", "z"]
    sizes = {info.key: info.size for info in store.list()}
    assert sizes["a/b/2/x"] == len(b"a/b/2/x")


def test_listing_reports_size_and_a_naive_utc_time(store: ObjectStore) -> None:
    store.put_bytes("one", b"12345")

    (info,) = store.list()

    assert info.size == 5
    assert info.updated.tzinfo is None


def test_delete_reports_whether_there_was_an_object(store: ObjectStore) -> None:
    store.put_bytes("x/y", b"1")

    assert store.delete("x/y") is True
    assert store.delete("x/y") is False
    assert store.delete("never/there") is False
    assert not store.exists("x/y")


def test_delete_prefix_removes_only_keys_under_it(store: ObjectStore) -> None:
    for key in ["staging/42/a", "staging/42/b/c", "staging/420/a", "archives/42.zip"]:
        store.put_bytes(key, b"-")

    assert store.delete_prefix("staging/42/") == 2
    assert keys_of(store) == ["archives/42.zip", "staging/420/a"]
    assert store.delete_prefix("staging/42/") == 0


def test_missing_object_raises_object_not_found(store: ObjectStore) -> None:
    store.put_bytes("folder/file", b"1")

    with pytest.raises(ObjectNotFound):
        store.open_read("missing")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("folder")  # only a prefix of another key
    with pytest.raises(FileNotFoundError):  # callers may catch the built-in too
        store.open_read("folder/missing")


def test_read_into_copies_the_whole_object_and_read_head_its_start(store: ObjectStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    store.put_bytes("a/grande.bin", data)
    store.put_bytes("a/vacio.bin", b"")
    out = io.BytesIO()
    assert store.read_into("a/grande.bin", out) == len(data)
    assert out.getvalue() == data
    assert store.read_head("a/grande.bin", 1000) == data[:1000]
    # Over several copy chunks, ending inside one; and a cap larger than the whole object.
    assert store.read_head("a/grande.bin", 200_001) == data[:200_001]
    assert store.read_head("a/grande.bin", 16 * 1024 * 1024 + 1) == data
    assert store.read_head("a/grande.bin", 0) == b""
    assert store.read_head("a/vacio.bin", 1000) == b""
    empty = io.BytesIO()
    assert store.read_into("a/vacio.bin", empty) == 0 and empty.getvalue() == b""
    with pytest.raises(ObjectNotFound):
        store.read_into("a/no-existe.bin", io.BytesIO())
    with pytest.raises(ObjectNotFound):
        store.read_head("a/no-existe.bin", 10)


def test_read_head_gathers_short_reads_up_to_its_cap(tmp_path: Path) -> None:
    class Trickle(FolderStore):
        """A store whose stream returns at most 1,000 bytes per read, as a socket may."""

        def open_read(self, key: str) -> BinaryIO:
            inner = super().open_read(key)

            class Stream(io.RawIOBase):
                def readable(self) -> bool:
                    return True

                def readinto(self, buffer) -> int:  # type: ignore[override]
                    data = inner.read(min(len(buffer), 1_000))
                    buffer[: len(data)] = data
                    return len(data)

                def close(self) -> None:
                    inner.close()
                    super().close()

            return Stream()  # type: ignore[return-value]

    store = Trickle(tmp_path)
    data = os.urandom(150_000)
    store.put_bytes("a/b.bin", data)
    assert store.read_head("a/b.bin", 70_001) == data[:70_001]
    assert store.read_head("a/b.bin", 1_000_000) == data
    assert store.read_head("a/b.bin", -1) == b""


def test_an_error_inside_open_write_leaves_no_object(store: ObjectStore) -> None:
    with pytest.raises(RuntimeError, match="zip failed"), store.open_write("out/new.zip") as out:
        out.write(os.urandom(3 * MiB))
        raise RuntimeError("zip failed")

    assert not store.exists("out/new.zip")
    assert keys_of(store) == []


def test_an_error_inside_open_write_keeps_the_previous_object(store: ObjectStore) -> None:
    store.put_bytes("out/a.zip", b"previous")

    with pytest.raises(RuntimeError), store.open_write("out/a.zip") as out:
        out.write(b"half of the new one")
        raise RuntimeError("interrupted")

    assert store.get_bytes("out/a.zip") == b"previous"
    assert keys_of(store) == ["out/a.zip"]


@pytest.mark.parametrize(
    "key",
    ["../x", "/abs", "a\\b", "a/../../b", "a//b", "./a", "a/", "", "nul\x00", "d/x.bp-partial"],
)
def test_keys_that_could_escape_the_root_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="object key"):
        store.put_bytes(key, b"1")
    with pytest.raises(ValueError, match="object key"):
        store.open_read(key)
    with pytest.raises(ValueError, match="object key"):
        store.delete(key)


def test_signed_urls_live_at_most_seven_days(store: ObjectStore) -> None:
    store.put_bytes("a.zip", b"1")

    with pytest.raises(ValueError, match="7 days"):
        store.signed_url("a.zip", timedelta(days=7, seconds=1), DOWNLOAD_NAME)
    with pytest.raises(ValueError, match="7 days"):
        store.signed_url("a.zip", timedelta(0), DOWNLOAD_NAME)


# --- the folder backend ------------------------------------------------------------------------


def test_folder_write_goes_through_a_temporary_file_in_the_same_folder(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "root")

    with store.open_write("deep/er/file.bin") as out:
        out.write(b"partial")
        (partial,) = (tmp_path / "root" / "deep" / "er").iterdir()
        assert partial.name != "file.bin"
        assert keys_of(store) == []  # never listed as an object
        assert not store.exists("deep/er/file.bin")

    assert [p.name for p in (tmp_path / "root" / "deep" / "er").iterdir()] == ["file.bin"]


def test_folder_long_write_reaches_the_disk_as_it_goes_and_lands_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long write is synced every SYNC_EVERY_BYTES, so that its fsync at the end is short.
    monkeypatch.setattr(folder_store, "SYNC_EVERY_BYTES", 1000)
    synced: list[int] = []
    real_sync = folder_store._sync_data
    monkeypatch.setattr(folder_store, "_sync_data", lambda fd: (synced.append(fd), real_sync(fd)))
    store = FolderStore(tmp_path / "root")
    data = os.urandom(4500)

    with store.open_write("a/b.bin") as out:
        for start in range(0, len(data), 300):
            out.write(data[start : start + 300])

    # After 1200, 2400 and 3600 bytes; the last 900 go with the fsync before the rename.
    assert len(synced) == 3
    assert store.get_bytes("a/b.bin") == data


def test_folder_failed_write_removes_its_temporary_file(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "root")

    with pytest.raises(KeyboardInterrupt), store.open_write("d/file.bin") as out:
        out.write(b"x")
        raise KeyboardInterrupt

    assert list((tmp_path / "root" / "d").iterdir()) == []


def test_folder_refuses_keys_outside_its_root_and_creates_nothing(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "root")

    for key in ["../x", "/abs", "a\\b"]:
        with pytest.raises(ValueError):
            store.put_bytes(key, b"1")

    assert sorted(p.name for p in tmp_path.rglob("*")) == []


def test_folder_signed_url_is_the_files_uri(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "root")
    store.put_bytes("archivos/respaldo ñ.zip", b"zip bytes")

    url = store.signed_url("archivos/respaldo ñ.zip", timedelta(hours=72), DOWNLOAD_NAME)

    assert url.startswith("file:///")
    with urllib.request.urlopen(url) as response:
        assert response.read() == b"zip bytes"


# --- the GCS backend ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return new_private_key()


def service_account_credentials(key: rsa.RSAPrivateKey) -> service_account.Credentials:
    info = service_account_info(key, SIGNER)
    # With the client's scopes already set the client keeps this very object (no scoped copy).
    return service_account.Credentials.from_service_account_info(info, scopes=storage.Client.SCOPE)


def gcs_store_with(url: str, credentials, **kwargs) -> GcsStore:
    """A store on the emulator bucket of url, signed in with the given credentials."""
    parts = urlsplit(url)
    return GcsStore(
        parts.netloc, parts.path, credentials=credentials, project=EMULATOR_PROJECT, **kwargs
    )


def signed_query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def test_gcs_upload_failing_after_chunks_were_sent_leaves_no_object(gcs_bucket_url: str) -> None:
    parts = urlsplit(gcs_bucket_url)
    store = GcsStore(parts.netloc, parts.path, chunk_size=256 * 1024)

    with pytest.raises(RuntimeError), store.open_write("archives/broken.zip") as out:
        out.write(os.urandom(MiB + 10))
        # The resumable session is open and holds bytes: this is a failure mid-upload.
        upload = out.upload
        assert upload.bytes_uploaded >= MiB
        raise RuntimeError("disk full while zipping")

    assert not store.exists("archives/broken.zip")
    assert keys_of(store) == []
    # The session was cancelled, not left to expire: the last chunk cannot be sent any more.
    late = requests.put(upload.resumable_url, data=b"x", headers={"Content-Range": "bytes */1"})
    assert late.status_code == 404


def test_gcs_upload_whose_cancel_fails_still_never_finalizes(gcs_bucket_url: str) -> None:
    parts = urlsplit(gcs_bucket_url)
    store = GcsStore(parts.netloc, parts.path, chunk_size=256 * 1024)

    def network_down(*args, **kwargs):
        raise requests.ConnectionError("network down")

    with pytest.raises(RuntimeError), store.open_write("archives/broken.zip") as out:
        out.write(os.urandom(300 * 1024))
        assert out.upload.resumable_url  # a session holds the first chunk
        # Cancelling (DELETE on the session) loses the network.
        store.session.delete = network_down
        raise RuntimeError("zip failed")
    out.close()  # what io's finalizer does when the writer is collected

    assert not store.exists("archives/broken.zip")
    # The session outlives the failed cancel, but its last chunk was never sent.
    state = requests.put(out.upload.resumable_url, headers={"Content-Range": "bytes */*"})
    assert state.status_code == 308


class HalfKeepingUploadServer:
    """A loopback stand-in for GCS's resumable upload endpoint that keeps only the first half of
    the first chunk it is sent, and says so in its 308's Range header, as GCS may."""

    def __init__(self) -> None:
        self.object = bytearray()
        self.content_ranges: list[str] = []  # of each chunk sent, in order
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # initiation: the session URI
                self.rfile.read(int(self.headers["Content-Length"]))
                session = f"{server.url}/upload/storage/v1/b/bucket-1/o?upload_id=s1"
                self._answer(200, {"Location": session})

            def do_PUT(self) -> None:  # a chunk at an explicit offset
                content_range = self.headers["Content-Range"]
                server.content_ranges.append(content_range)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range)
                assert match, content_range
                start, total = int(match[1]), match[2]
                if len(server.content_ranges) == 1:
                    body = body[: len(body) // 2]
                server.object[start : start + len(body)] = body
                if total != "*" and len(server.object) == int(total):
                    crc = google_crc32c.value(bytes(server.object)).to_bytes(4, "big")
                    done = {"name": "k", "crc32c": base64.b64encode(crc).decode()}
                    self._answer(
                        200, {"Content-Type": "application/json"}, json.dumps(done).encode()
                    )
                else:
                    self._answer(308, {"Range": f"bytes=0-{len(server.object) - 1}"})

            def log_message(self, format: str, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


def test_gcs_upload_resends_from_where_gcs_says_it_kept_a_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chunk = 256 * 1024
    gcs = HalfKeepingUploadServer()
    gcs.thread.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
    data = os.urandom(3 * chunk + 1000)
    try:
        store = GcsStore("bucket-1", chunk_size=chunk)
        with store.open_write("archives/a.zip") as out:
            for start in range(0, len(data), 100_000):
                out.write(data[start : start + 100_000])
    finally:
        gcs.httpd.shutdown()
        gcs.httpd.server_close()

    assert bytes(gcs.object) == data
    # The second chunk starts where GCS said the first one ended, not where it was meant to.
    assert gcs.content_ranges[:2] == [
        f"bytes 0-{chunk - 1}/*",
        f"bytes {chunk // 2}-{chunk // 2 + chunk - 1}/*",
    ]
    assert gcs.content_ranges[-1].endswith(f"/{len(data)}")


def test_gcs_store_lives_under_its_prefix(gcs_bucket_url: str) -> None:
    store = open_store(gcs_bucket_url)
    store.put_bytes("k.txt", b"1")

    bucket_name = urlsplit(gcs_bucket_url).netloc
    client = storage.Client(project=EMULATOR_PROJECT)
    assert [blob.name for blob in client.list_blobs(bucket_name)] == ["some/prefix/k.txt"]
    assert store.url == gcs_bucket_url


class HeldMediaServer:
    """A loopback stand-in for GCS's media endpoint that answers no read until `together` reads
    are in flight at once, and notes each TCP connection the reads came on."""

    def __init__(self, together: int) -> None:
        self.connections: set[tuple[str, int]] = set()
        barrier = threading.Barrier(together, timeout=60)
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as GCS

            def do_GET(self) -> None:
                with lock:
                    server.connections.add(self.client_address)
                barrier.wait()
                body = b"object bytes"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


def test_gcs_reads_in_flight_keep_their_connections_for_the_next_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Dozens of reads share the store's session (READS_IN_FLIGHT): a pool of requests' default
    # 10 connections would close the rest after each read, and open them again for the next
    # (a TCP and TLS handshake on GCS each time).
    together = 24
    media = HeldMediaServer(together)
    media.thread.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", media.url)
    try:
        store = GcsStore("bucket-1", "platform")
        assert store.reads_in_flight >= together

        def read(index: int) -> int:
            return store.read_into(f"adjuntos/{index}.pdf", io.BytesIO())

        with ThreadPoolExecutor(together) as pool:
            for _round in range(2):
                sizes = list(pool.map(read, range(together)))
                assert sizes == [len(b"object bytes")] * together
    finally:
        media.httpd.shutdown()
        media.httpd.server_close()

    # Each round had every read in flight at once; the second reused the first's connections.
    assert len(media.connections) == together


def test_gcs_reads_stop_at_the_object_size_without_asking_past_it(
    gcs_bucket_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(gcs_bucket_url)
    data = os.urandom(300_000)
    store.put_bytes("a/file.bin", data)
    store.put_bytes("a/lines.jsonl", b'{"a": 1}\n{"b": 2}\n')
    store.put_bytes("a/empty.bin", b"")
    ranges: list[str] = []
    send = requests.Session.request

    def recording(self, method, url, *args, **kwargs):
        headers = kwargs.get("headers") or {}
        ranges.extend(value for name, value in headers.items() if name.lower() == "range")
        return send(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", recording)
    with store.open_read("a/file.bin") as src:
        assert b"".join(iter(lambda: src.read(64 * 1024), b"")) == data
        assert src.read() == b""
    assert len(ranges) == 1  # one ranged GET for the data, none past its end
    with store.open_read("a/lines.jsonl") as src:
        assert list(src) == [b'{"a": 1}\n', b'{"b": 2}\n']
    assert len(ranges) == 2
    with store.open_read("a/empty.bin") as src:
        assert src.read(1024) == b""
    assert len(ranges) == 2


def test_gcs_signed_url_with_a_service_account_key(gcs_bucket_url: str, rsa_key) -> None:
    store = gcs_store_with(gcs_bucket_url, service_account_credentials(rsa_key))

    url = store.signed_url("archives/a b.zip", timedelta(hours=72), DOWNLOAD_NAME)

    query = signed_query(url)
    assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert query["X-Goog-Expires"] == str(72 * 3600)
    assert query["X-Goog-Credential"].startswith(SIGNER + "/")
    assert query["response-content-disposition"] == (
        'attachment; filename="respaldo_clinica-sonrisas_2026-03-01.zip"; '
        "filename*=UTF-8''respaldo_cl%C3%ADnica-sonrisas_2026-03-01.zip"
    )
    assert unquote(urlsplit(url).path).endswith("/some/prefix/archives/a b.zip")


def test_gcs_signed_url_may_live_exactly_seven_days(gcs_bucket_url: str, rsa_key) -> None:
    store = gcs_store_with(gcs_bucket_url, service_account_credentials(rsa_key))

    url = store.signed_url("a.zip", timedelta(days=7), "a.zip")

    assert signed_query(url)["X-Goog-Expires"] == str(7 * 24 * 3600)
    with pytest.raises(ValueError, match="7 days"):
        store.signed_url("a.zip", timedelta(days=8), "a.zip")


def test_gcs_signed_url_downloads_from_the_emulator(gcs_bucket_url: str, rsa_key) -> None:
    open_store(gcs_bucket_url).put_bytes("archives/respaldo ñ.zip", b"PK zip bytes")
    signer = gcs_store_with(gcs_bucket_url, service_account_credentials(rsa_key))

    url = signer.signed_url("archives/respaldo ñ.zip", timedelta(hours=1), DOWNLOAD_NAME)

    # The emulator serves /bucket/object (it does not check the signature, real GCS does).
    with urllib.request.urlopen(url) as response:
        assert response.read() == b"PK zip bytes"
        assert "filename*=UTF-8''respaldo_cl%C3%ADnica" in response.headers["Content-Disposition"]


def test_gcs_signing_without_a_key_or_a_signer_says_how_to_configure(gcs_bucket_url) -> None:
    store = open_store(gcs_bucket_url)  # the emulator's anonymous credentials cannot sign

    with pytest.raises(RuntimeError, match="BACKUP_GCS_SIGNER_EMAIL"):
        store.signed_url("a.zip", timedelta(hours=1), "a.zip")


class TokenOnlyCredentials(google.auth.credentials.Credentials):
    """Like workload identity's: an access token from a refresh, no private key."""

    def __init__(self) -> None:
        super().__init__()
        self.refreshes = 0

    def refresh(self, request) -> None:
        self.refreshes += 1
        self.token = f"access-token-{self.refreshes}"


class FakeIamCredentialsApi:
    """A loopback HTTP server answering IAM Credentials signBlob with the service account's key."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.calls: list[dict[str, str | bytes]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                payload = base64.b64decode(body["payload"])
                signature = key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
                api.calls.append(
                    {
                        "path": self.path,
                        "authorization": self.headers["Authorization"],
                        "payload": payload,
                        "signature": signature,
                    }
                )
                answer = json.dumps(
                    {"keyId": "test-key-1", "signedBlob": base64.b64encode(signature).decode()}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def iam_api(rsa_key, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeIamCredentialsApi]:
    """Sends the client's signBlob calls to a loopback IAM Credentials API.

    google-cloud-storage 3.17.1 builds the URL as https://iamcredentials.{universe_domain}/... in
    _signing._sign_message: https is fixed and the universe domain must match the credentials'
    one, so there is no endpoint override. The narrowest seam is the transport that module
    uses: its Request is swapped for one that sends IAM's URL to the loopback server, unchanged
    otherwise (method, headers, body, the real google-auth requests transport).
    """
    api = FakeIamCredentialsApi(rsa_key)
    api.thread.start()
    iam_host = "https://iamcredentials.googleapis.com/"

    class LoopbackIamRequest(google.auth.transport.requests.Request):
        def __call__(self, url, method="GET", body=None, headers=None, **kwargs):
            assert url.startswith(iam_host), url
            url = api.base_url + "/" + url.removeprefix(iam_host)
            return super().__call__(url, method=method, body=body, headers=headers, **kwargs)

    monkeypatch.setattr(_signing, "requests", SimpleNamespace(Request=LoopbackIamRequest))
    try:
        yield api
    finally:
        api.server.shutdown()
        api.server.server_close()


def test_gcs_signed_url_through_iam_sign_blob(gcs_bucket_url: str, rsa_key, iam_api) -> None:
    credentials = TokenOnlyCredentials()
    store = gcs_store_with(gcs_bucket_url, credentials, signer_email=SIGNER)

    url = store.signed_url("archives/x.zip", timedelta(hours=72), DOWNLOAD_NAME)

    (call,) = iam_api.calls
    assert call["path"] == f"/v1/projects/-/serviceAccounts/{SIGNER}:signBlob?alt=json"
    assert call["authorization"] == "Bearer access-token-1"  # refreshed before use
    assert call["payload"].startswith(b"GOOG4-RSA-SHA256\n")
    query = signed_query(url)
    assert query["X-Goog-Signature"] == call["signature"].hex()
    assert query["X-Goog-Credential"].startswith(SIGNER + "/")
    assert query["X-Goog-Expires"] == str(72 * 3600)
    assert "filename*=UTF-8''respaldo_cl%C3%ADnica" in query["response-content-disposition"]
    rsa_key.public_key().verify(
        bytes.fromhex(query["X-Goog-Signature"]),
        call["payload"],
        padding.PKCS1v15(),
        hashes.SHA256(),
    )

    store.signed_url("archives/x.zip", timedelta(hours=1), "x.zip")
    assert credentials.refreshes == 1  # a valid token is reused


def test_gcs_key_for_another_account_signs_through_iam(gcs_bucket_url, rsa_key, iam_api) -> None:
    other = "another-signer@clinic-platform.iam.gserviceaccount.com"
    credentials = service_account_credentials(rsa_key)
    credentials.token = "key-token"  # a fresh token: no OAuth exchange, there is no network here
    credentials.expiry = None
    store = gcs_store_with(gcs_bucket_url, credentials, signer_email=other)

    url = store.signed_url("x.zip", timedelta(hours=1), "x.zip")

    (call,) = iam_api.calls
    assert f"/serviceAccounts/{other}:signBlob" in call["path"]
    assert call["authorization"] == "Bearer key-token"
    assert signed_query(url)["X-Goog-Credential"].startswith(other + "/")


# --- choosing a store by URL -------------------------------------------------------------------


def test_open_store_file_url_is_a_folder(tmp_path: Path) -> None:
    root = tmp_path / "archivos ñ"

    store = open_store(root.as_uri())

    assert isinstance(store, FolderStore)
    assert store.root == root
    store.put_bytes("a", b"1")
    assert (root / "a").read_bytes() == b"1"


def test_open_store_gs_url_reads_bucket_prefix_and_signer(gcs_emulator) -> None:
    default = "from-env@p.iam.gserviceaccount.com"

    from_query = open_store(f"gs://bucket-1/a/b/?signer={SIGNER}", signer_email=default)
    from_env = open_store("gs://bucket-1", signer_email=default)

    assert isinstance(from_query, GcsStore)
    assert isinstance(from_env, GcsStore)
    assert (from_query.bucket.name, from_query.prefix, from_query.signer_email) == (
        "bucket-1",
        "a/b",
        SIGNER,
    )
    assert (from_env.prefix, from_env.signer_email) == ("", "from-env@p.iam.gserviceaccount.com")
    assert from_query.url == "gs://bucket-1/a/b"


def test_the_signer_comes_from_settings_through_the_resources(tmp_path: Path) -> None:
    signer = "from-env@p.iam.gserviceaccount.com"
    settings = Settings.from_env(
        {
            "BACKUP_GCS_SIGNER_EMAIL": signer,
            "BACKUP_FILES_URL": (tmp_path / "files").as_uri(),
            "BACKUP_ARCHIVES_URL": "gs://bucket-1/respaldos",
        }
    )

    resources = build_resources(settings)

    assert settings.gcs_signer_email == signer
    assert Settings.from_env({}).gcs_signer_email is None
    assert resources["files"].signer_email == signer
    assert resources["archives"].signer_email == signer


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket/x",
        "/var/archives",
        "file://otherhost/dir",
        "file:relative/dir",
        "gs://",
        "gs://B",
    ],
)
def test_open_store_refuses_other_urls_naming_the_supported_forms(url: str) -> None:
    with pytest.raises(ValueError, match=r"file:///.*gs://bucket"):
        open_store(url)


# --- the Dagster resource ----------------------------------------------------------------------


def test_resource_opens_its_store_once(tmp_path: Path) -> None:
    resource = ObjectStoreResource(url=(tmp_path / "a").as_uri())

    assert resource.get_store() is resource.get_store()
    assert resource.get_store().url == (tmp_path / "a").as_uri()


def test_resource_gives_ops_a_working_store(tmp_path: Path) -> None:
    @dg.op
    def write_marker(archives: ObjectStoreResource) -> str:
        store = archives.get_store()
        assert store is archives.get_store()
        store.put_bytes("runs/marker.txt", b"ok")
        return store.url

    @dg.job
    def marker_job() -> None:
        write_marker()

    url = (tmp_path / "archives").as_uri()
    result = marker_job.execute_in_process(resources={"archives": ObjectStoreResource(url=url)})

    assert result.success
    assert result.output_for_node("write_marker") == url
    assert (tmp_path / "archives" / "runs" / "marker.txt").read_bytes() == b"ok"


def test_a_store_with_its_root_in_place_is_reachable(store: ObjectStore) -> None:
    store.put_bytes("a/b.txt", b"x")

    store.check_reachable()


def test_a_missing_folder_store_is_refused_not_empty(tmp_path: Path) -> None:
    with pytest.raises(StoreRefused):
        FolderStore(tmp_path / "not-mounted").check_reachable()


def test_a_missing_bucket_is_refused_not_empty(gcs_emulator: str) -> None:
    store = open_store("gs://bp-test-no-such-bucket/prefix")

    with pytest.raises(StoreRefused):
        store.check_reachable()
    # Whereas reading an object of it only says "not found": hence the check.
    with pytest.raises(ObjectNotFound):
        store.open_read("x.pdf")
