"""Times streaming-zip writers side by side on bench/zip_bench.py's seeded files (issue 19).

Not part of the test suite, and the two libraries are not dependencies: install them apart,
    python -m pip install --target /tmp/zipcands stream-zip==0.0.84 zipstream-ng==1.9.3
and put that folder on PYTHONPATH. Each writer gets the same files in the same order, each file
read whole first (as archive/prefetch.py spools it), photos and PDFs stored and the rest
deflated at zlib's default level, into a forward-only hashing stream written to a file:

    python -m bench.zip_libraries speed ours /tmp/zipbench
    python -m bench.zip_libraries memory stream-zip 200000     # peak RSS for tiny entries
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import time
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

WRITERS = ("ours", "zipfile", "stream-zip", "zipstream-ng")
STAMP = datetime(2026, 1, 2, 9, 30)
STORED = frozenset({"jpg", "pdf"})


class Sink:
    """Forward only, hashed, as the store's upload is."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        self.out.flush()


def _entries_from(root: Path) -> Iterator[tuple[str, bytes]]:
    for entry in json.loads((root / "plan.json").read_text()):
        yield entry["archive_path"], (root / "files" / entry["source_key"]).read_bytes()


def _tiny_entries(count: int) -> Iterator[tuple[str, bytes]]:
    for n in range(count):
        patient = n // 20
        name = f"adjuntos/Hernández López María {patient} ({patient})/foto_{n:07d}.jpg"
        yield name, f"archivo {n}\n".encode()


def _stored(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in STORED


def write_ours(entries: Iterator[tuple[str, bytes]], sink: Sink, workdir: Path) -> None:
    from backup_pipeline.archive.zipwriter import ZIP_DEFLATED, ZIP_STORED, ZipStream

    stream = ZipStream(sink, workdir)  # type: ignore[arg-type] (hashed as HashingSink does)
    stamp = STAMP.timetuple()[:6]
    for name, data in entries:
        stream.start_entry(name, ZIP_STORED if _stored(name) else ZIP_DEFLATED, stamp)
        for start in range(0, len(data), 65536):
            stream.write(data[start : start + 65536])
        stream.finish_entry()
    stream.close()


def write_zipfile(entries: Iterator[tuple[str, bytes]], sink: Sink, workdir: Path) -> None:
    import zipfile

    with zipfile.ZipFile(sink, mode="w", allowZip64=True) as zf:  # type: ignore[arg-type]
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=STAMP.timetuple()[:6])
            info.compress_type = zipfile.ZIP_STORED if _stored(name) else zipfile.ZIP_DEFLATED
            with zf.open(info, mode="w", force_zip64=True) as entry:
                for start in range(0, len(data), 65536):
                    entry.write(data[start : start + 65536])


def write_stream_zip(entries: Iterator[tuple[str, bytes]], sink: Sink, workdir: Path) -> None:
    from stream_zip import NO_COMPRESSION_64, ZIP_64, stream_zip

    def members():
        for name, data in entries:
            chunks = (data[start : start + 65536] for start in range(0, len(data), 65536))
            # Streamed stored entries need their size and CRC before their header: a pass
            # over the spool first (NO_COMPRESSION_64 without them buffers the whole file).
            stored = _stored(name)
            method = NO_COMPRESSION_64(len(data), zlib.crc32(data)) if stored else ZIP_64
            yield name, STAMP, 0o100644, method, chunks

    for chunk in stream_zip(
        members(),
        get_compressobj=lambda: zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15),
        extended_timestamps=False,
    ):
        sink.write(chunk)


def write_zipstream_ng(entries: Iterator[tuple[str, bytes]], sink: Sink, workdir: Path) -> None:
    import zipfile

    from zipstream import ZipStream

    stream = ZipStream(compress_type=zipfile.ZIP_DEFLATED)
    for name, data in entries:
        method = zipfile.ZIP_STORED if _stored(name) else zipfile.ZIP_DEFLATED
        chunks = (data[start : start + 65536] for start in range(0, len(data), 65536))
        stream.add(chunks, name, compress_type=method)
        for chunk in stream.all_files():  # this entry now, before the next file is read
            sink.write(chunk)
    for chunk in stream.finalize():
        sink.write(chunk)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("speed", "memory"))
    parser.add_argument("writer", choices=WRITERS)
    parser.add_argument("source", help="the seeded folder (speed) or a number of tiny entries")
    args = parser.parse_args(argv)
    write = {
        "ours": write_ours,
        "zipfile": write_zipfile,
        "stream-zip": write_stream_zip,
        "zipstream-ng": write_zipstream_ng,
    }[args.writer]
    import tempfile

    # Every writer's process imports what ours does (openpyxl, through archive/verify.py), so
    # that whole-process figures compare the writers and not their imports.
    import backup_pipeline.archive.zipwriter  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="ziplibs-") as tmp:
        entries = (
            _entries_from(Path(args.source))
            if args.what == "speed"
            else _tiny_entries(int(args.source))
        )
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        with open(Path(tmp) / "out.zip", "wb") as out:
            sink = Sink(out)
            write(entries, sink, Path(tmp))
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "writer": args.writer,
                "bytes": sink.size,
                "sha256": sink.digest.hexdigest(),
                "seconds": round(seconds, 3),
                "maxrss_before_kb": before,
                "maxrss_kb": after,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
