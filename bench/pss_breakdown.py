"""Where a process tree's peak PSS goes: per process, per mapping (smem-like, from /proc).

    .venv/bin/python -m bench.pss_breakdown --match=--worker -- \\
        .venv/bin/python -m bench.run --clinic-dir /tmp/my-large --backends file --runs job_in_process
    .venv/bin/python -m bench.pss_breakdown --match=process -- .venv/bin/backup-pipeline process

Starts the command, and every 100 ms sums `/proc/<pid>/smaps_rollup` PSS over the measured tree:
the first process of the command's tree whose command line contains `--match` (the command
itself without one) and all its descendants. Whenever that sum reaches a new peak it reads each
process's `/proc/<pid>/smaps` and keeps, per process, PSS by mapping (a shared library, the
heap, anonymous memory, the Python binary), split into private and shared pages. Prints the
breakdown at the peak (MB; `--top` mappings per process, the rest summed) and writes it as
JSON with `--json`. Linux only; reading smaps of a ~300 MB process takes ~10-30 ms of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

MiB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
_PRESENT = np.uint64(1 << 63)
_PFN_MASK = np.uint64((1 << 55) - 1)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return found


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += _children(current)
    return out


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _rollup_pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _mapping_name(path: str) -> str:
    if not path:
        return "[anonymous]"
    if path.startswith("["):
        return path.split(":")[0] + "]" if ":" in path else path
    if "site-packages/" in path:
        # By distribution folder: pyarrow, numpy.libs, pandas, ...
        return "site-packages/" + path.split("site-packages/", 1)[1].split("/", 1)[0]
    return os.path.basename(path.replace(" (deleted)", ""))


def smaps_breakdown(pid: int) -> dict[str, dict[str, int]]:
    """PSS, private and shared bytes per mapping name of one process."""
    by_name: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    name = "[anonymous]"
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        head = line.split(None, 1)[0] if line else ""
        if "-" in head and not head.endswith(":"):  # a mapping's header line
            parts = line.split(None, 5)
            name = _mapping_name(parts[5].strip() if len(parts) > 5 else "")
        elif head in ("Pss:", "Private_Clean:", "Private_Dirty:", "Shared_Clean:", "Shared_Dirty:"):
            value = int(line.split()[1]) * 1024
            entry = by_name[name]
            if head == "Pss:":
                entry["pss"] += value
            elif head.startswith("Private"):
                entry["private"] += value
            else:
                entry["shared"] += value
    return {k: dict(v) for k, v in by_name.items()}


def resident_frames(pid: int) -> dict[str, np.ndarray]:
    """The physical page frames (PFNs) of every resident page of `pid`, by mapping name, from
    /proc/<pid>/pagemap. Empty without the privilege to read frame numbers (root: Linux zeroes
    them otherwise, so every page would look like one)."""
    frames: dict[str, list[np.ndarray]] = defaultdict(list)
    try:
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        pagemap = open(f"/proc/{pid}/pagemap", "rb")  # noqa: SIM115
    except OSError:
        return {}
    with pagemap:
        for line in maps:
            parts = line.split(None, 5)
            name = _mapping_name(parts[5].strip() if len(parts) > 5 else "")
            if name == "[vsyscall]":
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            try:
                pagemap.seek(start // PAGE * 8)
                entries = np.frombuffer(pagemap.read((end - start) // PAGE * 8), dtype=np.uint64)
            except OSError:
                continue
            present = entries[(entries & _PRESENT) != 0] & _PFN_MASK
            if present.size:
                frames[name].append(present)
    out = {name: np.concatenate(chunks) for name, chunks in frames.items()}
    if out and not any(a.any() for a in out.values()):
        return {}  # frame numbers hidden (not root)
    return out


def tree_unique(pids: list[int]) -> tuple[int, dict[str, int], dict[int, int]]:
    """Bytes of the distinct physical pages resident in the tree `pids` (what its summed PSS
    would be if no process outside it shared any of its pages), the same by mapping name, and
    per process the bytes of pages no other process of the tree has."""
    per_process = {pid: resident_frames(pid) for pid in pids}
    everything = [a for frames in per_process.values() for a in frames.values()]
    if not everything:
        return 0, {}, {}
    all_frames = np.concatenate(everything)
    unique, counts = np.unique(all_frames, return_counts=True)
    by_name: dict[str, list[np.ndarray]] = defaultdict(list)
    for frames in per_process.values():
        for name, a in frames.items():
            by_name[name].append(a)
    names = {name: np.unique(np.concatenate(a)).size * PAGE for name, a in by_name.items()}
    # Pages of one process only: their frame appears once in the tree (a page mapped twice
    # by the same process counts as shared here, rare).
    once = unique[counts == 1]
    alone = {
        pid: int(np.isin(np.concatenate(list(frames.values())), once).sum()) * PAGE
        for pid, frames in per_process.items()
        if frames
    }
    return int(unique.size) * PAGE, names, alone


def _role(pid: int, root: int) -> str:
    if pid == root:
        return f"{pid} run"
    return f"{pid} {' '.join(_cmdline(pid).split()[:3])[:60]}"


def measure(
    command: list[str], match: str | None, interval: float, unique_every: float
) -> dict[str, Any]:
    process = subprocess.Popen(command)
    root: int | None = None
    peak = 0
    peak_at = 0.0
    breakdown: dict[str, dict[str, dict[str, int]]] = {}
    unique_peak = 0
    unique_at = 0.0
    unique_names: dict[str, int] = {}
    unique_alone: dict[str, int] = {}
    next_unique = 0.0
    started = time.monotonic()
    while process.poll() is None:
        if root is None or not os.path.exists(f"/proc/{root}"):
            root = None
            for pid in _tree(process.pid):
                if match is None or match in _cmdline(pid):
                    root = pid
                    break
        if root is not None:
            pids = _tree(root)
            total = sum(_rollup_pss(pid) for pid in pids)
            if total > peak:
                peak, peak_at = total, time.monotonic() - started
                breakdown = {_role(pid, root): smaps_breakdown(pid) for pid in pids}
            now = time.monotonic()
            if unique_every and now >= next_unique:
                next_unique = now + unique_every
                total, names, alone = tree_unique(pids)
                if total > unique_peak:
                    unique_peak, unique_at = total, now - started
                    unique_names = names
                    unique_alone = {_role(pid, root): b for pid, b in alone.items()}
        time.sleep(interval)
    return {
        "command": command,
        "exit_code": process.returncode,
        "peak_pss_mb": round(peak / MiB, 1),
        "peak_at_s": round(peak_at, 1),
        "processes": breakdown,
        "peak_unique_mb": round(unique_peak / MiB, 1),
        "unique_at_s": round(unique_at, 1),
        "unique_by_mapping": unique_names,
        "unique_alone": unique_alone,
    }


def report(result: dict[str, Any], top: int) -> None:
    print(f"peak PSS {result['peak_pss_mb']} MB at {result['peak_at_s']} s")
    if result.get("peak_unique_mb"):
        print(
            f"peak of the tree's distinct resident pages {result['peak_unique_mb']} MB at "
            f"{result['unique_at_s']} s (its PSS if nothing outside shared a page); by mapping:"
        )
        ranked = sorted(result["unique_by_mapping"].items(), key=lambda kv: -kv[1])
        for name, size in ranked[:top]:
            print(f"      {size / MiB:7.1f}  {name}")
        print(f"      {sum(v for _, v in ranked[top:]) / MiB:7.1f}  in {len(ranked[top:])} others")
        for role, size in result["unique_alone"].items():
            print(f"    only in {role}: {size / MiB:.1f}")
    for role, mappings in result["processes"].items():
        pss = sum(m.get("pss", 0) for m in mappings.values())
        private = sum(m.get("private", 0) for m in mappings.values())
        shared = sum(m.get("shared", 0) for m in mappings.values())
        print(
            f"  {role}: PSS {pss / MiB:.1f}  private {private / MiB:.1f}  "
            f"shared (RSS) {shared / MiB:.1f}"
        )
        ranked = sorted(mappings.items(), key=lambda kv: -kv[1].get("pss", 0))
        for name, m in ranked[:top]:
            print(
                f"      {m.get('pss', 0) / MiB:7.1f} pss {m.get('private', 0) / MiB:7.1f} priv "
                f"{m.get('shared', 0) / MiB:7.1f} shr  {name}"
            )
        rest = ranked[top:]
        if rest:
            print(
                f"      {sum(m.get('pss', 0) for _, m in rest) / MiB:7.1f} pss in "
                f"{len(rest)} other mappings"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--match",
        help="measure the tree of the first process whose command "
        "line contains this (default: the command's own)",
    )
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument(
        "--unique-every",
        type=float,
        default=0.5,
        help="seconds between counts of the tree's distinct pages (root only; 0: never)",
    )
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", type=Path)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command to run is needed")
    result = measure(command, args.match, args.interval, args.unique_every)
    report(result, args.top)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    sys.exit(result["exit_code"] or 0)


if __name__ == "__main__":
    main()
