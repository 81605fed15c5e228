"""Moving local files into the archives store's staging area, hashing them on the way."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from backup_pipeline.rules.archive_entries import StagedEntry
from backup_pipeline.storage import ObjectStore

CHUNK = 1024 * 1024


class _HashingReader:
    def __init__(self, path: Path) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        self._file = path.open("rb")

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def close(self) -> None:
        self._file.close()


def stage_file(
    archives: ObjectStore, staging_prefix: str, archive_path: str, local_path: Path
) -> StagedEntry:
    """Upload local_path to <staging_prefix>/<archive_path>; one read computes size and sha256."""
    key = f"{staging_prefix.rstrip('/')}/{archive_path}"
    reader = _HashingReader(local_path)
    try:
        with archives.open_write(key) as out:
            shutil.copyfileobj(reader, out, CHUNK)
    finally:
        reader.close()
    return StagedEntry(
        archive_path=archive_path,
        staging_key=key,
        size=reader.size,
        sha256=reader.digest.hexdigest(),
    )
