"""Which processes are still running, read from /proc (Linux): a zombie waiting to be reaped
has stopped running, whoever its parent is now."""

from __future__ import annotations

from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def running(pids: list[int]) -> list[int]:
    """The processes among `pids` still running."""
    return [pid for pid in pids if (fields := _stat(pid)) is not None and fields[0] != "Z"]


def running_in_group(pgid: int) -> list[int]:
    """The processes of the process group `pgid` still running."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [
        pid
        for pid in pids
        if (fields := _stat(pid)) is not None and fields[0] != "Z" and int(fields[2]) == pgid
    ]
