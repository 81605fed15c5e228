"""The object-store interface: what a store does, its errors and the rules every key follows."""

from __future__ import annotations

import abc
import re
import unicodedata
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import BinaryIO
from urllib.parse import quote

from backup_pipeline.settings import MAX_LINK_TTL

# FolderStore writes land in "<dir>/.<random><suffix>" first; listings skip such names and no key
# may end with the suffix, so a half-written file is never taken for an object.
PARTIAL_SUFFIX = ".bp-partial"

# Each chunk reuses the heap memory the last one freed. A 1 MiB chunk is above malloc's initial
# mmap threshold: a fresh mapping to fault in for each chunk until freed mappings raise the
# threshold, and from then on a block that raises the heap's high-water mark.
_COPY_CHUNK = 64 * 1024

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
    # How many reads of this store a reader keeps in flight. A local folder answers from the page
    # cache at once (threads only compete for the cores); a remote store spends tens of
    # milliseconds per request before the first byte, which only requests in flight together hide.
    reads_in_flight: int = 1

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

    def remove_abandoned_writes(self, older_than: datetime, prefix: str = "") -> int:
        """Delete what writes cut short (a killed process) left before `older_than` (naive UTC)
        at keys under `prefix` (a folder, ending in '/'; all when empty); returns how many. A store whose interrupted writes leave nothing behind (GCS: an
        unfinished resumable upload is never an object) has nothing to do."""
        return 0

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

    def read_into(self, key: str, out: BinaryIO) -> int:
        """Write the whole object to out, in one request where the store can; returns its size.

        Errors as open_read's. A failed read may have written part of the object to out."""
        size = 0
        with self.open_read(key) as src:
            while chunk := src.read(_COPY_CHUNK):
                out.write(chunk)
                size += len(chunk)
        return size

    def read_head(self, key: str, max_bytes: int) -> bytes:
        """At most the first max_bytes of the object, in one request where the store can.
        Errors as open_read's."""
        with self.open_read(key) as src:
            # In copy-sized reads: one read(max_bytes) allocates max_bytes before it reads, and
            # the invoice reports ask for 16 MiB of each ~10 KB CFDI.
            chunks: list[bytes] = []
            left = max_bytes
            while left > 0 and (chunk := src.read(min(left, _COPY_CHUNK))):
                chunks.append(chunk)
                left -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def check_key(key: str) -> str:
    """The key itself, or ValueError when it could name something outside the store's root.

    Both backends apply the same rule, so a key that works locally works on GCS and the other way.
    The message never repeats the key: keys can carry user-chosen file names.
    """
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid object key: {_KEY_RULES}")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise ValueError(f"invalid object key: {_KEY_RULES}")
    if key.endswith(PARTIAL_SUFFIX):
        raise ValueError(f"invalid object key: names ending in {PARTIAL_SUFFIX} are reserved")
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
