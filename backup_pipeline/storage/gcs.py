"""Google Cloud Storage as an object store (gs://), through google-cloud-storage."""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from types import TracebackType
from typing import Any, BinaryIO, cast

import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import requests.adapters
import urllib3.exceptions
from google.api_core.exceptions import (
    GoogleAPICallError,
    NotFound,
    RequestRangeNotSatisfiable,
    RetryError,
)
from google.auth.credentials import AnonymousCredentials, TokenState
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.cloud.storage.fileio import BlobReader, BlobWriter

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


class GcsStore(ObjectStore):
    """Objects in a GCS bucket under an optional prefix, through google-cloud-storage.

    Retries: the client's DEFAULT_RETRY (408, 429, 500, 502, 503, 504, connection errors and
    timeouts; backoff from 1 s up to 60 s, giving up after 120 s) covers every call made here:
    get_blob, each ranged read, exists, list_blobs, delete, each resumable-upload request (chunks
    go at explicit offsets, so resending one is safe) and the IAM signBlob call. A delete retried
    after a lost reply sees 404 and reports False. The upload-cancel DELETE is not retried.
    """

    reads_in_flight = READS_IN_FLIGHT

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client: storage.Client | None = None,
        *,
        signer_email: str | None = None,
        project: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        # Credentials come from google.auth.default(): GOOGLE_APPLICATION_CREDENTIALS, workload
        # identity's metadata server or gcloud's ADC. With STORAGE_EMULATOR_HOST set the client
        # itself talks to the emulator with AnonymousCredentials. Object calls need no project,
        # so a missing one (None, not google's own lookup) must not stop us. signer_email names
        # the service account that signs URLs when the credentials hold no key (workload identity).
        self.client = client or storage.Client(project=project)
        _pool_connections(self.client, READS_IN_FLIGHT + 8)
        self.bucket = self.client.bucket(bucket)  # no lookup call: we may lack storage.buckets.get
        self.signer_email = signer_email
        self.chunk_size = chunk_size
        self.url = f"gs://{bucket}/{self.prefix}" if self.prefix else f"gs://{bucket}"

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

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
        """One streaming GET of the object's bytes, without get_blob's metadata request first.
        The client resumes a broken download from where it stopped, pinned to the generation
        its first response named, and checks the whole object's CRC32C."""
        blob = self.bucket.blob(self._name(key))
        counted = _CountingWriter(out)
        with _read_errors(self.url):
            blob.download_to_file(counted)
        return counted.size

    def read_head(self, key: str, max_bytes: int) -> bytes:
        """One ranged GET of the first max_bytes (a smaller object comes whole)."""
        if max_bytes <= 0:
            return b""
        blob = self.bucket.blob(self._name(key))
        with _read_errors(self.url):
            try:
                # No checksum: GCS's is the whole object's, a range cannot be checked against it.
                data = blob.download_as_bytes(start=0, end=max_bytes - 1, checksum=None)
            except RequestRangeNotSatisfiable:
                return b""  # the range starts at 0: only an empty object has no such byte
        # A transcoded (gzip) object comes whole whatever the range.
        return data[:max_bytes]

    def open_write(
        self, key: str, content_type: str | None = None
    ) -> AbstractContextManager[BinaryIO]:
        blob = self.bucket.blob(self._name(key), chunk_size=self.chunk_size)
        writer = blob.open(
            "wb",
            chunk_size=self.chunk_size,
            content_type=content_type or "application/octet-stream",
            # zipfile flushes its output; the upload can only be flushed by finalizing it.
            ignore_flush=True,
        )
        return _ResumableUpload(cast(BlobWriter, writer))

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
            **self._iam_signing(),
        )

    def _iam_signing(self) -> dict[str, Any]:
        """No arguments when the credentials hold a private key; else what IAM signBlob needs.

        Workload identity (GKE) gives token-only credentials: the client then asks IAM to sign with
        the service account's Google-held key, which needs roles/iam.serviceAccountTokenCreator on
        that account. A configured signer other than the key's own account also goes through IAM.
        """
        credentials = self.client._credentials
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


def _pool_connections(client: storage.Client, size: int) -> None:
    """Let `size` requests share the client's session at once: requests keeps 10 connections per
    host, and the 11th thread's connection would be opened and thrown away on every request."""
    session = client._http
    if hasattr(session, "mount"):
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=size)
        session.mount("https://", adapter)
        session.mount("http://", adapter)


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
    user-chosen file names.
    """
    try:
        yield
    except (GoogleAPICallError, InvalidResponse) as exc:
        status = exc.code if isinstance(exc, GoogleAPICallError) else exc.response.status_code
        if status == 404:
            raise ObjectNotFound(f"the object vanished while it was read in {url}") from None
        if status in _TRANSIENT_STATUS:
            raise StoreUnavailable(f"reading from {url} failed: HTTP {status}") from None
        raise StoreRefused(f"{url} refused a read: HTTP {status}") from None
    except DataCorruption:
        raise StoreUnavailable(f"a read from {url} failed its checksum") from None
    except (
        RetryError,
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


class _ResumableUpload(AbstractContextManager[BinaryIO]):
    """Finalizes the resumable upload on a clean exit; on an error cancels it and never finalizes.

    Not BlobWriter's own __exit__: its terminate() sends DELETE to the upload's initiation URL
    (upload_url), not to the session URI (resumable_url), so GCS keeps the session for a week;
    and if that request fails, the writer's buffer stays open and io's finalizer later calls
    close(), which would finalize a truncated object.
    """

    def __init__(self, writer: BlobWriter) -> None:
        self._writer = writer

    def __enter__(self) -> BinaryIO:
        return cast(BinaryIO, self._writer)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._writer.close()  # sends the last chunk: only now does the object appear
            return
        try:
            self._cancel_session()
        except Exception:
            logger.warning("could not cancel a failed GCS upload session", exc_info=True)
        finally:
            self._writer._buffer.close()  # makes close() a no-op from now on

    def _cancel_session(self) -> None:
        session = self._writer._upload_and_transport
        if session is None:  # nothing was sent yet, so there is no session
            return
        upload, transport = session
        if upload.resumable_url:
            # GCS answers 499 and forgets the session and its bytes.
            transport.delete(upload.resumable_url, headers={"Content-Length": "0"}, timeout=60)
