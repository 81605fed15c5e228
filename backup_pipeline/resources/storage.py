"""Object storage behind one small interface: a local folder (file://) or Google Cloud Storage (gs://)."""

from __future__ import annotations

import abc
import contextlib
import http.client
import io
import logging
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit
from urllib.request import url2pathname

import dagster as dg
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import urllib3.exceptions
from google.api_core.exceptions import GoogleAPICallError, NotFound, RetryError
from google.auth.credentials import AnonymousCredentials, TokenState
from google.cloud import storage
from google.cloud.storage.exceptions import InvalidResponse
from google.cloud.storage.fileio import BlobReader, BlobWriter
from pydantic import Field, PrivateAttr

from backup_pipeline.settings import MAX_LINK_TTL

logger = logging.getLogger(__name__)

SIGNER_EMAIL_ENV = "BACKUP_GCS_SIGNER_EMAIL"

# Reads and writes move this much at a time, so a stream holds at most about one chunk in memory.
# Resumable uploads need a multiple of 256 KiB.
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024

# FolderStore writes land in "<dir>/.<random><suffix>" first; listings skip such names and no key
# may end with the suffix, so a half-written file is never taken for an object.
_PARTIAL_SUFFIX = ".bp-partial"

_KEY_RULES = (
    "an object key is a '/'-separated relative path: not absolute, no empty, '.' or '..' "
    "segments, no backslash or NUL"
)


class ObjectNotFound(FileNotFoundError):
    """The key names no object in the store."""


class StoreUnavailable(ConnectionError):
    """The store did not answer a read even after the client's own retries; a later attempt may."""


class StoreRefused(RuntimeError):
    """The store refused a read (permissions, a bad request): trying again will not help."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    updated: datetime  # UTC, naive


class ObjectStore(abc.ABC):
    """Keys are '/'-separated paths relative to the store's root (URL plus optional prefix)."""

    url: str

    @abc.abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A readable binary stream of the object. Raises ObjectNotFound when there is none
        (also from a read, if it vanishes meanwhile) and OSError when reading fails."""

    @abc.abstractmethod
    def open_write(
        self, key: str, content_type: str | None = None
    ) -> AbstractContextManager[BinaryIO]:
        """A writable stream; the object appears at key only when the block exits without error."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Delete the object; False when there was none."""

    @abc.abstractmethod
    def signed_url(self, key: str, expires_in: timedelta, download_name: str) -> str:
        """A URL that downloads the object as download_name until expires_in from now."""

    @abc.abstractmethod
    def check_reachable(self) -> None:
        """Raise StoreRefused when the store's root is not there (a wrong URL, a missing bucket
        or folder, no permission), so a misconfiguration fails loudly instead of every object
        reading as missing."""

    def delete_prefix(self, prefix: str) -> int:
        count = 0
        for info in list(self.list(prefix)):
            count += self.delete(info.key)
        return count

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        with self.open_write(key, content_type) as out:
            out.write(data)

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as src:
            return src.read()


def check_key(key: str) -> str:
    """The key itself, or ValueError when it could name something outside the store's root.

    Both backends apply the same rule, so a key that works locally works on GCS and the other way.
    The message never repeats the key: keys can carry user-chosen file names.
    """
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid object key: {_KEY_RULES}")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise ValueError(f"invalid object key: {_KEY_RULES}")
    if key.endswith(_PARTIAL_SUFFIX):
        raise ValueError(f"invalid object key: names ending in {_PARTIAL_SUFFIX} are reserved")
    return key


def _check_prefix(prefix: str) -> str:
    """A listing prefix is a plain string prefix ('a/b' matches 'a/bc'); its folder part is a key."""
    if "\\" in prefix or "\x00" in prefix:
        raise ValueError(f"invalid listing prefix: {_KEY_RULES}")
    folder = prefix.rpartition("/")[0]
    if folder or prefix.startswith("/"):
        check_key(folder)
    return prefix


def _check_lifetime(expires_in: timedelta) -> None:
    if not timedelta(0) < expires_in <= MAX_LINK_TTL:
        raise ValueError(
            "a signed URL must live more than 0 seconds and at most 7 days (the limit of GCS V4 "
            f"signatures), got {expires_in}"
        )


def attachment_disposition(download_name: str) -> str:
    """A Content-Disposition that saves as download_name: an ASCII fallback plus RFC 6266 UTF-8."""
    ascii_name = unicodedata.normalize("NFKD", download_name).encode("ascii", "ignore").decode()
    ascii_name = re.sub(r'[\x00-\x1f\x7f"\\%]', "_", ascii_name).strip() or "download"
    return (
        f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(download_name, safe='')}"
    )


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


class FolderStore(ObjectStore):
    """Objects as files under root; each write lands atomically with os.replace."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def open_read(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"no object at the requested key in {self.url}") from exc

    def open_write(
        self, key: str, content_type: str | None = None
    ) -> AbstractContextManager[BinaryIO]:
        return _replace_on_success(self._path(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def check_reachable(self) -> None:
        if not self.root.is_dir():
            raise StoreRefused(f"the folder store {self.url} does not exist or is not a folder")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        _check_prefix(prefix)
        folder = prefix.rpartition("/")[0]
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        found = []
        for dirpath, _dirnames, filenames in os.walk(start):
            relative = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if relative == "." else f"{relative}/{name}"
                if name.endswith(_PARTIAL_SUFFIX) or not key.startswith(prefix):
                    continue
                try:
                    stat = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:  # deleted while we walked
                    continue
                updated = datetime.fromtimestamp(stat.st_mtime, UTC).replace(tzinfo=None)
                found.append(ObjectInfo(key=key, size=stat.st_size, updated=updated))
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return False
        return True

    def signed_url(self, key: str, expires_in: timedelta, download_name: str) -> str:
        """The file's own file:// URI: for local use, where nothing can enforce an expiry or name."""
        _check_lifetime(expires_in)
        return self._path(key).as_uri()


@contextlib.contextmanager
def _replace_on_success(path: Path) -> Iterator[BinaryIO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=_PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())  # the rename must not outlive the data after a crash
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


class GcsStore(ObjectStore):
    """Objects in a GCS bucket under an optional prefix, through google-cloud-storage.

    Retries: the client's DEFAULT_RETRY (408, 429, 500, 502, 503, 504, connection errors and
    timeouts; backoff from 1 s up to 60 s, giving up after 120 s) covers every call made here:
    get_blob, each ranged read, exists, list_blobs, delete, each resumable-upload request (chunks
    go at explicit offsets, so resending one is safe) and the IAM signBlob call. A delete retried
    after a lost reply sees 404 and reports False. The upload-cancel DELETE is not retried.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client: storage.Client | None = None,
        *,
        signer_email: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        # Credentials come from google.auth.default(): GOOGLE_APPLICATION_CREDENTIALS, workload
        # identity's metadata server or gcloud's ADC. With STORAGE_EMULATOR_HOST set the client
        # itself talks to the emulator with AnonymousCredentials. Object calls need no project,
        # so a missing one must not stop us.
        self.client = client or storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT"))
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
            f"identity and set {SIGNER_EMAIL_ENV} (or ?signer=<email> in the gs:// URL)."
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


_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_SUPPORTED_FORMS = (
    "'file:///absolute/folder' for a local folder or "
    "'gs://bucket[/prefix][?signer=service-account-email]' for Google Cloud Storage"
)


def open_store(url: str) -> ObjectStore:
    """The store for a URL: 'file:///dir' or 'gs://bucket[/prefix][?signer=email]'.

    For gs:// the signer defaults to BACKUP_GCS_SIGNER_EMAIL; it is only needed when the
    credentials cannot sign (workload identity).
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = Path(url2pathname(parts.path))
        if parts.netloc not in ("", "localhost") or parts.query or not path.is_absolute():
            raise ValueError(
                f"a file:// object store URL needs an absolute local path; use {_SUPPORTED_FORMS}"
            )
        return FolderStore(path)
    if parts.scheme == "gs":
        if not _BUCKET_NAME.fullmatch(parts.netloc):
            raise ValueError(f"a gs:// URL needs a valid bucket name; use {_SUPPORTED_FORMS}")
        query = parse_qs(parts.query, keep_blank_values=True)
        if set(query) - {"signer"}:
            raise ValueError(f"a gs:// URL takes only the 'signer' option; use {_SUPPORTED_FORMS}")
        signer = query.get("signer", [""])[-1] or os.environ.get(SIGNER_EMAIL_ENV) or None
        return GcsStore(parts.netloc, unquote(parts.path), signer_email=signer)
    raise ValueError(
        f"unsupported object store URL scheme {parts.scheme!r}; use {_SUPPORTED_FORMS}"
    )


class ObjectStoreResource(dg.ConfigurableResource):
    """An object store chosen by URL (see open_store), opened once per resource instance."""

    url: str = Field(
        description="'file:///absolute/folder' or 'gs://bucket[/prefix][?signer=email]'"
    )

    # A pydantic private attribute: the only mutable state a (frozen) ConfigurableResource may hold.
    _store: ObjectStore | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._store = open_store(self.url)

    def get_store(self) -> ObjectStore:
        # Outside a run (scripts, tests) setup_for_execution is never called: open lazily.
        if self._store is None:
            self._store = open_store(self.url)
        return self._store
