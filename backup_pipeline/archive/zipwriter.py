"""Writes a zip as one forward stream, record by record from PKWARE's APPNOTE, with SHA256SUMS.

The archive goes straight into the store's upload, which cannot seek back: every entry is
"streamed" (APPNOTE 4.3.9): its local header carries general purpose bit 3 and no CRC or sizes,
and a data descriptor after the data gives them. Every entry is zip64 from the start (the size of
a stored file is not checked before its bytes are written), so the descriptor's sizes are 8
bytes each. The central directory records are spooled to workdir as the entries are written;
close() streams them and the end records (zip64's when the zip needs them). Only zlib, struct
and the zip format itself: no private name of `zipfile`.

The records are those CPython's zipfile writes for the same entries (flags, versions, zip64
extra fields, end records), so every client that read our zips before reads these the same way.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

from backup_pipeline.archive.verify import is_contained, sha256sums_text

# APPNOTE 4.4.5: the compression methods this writer makes.
ZIP_STORED = 0
ZIP_DEFLATED = 8

# Each chunk reuses the heap memory the last one freed. A 1 MiB chunk is above malloc's initial
# mmap threshold: a fresh mapping to fault in for each chunk until freed mappings raise the
# threshold, and from then on a block that raises the heap's high-water mark.
CHUNK = 64 * 1024
# Central directory records and SHA256SUMS lines wait in a spool this large before workdir.
BOOKKEEPING_IN_MEMORY = 256 * 1024

# A size or offset above this goes in a zip64 extra field in the central directory. The 32-bit
# fields could hold up to 0xFFFFFFFE, but some readers take them as signed: zipfile's limit.
ZIP64_LIMIT = (1 << 31) - 1
# More entries than this need the zip64 end records (the end record's count is 16 bits).
ENTRY_COUNT_LIMIT = 0xFFFF
# APPNOTE 4.4.3: version 4.5 reads zip64; the upper byte of "version made by" says UNIX (3),
# so that clients on macOS and Linux read the permissions in the external attributes.
ZIP64_VERSION = 45
MADE_BY_UNIX = 3
# APPNOTE 4.4.4, general purpose bit flags.
FLAG_DATA_DESCRIPTOR = 0x08  # bit 3: CRC and sizes follow the data
FLAG_UTF8 = 0x800  # bit 11: the name is UTF-8 (set for names that are not plain ASCII)
ZIP64_EXTRA_ID = 0x0001
# rw-r--r-- when extracted on macOS and Linux, in the upper 16 bits as UNIX clients read them.
FILE_ATTRIBUTES = 0o644 << 16

LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # APPNOTE 4.3.7
DATA_DESCRIPTOR64 = struct.Struct("<4sLQQ")  # APPNOTE 4.3.9, with zip64 sizes
CENTRAL_HEADER = struct.Struct("<4s4B4HL2L5H2L")  # APPNOTE 4.3.12
END64 = struct.Struct("<4sQ2H2L4Q")  # APPNOTE 4.3.14, zip64 end of central directory
END64_LOCATOR = struct.Struct("<4sLQL")  # APPNOTE 4.3.15
END = struct.Struct("<4s4H2LH")  # APPNOTE 4.3.16, end of central directory
LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"
DATA_DESCRIPTOR_SIGNATURE = b"PK\x07\x08"
CENTRAL_HEADER_SIGNATURE = b"PK\x01\x02"
END64_SIGNATURE = b"PK\x06\x06"
END64_LOCATOR_SIGNATURE = b"PK\x06\x07"
END_SIGNATURE = b"PK\x05\x06"

# The local header's zip64 extra field: the sizes are in the data descriptor, so zero here
# (and 0xFFFFFFFF in the header's own fields, which tells a reader to look for zip64 sizes).
LOCAL_ZIP64_EXTRA = struct.pack("<HHQQ", ZIP64_EXTRA_ID, 16, 0, 0)


class ArchiveIntegrityError(RuntimeError):
    """A staged entry read back differs from its manifest: the staging area is damaged."""


class HashingSink:
    """The store's stream as the zip writer sees it: written forward only; the zip's size and
    sha256 come out of the one pass."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self.size += len(data)
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def abandon(self) -> None:
        """Drop all further writes."""
        self._out = io.BytesIO()


def dos_date_time(stamp: tuple[int, ...]) -> tuple[int, int]:
    """(date, time) in MS-DOS format (APPNOTE 4.4.6): local wall-clock time, 2-second steps."""
    year, month, day, hour, minute, second = stamp[:6]
    if not 1980 <= year <= 2107:
        raise ValueError("a zip's time stamps run from 1980 to 2107")
    return (year - 1980) << 9 | month << 5 | day, hour << 11 | minute << 5 | second // 2


class ZipStream:
    """The zip's records written forward into `sink`, one entry at a time: start_entry() writes
    the local header, write() the data (deflated or stored, CRC-32 and sizes counted as it
    goes), finish_entry() the data descriptor, close() the central directory and end records.

    Nothing per entry stays in memory: its central directory record goes to a spool in workdir
    (above BOOKKEEPING_IN_MEMORY) as soon as the entry is finished.
    """

    def __init__(self, sink: HashingSink, workdir: Path) -> None:
        self._sink = sink
        self._central: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115 (see close)
            max_size=BOOKKEEPING_IN_MEMORY, dir=workdir
        )
        self._offset = 0  # where the next record starts
        self._count = 0
        self._closed = False
        # The open entry: its name, flags, method, DOS date and time and local header's offset.
        self._entry: tuple[bytes, int, int, int, int, int] | None = None
        # The open entry's deflater (None when stored): its compress and flush methods.
        self._deflate: tuple[Callable[[bytes], bytes], Callable[[], bytes]] | None = None
        self._crc = self._size = self._compressed = 0

    def start_entry(self, name: str, method: int, stamp: tuple[int, ...]) -> None:
        if self._closed or self._entry is not None:
            raise ValueError("one entry at a time, and none after close()")
        if method not in (ZIP_STORED, ZIP_DEFLATED):
            raise ValueError(f"compression method {method} is not one this writer makes")
        try:
            encoded, flags = name.encode("ascii"), FLAG_DATA_DESCRIPTOR
        except UnicodeEncodeError:
            encoded, flags = name.encode("utf-8"), FLAG_DATA_DESCRIPTOR | FLAG_UTF8
        date, time = dos_date_time(stamp)
        header = LOCAL_HEADER.pack(
            LOCAL_HEADER_SIGNATURE,
            ZIP64_VERSION,  # version needed to extract
            0,
            flags,
            method,
            time,
            date,
            0,  # CRC-32, in the data descriptor
            0xFFFFFFFF,  # compressed size, in the data descriptor
            0xFFFFFFFF,  # uncompressed size, in the data descriptor
            len(encoded),
            len(LOCAL_ZIP64_EXTRA),
        )
        self._entry = (encoded, flags, method, date, time, self._offset)
        # APPNOTE 4.4.5: raw deflate, no zlib header (wbits -15), zlib's default level.
        if method == ZIP_DEFLATED:
            deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
            self._deflate = (deflater.compress, deflater.flush)
        else:
            self._deflate = None
        self._crc = self._size = self._compressed = 0
        self._write(header + encoded + LOCAL_ZIP64_EXTRA)

    def write(self, data: bytes) -> None:
        """Part of the open entry's data."""
        if self._entry is None:
            raise ValueError("no entry is open")
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        if self._deflate is not None:
            data = self._deflate[0](data)
        if data:
            self._compressed += len(data)
            self._write(data)

    def finish_entry(self) -> None:
        if self._entry is None:
            raise ValueError("no entry is open")
        if self._deflate is not None:
            tail = self._deflate[1]()
            self._compressed += len(tail)
            self._write(tail)
            self._deflate = None
        crc, compressed, size = self._crc, self._compressed, self._size
        self._write(DATA_DESCRIPTOR64.pack(DATA_DESCRIPTOR_SIGNATURE, crc, compressed, size))
        self._central.write(central_record(*self._entry, crc, compressed, size))
        self._count += 1
        self._entry = None

    def close(self) -> int:
        """Write the central directory and the end records; returns the number of entries."""
        if self._entry is not None:
            raise ValueError("an entry is still open")
        if self._closed:
            return self._count
        self._closed = True
        start = self._offset
        try:
            self._central.seek(0)
            while chunk := self._central.read(CHUNK):
                self._write(chunk)
        finally:
            self._central.close()
        self._write(end_records(self._count, start, self._offset))
        self._sink.flush()
        return self._count

    def discard(self) -> None:
        """Stop without the central directory (the archive is abandoned); frees the spool."""
        self._closed = True
        self._entry = self._deflate = None
        self._central.close()

    def _write(self, data: bytes) -> None:
        self._sink.write(data)
        self._offset += len(data)


def central_record(
    name: bytes,
    flags: int,
    method: int,
    date: int,
    time: int,
    offset: int,
    crc: int,
    compressed: int,
    size: int,
) -> bytes:
    """An entry's central directory file header (APPNOTE 4.3.12), with a zip64 extended
    information extra field (4.5.3) holding, in the spec's order, the values too large for
    their own 32-bit fields."""
    zip64: list[int] = []
    if size > ZIP64_LIMIT or compressed > ZIP64_LIMIT:
        zip64 += [size, compressed]
        size = compressed = 0xFFFFFFFF
    if offset > ZIP64_LIMIT:
        zip64.append(offset)
        offset = 0xFFFFFFFF
    extra = (
        struct.pack(f"<HH{len(zip64)}Q", ZIP64_EXTRA_ID, 8 * len(zip64), *zip64) if zip64 else b""
    )
    record = CENTRAL_HEADER.pack(
        CENTRAL_HEADER_SIGNATURE,
        ZIP64_VERSION,  # version made by: 4.5 ...
        MADE_BY_UNIX,  # ... on UNIX
        ZIP64_VERSION,  # version needed to extract
        0,
        flags,
        method,
        time,
        date,
        crc,
        compressed,
        size,
        len(name),
        len(extra),
        0,  # comment length
        0,  # disk number start
        0,  # internal attributes
        FILE_ATTRIBUTES,
        offset,
    )
    return record + name + extra


def end_records(count: int, start: int, end: int) -> bytes:
    """The end of central directory record, after zip64's and its locator when the count, the
    directory's offset or its size overflow the end record's fields (APPNOTE 4.3.14-4.3.16)."""
    size = end - start
    records = b""
    if count > ENTRY_COUNT_LIMIT or start > ZIP64_LIMIT or size > ZIP64_LIMIT:
        records += END64.pack(
            END64_SIGNATURE,
            END64.size - 12,  # the record's size after this field
            ZIP64_VERSION,
            ZIP64_VERSION,
            0,  # this disk
            0,  # the disk where the central directory starts
            count,
            count,
            size,
            start,
        )
        records += END64_LOCATOR.pack(END64_LOCATOR_SIGNATURE, 0, end, 1)
        count, size, start = min(count, 0xFFFF), min(size, 0xFFFFFFFF), min(start, 0xFFFFFFFF)
    return records + END.pack(END_SIGNATURE, 0, 0, count, count, size, start, 0)


class EntryWriter:
    """Adds entries to the zip and lists each one's sha256 for SHA256SUMS.

    Nothing per entry stays in memory but 16 bytes of its path's hash (to refuse a repeated path):
    the central directory records and the SHA256SUMS lines go to spools as each entry is written,
    so that 500,000 files cost what 5,000 do. `method_for` chooses each entry's compression from
    its path (ZIP_STORED or ZIP_DEFLATED).
    """

    def __init__(
        self,
        sink: HashingSink,
        stamp: tuple[int, ...],
        workdir: Path,
        *,
        method_for: Callable[[str], int],
    ) -> None:
        dos_date_time(stamp)  # a stamp the zip cannot hold fails here, before any spool or entry
        self._sums: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115 (closed in close)
            max_size=BOOKKEEPING_IN_MEMORY, dir=workdir
        )
        self._zip = ZipStream(sink, workdir)
        self._sink = sink
        self._stamp = stamp
        self._method_for = method_for
        self._path_hashes: set[bytes] = set()
        self.entries = 0
        self.last_sha256 = ""

    def add_stream(
        self, path: str, src: IO[bytes], sha256: str | None = None, *, check: bool = True
    ) -> int:
        """Copy src into a new entry; returns its size. A known `sha256` (the spool's, taken as
        it was filled) is checked against a second hash of what is read back, which guards a
        spool on disk against a local disk fault; with check=False (a spool in memory) it is
        listed as it is, and the bytes are hashed once instead of twice."""
        digest = hashlib.sha256() if check or sha256 is None else None
        size = 0
        write = self._zip.write
        self._start(path)
        while chunk := src.read(CHUNK):
            if digest is not None:
                digest.update(chunk)
            size += len(chunk)
            write(chunk)
        self._zip.finish_entry()
        if digest is not None:
            hexdigest = digest.hexdigest()
            if sha256 is not None and hexdigest != sha256:
                raise ArchiveIntegrityError(f"entry #{self.entries} changed in the local spool")
            sha256 = hexdigest
        self._listed(path, sha256)
        return size

    def add_bytes(self, path: str, data: bytes) -> None:
        self._start(path)
        self._zip.write(data)
        self._zip.finish_entry()
        self._listed(path, hashlib.sha256(data).hexdigest())

    def add_sha256sums(self, path: str) -> None:
        """The last entry: every entry so far, one '<hex>  <path>' line each, in zip order."""
        self._sums.seek(0)
        self._start(path)
        while chunk := self._sums.read(CHUNK):
            self._zip.write(chunk)
        self._zip.finish_entry()
        self.entries += 1

    def close(self) -> int:
        """Write the central directory; returns the number of entries."""
        try:
            self._zip.close()
        finally:
            self._sums.close()
            self._zip.discard()
        return self.entries

    def abandon(self) -> None:
        """Stop: nothing more reaches the store's stream (which discards the object), and the
        spools are freed."""
        self._sink.abandon()
        self._sums.close()
        self._zip.discard()

    def _listed(self, path: str, hexdigest: str) -> None:
        self._sums.write(sha256sums_text([(path, hexdigest)]).encode("utf-8"))
        self.entries += 1
        self.last_sha256 = hexdigest

    def _start(self, path: str) -> None:
        # Our paths only: a duplicate or an escaping path is a bug upstream, not user data.
        if not is_contained(path) or path.endswith("/"):
            raise ValueError(f"entry #{self.entries} has an unsafe archive path")
        path_hash = hashlib.blake2b(path.encode("utf-8"), digest_size=16).digest()
        if path_hash in self._path_hashes:
            raise ValueError(f"entry #{self.entries} repeats an archive path")
        self._path_hashes.add(path_hash)
        self._zip.start_entry(path, self._method_for(path), self._stamp)
