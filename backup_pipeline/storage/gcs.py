"""Google Cloud Storage as an object store (gs://): metadata through google-cloud-storage, bytes
through google-resumable-media on a session of our own."""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from types import TracebackType
from typing import Any, BinaryIO, cast
from urllib.parse import quote

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import google.resumable_media
import requests
import requests.adapters
import urllib3.exceptions
from google.api_core.exceptions import GoogleAPICallError, NotFound, RetryError
from google.auth.credentials import AnonymousCredentials, Credentials, TokenState
from google.cloud import storage
from google.cloud.storage.fileio import BlobReader
from google.resumable_media.requests import Download, ResumableUpload

from backup_pipeline.storage.base import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StoreRefused,
    StoreUnavailable,
    _check_lifetime,
    _check_prefix,
    _naive_utc,
    attachment_disposition,
    check_key,
)

logger = logging.getLogger(__name__)

# Reads and writes move this much at a time, so a stream holds at most about one chunk in memory.
# Resumable uploads need a multiple of 256 KiB.
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
# Each request to GCS spends tens of milliseconds before its first byte: readers of many small
# objects keep this many in flight (bench/RESULTS.md: 128 hide most of 40 ms per request).
READS_IN_FLIGHT = 128
# Seconds to connect, and to wait for each read from the socket: resumable-media's own defaults.
_TIMEOUT = (61, 60)


def default_credentials() -> Credentials:
    """What the store signs in with when it is given no credentials, as storage.Client decides
    it: anonymous when STORAGE_EMULATOR_HOST names an emulator, else google.auth.default()
    (GOOGLE_APPLICATION_CREDENTIALS, workload identity's metadata server or gcloud's ADC)."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return AnonymousCredentials()
    credentials, _project = google.auth.default(scopes=storage.Client.SCOPE)
    return credentials


class GcsStore(ObjectStore):
    """Objects in a GCS bucket under an optional prefix.

    Two HTTP sessions share one set of credentials: storage.Client's, for metadata calls (get_blob,
    exists, list, delete, the ranged reads of open_read) and signing; and ours, an
    AuthorizedSession with a pool for READS_IN_FLIGHT connections, for the data path that runs
    that many at once (read_into, read_head) and for uploads (google-resumable-media's Download
    and ResumableUpload). requests keeps 10 connections per host by default, and the client's
    session can only be replaced through a private argument.

    Retries: the client's DEFAULT_RETRY (408, 429, 500, 502, 503, 504, connection errors and
    timeouts; backoff from 1 s up to 60 s, giving up after 120 s) covers its calls and the IAM
    signBlob call; resumable-media retries the same statuses and connection errors on the data
    path (backoff from 1 s up to 64 s, giving up after 600 s of waiting), resuming a broken
    download from its last byte and resending an upload chunk at its explicit offset. A delete
    retried after a lost reply sees 404 and reports False. The upload-cancel DELETE is not retried.
    """

    reads_in_flight = READS_IN_FLIGHT

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        credentials: Credentials | None = None,
        signer_email: str | None = None,
        project: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        # Scoped here (a no-op for credentials that are already) so that the client, our session
        # and signing all hold this very object, and one token refresh serves them all.
        self.credentials: Credentials = google.auth.credentials.with_scopes_if_required(
            credentials or default_credentials(), storage.Client.SCOPE
        )
        # Object calls need no project, so a missing one (None, not google's own lookup) must not
        # stop us. signer_email names the service account that signs URLs when the credentials
        # hold no key (workload identity).
        self.client = storage.Client(project=project, credentials=self.credentials)
        self.bucket = self.client.bucket(bucket)  # no lookup call: we may lack storage.buckets.get
        self.session = _pooled_session(self.credentials, READS_IN_FLIGHT + 8)
        endpoint = self.client.api_endpoint  # STORAGE_EMULATOR_HOST's, when it is set
        bucket_path = quote(bucket, safe="")
        self._media_url = f"{endpoint}/download/storage/v1/b/{bucket_path}/o/"
        self._upload_url = f"{endpoint}/upload/storage/v1/b/{bucket_path}/o?uploadType=resumable"
        self.signer_email = signer_email
        self.chunk_size = chunk_size
        self.url = f"gs://{bucket}/{self.prefix}" if self.prefix else f"gs://{bucket}"

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _download(self, key: str, **kwargs: Any) -> Download:
        """A download of the object's bytes (JSON API media URL, alt=media) on our session."""
        return Download(f"{self._media_url}{quote(self._name(key), safe='')}?alt=media", **kwargs)

    def open_read(self, key: str) -> BinaryIO:
        name = self._name(key)
        with _read_errors(self.url):
            # get_blob pins the generation, so the chunked range reads never mix two versions.
            blob = self.bucket.get_blob(name)
        if blob is None:
            raise ObjectNotFound(f"no object at the requested key in {self.url}")
        reader = cast(BlobReader, blob.open("rb", chunk_size=self.chunk_size))
        # Without transcoding (no Content-Encoding) GCS serves exactly `size` bytes.
        size = None if blob.content_encoding else blob.size
        return cast(BinaryIO, _GcsReader(reader, self.url, size))

    def read_into(self, key: str, out: BinaryIO) -> int:
        """One streaming GET of the object's bytes, without a metadata request first.
        resumable-media resumes a broken download from where it stopped, pinned to the
        generation its first response named, and checks the whole object's CRC32C."""
        counted = _CountingWriter(out)
        download = self._download(key, stream=counted, checksum="crc32c")
        with _read_errors(self.url):
            download.consume(self.session, timeout=_TIMEOUT)
        return counted.size

    def read_head(self, key: str, max_bytes: int) -> bytes:
        """One ranged GET of the first max_bytes (a smaller object comes whole)."""
        if max_bytes <= 0:
            return b""
        head = io.BytesIO()
        # No checksum: GCS's is the whole object's, a range cannot be checked against it.
        download = self._download(key, stream=head, start=0, end=max_bytes - 1, checksum=None)
        with _read_errors(self.url):
            try:
                download.consume(self.session, timeout=_TIMEOUT)
            except google.resumable_media.InvalidResponse as exc:
                if exc.response.status_code != http.client.REQUESTED_RANGE_NOT_SATISFIABLE:
                    raise
                return b""  # the range starts at 0: only an empty object has no such byte
        # A transcoded (gzip) object comes whole whatever the range.
        return head.getvalue()[:max_bytes]

    def open_write(
        self, key: str, content_type: str | None = None
    ) -> AbstractContextManager[BinaryIO]:
        # GCS's CRC32C of the finished object is checked against the bytes sent, as BlobWriter's
        # checksum="auto" did: a corrupted upload fails the write instead of being delivered.
        upload = ResumableUpload(self._upload_url, self.chunk_size, checksum="crc32c")
        writer = _UploadWriter(
            upload,
            self.session,
            {"name": self._name(key)},
            content_type or "application/octet-stream",
        )
        return _ResumableUpload(writer)

    def exists(self, key: str) -> bool:
        return bool(self.bucket.blob(self._name(key)).exists())

    def check_reachable(self) -> None:
        # Listing one object needs only storage.objects.list, which reading a clinic's files
        # implies; a missing bucket answers 404 here, where object reads would say "not found".
        root = f"{self.prefix}/" if self.prefix else ""
        with _read_errors(self.url):
            try:
                next(iter(self.client.list_blobs(self.bucket, prefix=root, max_results=1)), None)
            except NotFound:
                raise StoreRefused(f"the bucket of {self.url} does not exist") from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        _check_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        for blob in self.client.list_blobs(self.bucket, prefix=root + prefix):
            if blob.name.endswith("/"):  # a "folder" placeholder made by the console
                continue
            yield ObjectInfo(
                key=blob.name[len(root) :], size=blob.size, updated=_naive_utc(blob.updated)
            )

    def delete(self, key: str) -> bool:
        try:
            self.bucket.delete_blob(self._name(key))
        except NotFound:
            return False
        return True

    def signed_url(self, key: str, expires_in: timedelta, download_name: str) -> str:
        """A V4 signed GET URL, signed with the service-account key or else through IAM signBlob."""
        _check_lifetime(expires_in)
        blob = self.bucket.blob(self._name(key))
        return blob.generate_signed_url(
            version="v4",
            expiration=expires_in,
            method="GET",
            response_disposition=attachment_disposition(download_name),
            credentials=self.credentials,
            **self._iam_signing(),
        )

    def _iam_signing(self) -> dict[str, Any]:
        """No arguments when the credentials hold a private key; else what IAM signBlob needs.

        Workload identity (GKE) gives token-only credentials: the client then asks IAM to sign with
        the service account's Google-held key, which needs roles/iam.serviceAccountTokenCreator on
        that account. A configured signer other than the key's own account also goes through IAM.
        """
        credentials = self.credentials
        if isinstance(credentials, google.auth.credentials.Signing) and self.signer_email in (
            None,
            credentials.signer_email,
        ):
            return {}
        cannot_sign = RuntimeError(
            "cannot sign a GCS URL: the credentials have no private key and no access token "
            "for a known service account. Use a service-account key, or run with workload "
            "identity and set BACKUP_GCS_SIGNER_EMAIL (or ?signer=<email> in the gs:// URL)."
        )
        if isinstance(credentials, AnonymousCredentials):
            raise cannot_sign
        if credentials.token_state is not TokenState.FRESH:
            # Compute Engine credentials learn their account's email on refresh, too.
            credentials.refresh(google.auth.transport.requests.Request())
        email = self.signer_email or getattr(credentials, "service_account_email", None)
        if not email or email == "default" or not credentials.token:
            raise cannot_sign
        return {"service_account_email": email, "access_token": credentials.token}


def _pooled_session(
    credentials: Credentials, size: int
) -> google.auth.transport.requests.AuthorizedSession:
    """An authorized session that `size` requests share at once: requests keeps 10 connections
    per host, and the 11th thread's connection would be opened and thrown away on every request."""
    session = google.auth.transport.requests.AuthorizedSession(credentials)
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class _CountingWriter(io.RawIOBase):
    """out as the client writes to it, counting bytes; a download GCS restarts from the top
    (a transcoded object) seeks back to 0, which starts the count over too."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__()
        self._out = out
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._out.write(data)
        self.size += len(data)
        return len(data)

    def seekable(self) -> bool:
        return self._out.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        position = self._out.seek(offset, whence)
        self.size = position
        self._out.truncate()
        return position

    def tell(self) -> int:
        return self.size


# google-cloud-storage's own retry predicate retries these; once its deadline has passed they
# mean "not now", and a caller may try the whole read again later.
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@contextlib.contextmanager
def _read_errors(url: str) -> Iterator[None]:
    """google's read errors as ObjectStore promises them: ObjectNotFound for an object that is
    gone (deleted, or replaced by a newer generation, after get_blob), StoreUnavailable (an
    OSError) for one that may read later, StoreRefused (not an OSError) for the rest (403,
    400): a misconfiguration must fail the backup, not leave every file out of it.

    The messages name the store, never the key (google's name the URL): keys carry
    user-chosen file names. (google-cloud-storage's InvalidResponse and DataCorruption subclass
    resumable-media's, so one clause catches both libraries'.)
    """
    try:
        yield
    except (GoogleAPICallError, google.resumable_media.InvalidResponse) as exc:
        status = exc.code if isinstance(exc, GoogleAPICallError) else exc.response.status_code
        if status == 404:
            raise ObjectNotFound(f"the object vanished while it was read in {url}") from None
        if status in _TRANSIENT_STATUS:
            raise StoreUnavailable(f"reading from {url} failed: HTTP {status}") from None
        raise StoreRefused(f"{url} refused a read: HTTP {status}") from None
    except google.resumable_media.DataCorruption:
        raise StoreUnavailable(f"a read from {url} failed its checksum") from None
    except (
        RetryError,
        # resumable-media's last error once its retries give up: its message names the URL.
        requests.exceptions.RequestException,
        ConnectionError,
        urllib3.exceptions.HTTPError,
        http.client.HTTPException,
        google.auth.exceptions.TransportError,
    ) as exc:
        raise StoreUnavailable(f"reading from {url} failed: {type(exc).__name__}") from None


class _GcsReader(io.BufferedIOBase):
    """A BlobReader whose errors are translated by _read_errors.

    Given the object's size, it reports the end itself: BlobReader learns it only from one more
    ranged GET past the last byte (answered 416), a third request for every object read.
    """

    def __init__(self, reader: BlobReader, url: str, size: int | None = None) -> None:
        super().__init__()
        self._reader = reader
        self._url = url
        self._size = size

    def _bounded(self, size: int | None) -> int:
        """`size` (-1 or None: the rest) cut to what is left, so BlobReader never fetches past
        the end to fill a short read."""
        wanted = -1 if size is None else size
        if self._size is None:
            return wanted
        left = max(self._size - self._reader.tell(), 0)
        return left if wanted < 0 else min(wanted, left)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        wanted = self._bounded(size)
        if wanted == 0:
            return b""
        with _read_errors(self._url):
            return self._reader.read(wanted)

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def readline(self, size: int | None = -1) -> bytes:
        wanted = self._bounded(size)
        if wanted == 0:
            return b""
        with _read_errors(self._url):
            return self._reader.readline(wanted)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with _read_errors(self._url):
            return self._reader.seek(offset, whence)

    def tell(self) -> int:
        return self._reader.tell()

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
        super().close()


class _UploadWindow:
    """An upload's bytes from the last offset GCS confirmed on, at their offsets in the object:
    the stream ResumableUpload reads each chunk from (tell() is the chunk's offset). Seeking back
    to what GCS confirmed lets a chunk it kept only part of go again from there."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._start = 0  # the offset of _data[0] in the object
        self._position = 0

    @property
    def end(self) -> int:
        return self._start + len(self._data)

    def append(self, data: memoryview) -> None:
        self._data += data

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or not self._start <= position <= self.end:
            raise ValueError("an upload can only go back to the bytes GCS has not confirmed")
        self._position = position
        return position

    def read(self, size: int = -1) -> bytes:
        begin = self._position - self._start
        stop = len(self._data) if size < 0 else min(begin + size, len(self._data))
        chunk = bytes(memoryview(self._data)[begin:stop])
        self._position += len(chunk)
        return chunk

    def forget_before(self, position: int) -> None:
        del self._data[: position - self._start]
        self._start = position


class _UploadWriter(io.BufferedIOBase):
    """A resumable upload as a write-only stream: each full chunk goes up as it fills, and only
    finish() sends the last one, which makes the object appear.

    close() never finalizes (it only ends writing): a TextIOWrapper around the stream closes it
    before the block exits, and io's finalizer closes a writer collected after an error, which
    must not turn a truncated upload into an object.
    """

    def __init__(
        self,
        upload: ResumableUpload,
        session: requests.Session,
        metadata: dict[str, str],
        content_type: str,
    ) -> None:
        super().__init__()
        self.upload = upload
        self._session = session
        self._metadata = metadata
        self._content_type = content_type
        self._window = _UploadWindow()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._window.end

    def flush(self) -> None:
        """Nothing: the zip writer flushes its output, and an upload can only be flushed by
        finalizing it."""

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed GCS upload")
        with memoryview(data) as view:
            self._window.append(view.cast("B"))
            written = view.nbytes
        # More than a chunk waiting: send a full one, keeping at least a byte for the last
        # chunk, which finish() sends.
        while self._window.end - self.upload.bytes_uploaded > self.upload.chunk_size:
            self._send_chunk()
        return written

    def _send_chunk(self) -> None:
        if self.upload.resumable_url is None:
            self.upload.initiate(
                self._session,
                self._window,
                self._metadata,
                self._content_type,
                stream_final=False,
                timeout=_TIMEOUT,
            )
        self._window.seek(self.upload.bytes_uploaded)
        self.upload.transmit_next_chunk(self._session, timeout=_TIMEOUT)
        self._window.forget_before(self.upload.bytes_uploaded)

    def finish(self) -> None:
        """Send what is left as the last chunk: only now does the object appear."""
        while not self.upload.finished:
            self._send_chunk()
        self._window = _UploadWindow()

    def cancel(self) -> None:
        """Drop the upload's session and its bytes (GCS answers 499); nothing was sent, nothing
        to drop."""
        self._window = _UploadWindow()
        if self.upload.resumable_url:
            self._session.delete(
                self.upload.resumable_url, headers={"Content-Length": "0"}, timeout=60
            )


class _ResumableUpload(AbstractContextManager[BinaryIO]):
    """Finalizes the upload on a clean exit; on an error cancels its session and never finalizes.

    An uncancelled session would be kept by GCS for a week, bytes and all. A last chunk that
    fails (after resumable-media's retries) cancels the session too, and the error goes on.
    """

    def __init__(self, writer: _UploadWriter) -> None:
        self._writer = writer

    def __enter__(self) -> BinaryIO:
        return cast(BinaryIO, self._writer)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                try:
                    self._writer.finish()
                except BaseException:
                    self._cancel()
                    raise
            else:
                self._cancel()
        finally:
            self._writer.close()

    def _cancel(self) -> None:
        try:
            self._writer.cancel()
        except Exception:
            logger.warning("could not cancel a failed GCS upload session", exc_info=True)
