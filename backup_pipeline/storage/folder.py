"""A local folder as an object store (file://): each write lands atomically with os.replace."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from backup_pipeline.storage.base import (
    PARTIAL_SUFFIX,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StoreRefused,
    _check_lifetime,
    _check_prefix,
    check_key,
)


class FolderStore(ObjectStore):
    """Objects as files under root; each write lands atomically with os.replace."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self._root = str(self.root)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def open_read(self, key: str) -> BinaryIO:
        # A string path, not self._path(key): this runs once per archived file, and pathlib
        # interns every part of every path it parses (file names churn CPython's table of
        # interned strings until it grows by megabytes). check_key leaves no '', '.' or '..'
        # part and no leading '/', so the key appended to the root names the same file.
        try:
            return open(os.path.join(self._root, check_key(key)), "rb")
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
                if name.endswith(PARTIAL_SUFFIX) or not key.startswith(prefix):
                    continue
                try:
                    stat = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:  # deleted while we walked
                    continue
                updated = datetime.fromtimestamp(stat.st_mtime, UTC).replace(tzinfo=None)
                found.append(ObjectInfo(key=key, size=stat.st_size, updated=updated))
        yield from sorted(found, key=lambda info: info.key)

    def remove_abandoned_writes(self, older_than: datetime, prefix: str = "") -> int:
        """Partial files of writes that never finished (the process was killed mid-write): a
        write in progress keeps touching its file, so only those untouched since `older_than`
        go. `prefix` names a folder ('a/b/') to look in, or the whole store when empty."""
        removed = 0
        cutoff = older_than.replace(tzinfo=UTC).timestamp()
        folder = _check_prefix(prefix).rstrip("/")
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        for dirpath, _dirnames, filenames in os.walk(start):
            for name in filenames:
                if not name.endswith(PARTIAL_SUFFIX):
                    continue
                path = os.path.join(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
        return removed

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


# A write sends its data to the disk each time this much more is written, rather than all of it
# at the end: the kernel keeps dirty pages up to 30 s (vm.dirty_expire_centisecs), so a 2 GB
# archive written over the run was still all in memory when its fsync came, and the fsync (about
# 0.9 s on the bench's VM) was the last thing the backup waited for after its last workbook.
SYNC_EVERY_BYTES = 64 * 1024 * 1024
# fdatasync (the data without the file's times) where the system has it; macOS and Windows do not.
_sync_data = getattr(os, "fdatasync", os.fsync)


class _SyncingWriter(io.BufferedWriter):
    """A file written forward that has its data synced to disk every SYNC_EVERY_BYTES, so that
    the fsync at the end has only the last stretch left."""

    def __init__(self, raw: io.FileIO) -> None:
        super().__init__(raw)
        self._unsynced = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        written = super().write(data)
        self._unsynced += written
        if self._unsynced >= SYNC_EVERY_BYTES:
            self.flush()
            _sync_data(self.fileno())
            self._unsynced = 0
        return written


@contextlib.contextmanager
def _replace_on_success(path: Path) -> Iterator[BinaryIO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=PARTIAL_SUFFIX)
    try:
        with _SyncingWriter(io.FileIO(fd, "wb")) as out:
            yield out  # type: ignore[misc]
            out.flush()
            os.fsync(out.fileno())  # the rename must not outlive the data after a crash
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
