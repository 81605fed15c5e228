"""What reading files from threads costs in CPU, with none of the product's code (issue 23).

Not part of the test suite. The zip's read-ahead (backup_pipeline/archive/prefetch.py) reads
each planned file by a thread of its own, so that dozens of remote requests wait at once. This
script measures the floor under that design: N threads, each waiting `--latency-ms` (as
bench/jobdef.py's LatencyStore does before every request), reading one file whole and hashing
it, the results taken in order by the main thread, over every file of a seeded clinic. Nothing
else runs: no zip, no spool, no store. Each mode runs in a process of its own.

    .venv/bin/python -m bench.read_threads bench/out/large/files
    .venv/bin/python -m bench.read_threads bench/out/large/files --modes serial,pool:128:40

A mode is `serial` (one file after the other in the main thread, no waiting) or
`pool:THREADS:LATENCY_MS[:os]`, where `os` reads with os.open/os.read (one read of the whole
file) instead of open().read() in 64 KiB pieces, as FolderStore.read_into does.
The report: per mode, wall seconds, CPU seconds (user + system), voluntary and involuntary
context switches, and the CPU microseconds per file over serial's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT_MODES = "serial,pool:2:0,pool:128:0,pool:128:40,pool:128:40:os"
COPY_CHUNK = 64 * 1024  # backup_pipeline.storage.base's


def _read_python(path: str) -> bytes:
    with open(path, "rb") as src:
        return b"".join(iter(lambda: src.read(COPY_CHUNK), b""))


def _read_os(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        return os.read(fd, os.fstat(fd).st_size + 1)
    finally:
        os.close(fd)


def run_mode(root: Path, mode: str) -> dict[str, object]:
    paths = sorted(str(p) for p in root.rglob("*") if p.is_file())
    parts = mode.split(":")
    read = _read_os if parts[-1] == "os" else _read_python
    wait = float(parts[2]) / 1000 if len(parts) > 2 else 0.0

    def fetch(path: str) -> str:
        if wait:
            time.sleep(wait)
        return hashlib.sha256(read(path)).hexdigest()

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if parts[0] == "serial":
        for path in paths:
            fetch(path)
    else:
        threads = int(parts[1])
        window: deque = deque()
        with ThreadPoolExecutor(threads) as pool:
            for path in paths:
                if len(window) >= threads:
                    window.popleft().result()
                window.append(pool.submit(fetch, path))
            while window:
                window.popleft().result()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {
        "mode": mode,
        "files": len(paths),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "voluntary_switches": after.ru_nvcsw - before.ru_nvcsw,
        "involuntary_switches": after.ru_nivcsw - before.ru_nivcsw,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a seeded clinic's files folder")
    parser.add_argument("--modes", default=DEFAULT_MODES)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_mode(args.root, args.one)))
        return
    results = []
    for mode in args.modes.split(","):
        done = subprocess.run(
            [sys.executable, "-m", "bench.read_threads", str(args.root), "--one", mode],
            check=True,
            capture_output=True,
            text=True,
        )
        results.append(json.loads(done.stdout))
    serial = next((r for r in results if r["mode"] == "serial"), None)
    for result in results:
        if serial is not None:
            extra = (result["cpu_s"] - serial["cpu_s"]) / result["files"] * 1e6
            result["extra_cpu_us_per_file"] = round(extra)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
