"""Object storage behind one small interface: a local folder (file://) or Google Cloud Storage (gs://)."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO


class ObjectNotFound(FileNotFoundError):
    """The key names no object in the store."""


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
        """A readable binary stream of the object. Raises ObjectNotFound."""

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


def open_store(url: str) -> ObjectStore:
    """The store for a URL: 'file:///dir' or 'gs://bucket[/prefix]'."""
    raise NotImplementedError
