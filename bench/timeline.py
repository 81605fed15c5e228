"""A timeline of one backup run: when each step, workbook and zip phase ran, and which thread of
which process used the cores, every 100 ms.

    .venv/bin/python -m bench.timeline --profile large
    BACKUP_EXPORT_WORKERS=0 .venv/bin/python -m bench.timeline --profile medium --patients 5000
    .venv/bin/python -m bench.timeline --clinic-dir /tmp/my-large --json timeline.json

It runs the bench's `job_in_process` worker (bench/run.py) once on a seeded clinic, with
BENCH_TIMELINE pointing at an events file: the worker then notes (bench.timeline.install_hooks)
each workbook's start and end in its worker process, each zip part's start and end, when the zip
starts on the workbooks, and every Dagster event of the run. Beside it this process reads
/proc/<pid>/task/<tid>/stat of the run and of every process it forked every 100 ms, so each
thread's CPU time is known per interval. Not part of the measured bench: the hooks and the
sampling cost a little CPU of their own.

The report: the events in order (seconds from the op's start), then per interval the cores used
by the run's main thread, its zip thread, its other threads, and each worker process, and the
idle share of the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

TIMELINE_ENV = "BENCH_TIMELINE"
SAMPLE_SECONDS = 0.1
TICKS = os.sysconf("SC_CLK_TCK")


# --- In the measured run (bench/run.py worker_job calls install_hooks) ------------------------


def _note(label: str, **extra: Any) -> None:
    path = os.environ.get(TIMELINE_ENV)
    if not path:
        return
    record = {
        "t": time.time(),
        "pid": os.getpid(),
        "tid": threading.get_native_id(),
        "thread_cpu": time.thread_time(),
        "label": label,
        **extra,
    }
    # One write per line with O_APPEND: the run's threads and its forked workers share the file.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def _noted(label_of, function):
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        label = label_of(*args, **kwargs)
        _note(f"{label} start")
        try:
            return function(*args, **kwargs)
        finally:
            _note(f"{label} end")

    return wrapper


def install_hooks() -> None:
    """Note the workbooks and the zip's phases into the events file (BENCH_TIMELINE).

    The wrapped names are this project's own; the workers are forked after this, so they
    inherit the wrappers."""
    from backup_pipeline.archive import zipper
    from backup_pipeline.datasets import parallel
    from backup_pipeline.services import archive, export

    parallel._timed_export = _noted(
        lambda _export_one, dataset: f"workbook {dataset.name}",
        parallel._timed_export,
    )
    archive.assemble_archive = _noted(
        lambda **kw: f"zip part {kw['final_key'].rsplit('/', 1)[-1]}", archive.assemble_archive
    )
    # The zip thread's first call is the archive's; the staged workbooks' copies into the zip.
    export.build_archive = _noted(lambda **_kw: "zip thread", export.build_archive)
    # The file plan, made in the zip thread (it was a step of its own before).
    if hasattr(export, "stage_plan"):
        export.stage_plan = _noted(lambda *_a, **_kw: "plan", export.stage_plan)
    # The zip thread waiting for the workbooks once its files are in (each in declared order).
    in_order = getattr(parallel.WorkbookExports, "results_in_order", None)
    if in_order is not None:

        def noted_in_order(self: Any) -> Any:
            _note("zip waits for workbooks start")
            for result in in_order(self):
                _note(f"zip has workbook {result.dataset}")
                yield result
            _note("zip waits for workbooks end")

        parallel.WorkbookExports.results_in_order = noted_in_order
    parallel.WorkbookExports.all_results = _noted(
        lambda _self: "zip waits for workbooks", parallel.WorkbookExports.all_results
    )
    zipper._add_staged = _noted(
        lambda _w, _a, entry: f"staged {entry.archive_path.rsplit('/', 1)[-1]}",
        zipper._add_staged,
    )


def dagster_events(instance: Any, run_id: str) -> list[dict[str, Any]]:
    """Every Dagster event of the run: its time, type, step and output."""
    events = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        output = ""
        data = event.event_specific_data
        handle = getattr(data, "step_output_handle", None)
        if handle is not None:
            output = handle.output_name
        events.append(
            {
                "t": record.timestamp,
                "label": f"dagster {event.event_type_value} {event.step_key or ''} {output}".strip(),
            }
        )
    return events


# --- The sampler, outside the measured tree -----------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split():
                    found.append(int(child))
                    found.extend(_children(int(child)))
    return found


def _machine_busy_ticks() -> int:
    """Every CPU's busy ticks since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def _thread_ticks(pid: int) -> dict[int, int]:
    ticks = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                ticks[int(task)] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def _thread_wanted_ns(pid: int) -> dict[int, int]:
    """Each thread's nanoseconds on a CPU plus waiting in a run queue for one
    (/proc/<pid>/task/<tid>/schedstat): the time it wanted a core, whether or not it got one."""
    wanted = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                on_cpu, waiting = Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[:2]
                wanted[int(task)] = int(on_cpu) + int(waiting)
    return wanted


class ThreadSampler(threading.Thread):
    """Each thread's CPU ticks of a process and its descendants, and the time each wanted a
    core (schedstat), every SAMPLE_SECONDS."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, dict[tuple[int, int], int]]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            now = time.time()
            sample = {}
            for pid in [self.pid, *_children(self.pid)]:
                for tid, ticks in _thread_ticks(pid).items():
                    sample[(pid, tid)] = ticks
                for tid, ns in _thread_wanted_ns(pid).items():
                    sample[("wanted", tid)] = ns
            sample[(0, 0)] = _machine_busy_ticks()
            self.samples.append((now, sample))
            self._stop_event.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


# --- The report ---------------------------------------------------------------------------------


def build(
    run_pid: int, samples: list[tuple[float, dict]], events: list[dict[str, Any]]
) -> dict[str, Any]:
    """Intervals with the cores each role used, and the events, on one clock (seconds from the
    op assemble_backup's start, or from the first event)."""
    zip_tids = {e["tid"] for e in events if e.get("label") in ("zip thread start", "plan start")}
    main_tids = {e["tid"] for e in events if e.get("pid") == run_pid and "zip" not in e["label"]}
    main_tids -= zip_tids
    worker_pids = sorted({e["pid"] for e in events if e.get("label", "").startswith("workbook")})
    worker_pids = [p for p in worker_pids if p != run_pid]
    starts = [e["t"] for e in events if e["label"] == "dagster STEP_START assemble_backup"]
    origin = starts[0] if starts else min(e["t"] for e in events)

    def role(pid: int | str, tid: int) -> str:
        if pid == "wanted":
            return "wanted"
        if pid == 0:
            return "machine"
        if pid == run_pid:
            if tid in zip_tids:
                return "run zip"
            return "run main" if tid == run_pid or tid in main_tids else "run other"
        if pid in worker_pids:
            return f"worker {worker_pids.index(pid) + 1}"
        return "other process"

    roles = ["run main", "run zip", "run other"] + [
        f"worker {i + 1}" for i in range(len(worker_pids))
    ]
    intervals = []
    totals: dict[str, float] = defaultdict(float)
    # Each thread's last value read: a thread whose /proc file could not be read in one sample
    # (a race with its exit or creation) is not counted again from its start in the next one.
    last: dict[Any, int] = dict(samples[0][1]) if samples else {}
    for (t0, _before), (t1, after) in itertools.pairwise(samples):
        used: dict[str, float] = defaultdict(float)
        for key, ticks in after.items():
            name = role(*key)
            # A new thread: all of it. "wanted": the run's threads' and workers' time on a core
            # or waiting for one, which the rest of the machine does not change.
            scale = 1e9 if name == "wanted" else TICKS
            used[name] += max(ticks - last.get(key, 0), 0) / scale
            last[key] = ticks
        span = t1 - t0
        for name, seconds in used.items():
            totals[name] += seconds
        intervals.append(
            {
                "t": round(t0 - origin, 2),
                "span": round(span, 3),
                **{k: round(v / span, 2) for k, v in used.items()},
            }
        )
    for event in events:
        event["at"] = round(event["t"] - origin, 3)
    return {
        "origin": origin,
        "roles": roles,
        "events": sorted(events, key=lambda e: e["t"]),
        "intervals": intervals,
        "cpu_s": {k: round(v, 2) for k, v in totals.items() if k not in ("machine", "wanted")},
        "machine_busy_s": round(totals["machine"], 2),
    }


def print_report(timeline: dict[str, Any], bin_seconds: float) -> None:
    print("events (s from assemble_backup's start; thread CPU s where the run noted it):")
    for event in timeline["events"]:
        label = event["label"]
        if label.startswith("dagster") and any(
            skip in label for skip in ("LOGS_CAPTURED", "HANDLED_OUTPUT", "ASSET_")
        ):
            continue
        who = f"pid {event['pid']}" if "pid" in event else ""
        cpu = f" cpu {event['thread_cpu']:.2f}" if "thread_cpu" in event else ""
        print(f"  {event['at']:8.2f}  {label:<55} {who}{cpu}")
    roles = timeline["roles"]
    print(
        f"\ncores used per {bin_seconds:g} s (2 = both cores busy; others: the rest of the "
        "machine, idle: neither; wanted: cores the run's threads and workers were on or "
        "waiting for, short: cores they left unwanted, whatever the rest of the machine did):"
    )
    print(
        f"  {'t':>6}  "
        + "  ".join(f"{r:>9}" for r in roles)
        + "   total  others   idle  wanted  short"
    )
    bins: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    spans: dict[int, float] = defaultdict(float)
    for interval in timeline["intervals"]:
        index = int(interval["t"] // bin_seconds)
        spans[index] += interval["span"]
        for role in [*roles, "other process", "machine", "wanted"]:
            bins[index][role] += interval.get(role, 0.0) * interval["span"]
    cores = len(os.sched_getaffinity(0))
    short_total = 0.0
    for index in sorted(bins):
        span = spans[index]
        values = [bins[index][r] / span for r in roles]
        total = sum(values) + bins[index]["other process"] / span
        others = max(bins[index]["machine"] / span - total, 0)
        wanted = bins[index]["wanted"] / span
        # Per row, not per 0.1 s sample: the sampler reads the threads one after another, so a
        # sample's share jitters around the true one and clipping each would add up the jitter.
        short_total += max(cores - wanted, 0) * span
        print(
            f"  {index * bin_seconds:6.1f}  "
            + "  ".join(f"{v:9.2f}" for v in values)
            + f"   {total:5.2f}  {others:6.2f}  {max(cores - total - others, 0):5.2f}"
            + f"  {wanted:6.2f}  {max(cores - wanted, 0):5.2f}"
        )
    print(f"\nCPU s by role: {timeline['cpu_s']}")
    print(f"core-seconds the run left unwanted (short): {short_total:.2f} of {cores} cores")


def main() -> None:
    from bench import run as bench

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="large", choices=["small", "medium", "large"])
    parser.add_argument("--patients", type=int)
    parser.add_argument("--clinic-dir", help="a seeded clinic's folder (default: the profile's)")
    parser.add_argument("--bin", type=float, default=1.0, help="seconds per row of the report")
    parser.add_argument("--json", help="also write the whole timeline here")
    args = parser.parse_args()
    folder = (
        Path(args.clinic_dir) if args.clinic_dir else bench.clinic_dir(args.profile, args.patients)
    )
    meta = json.loads((folder / "seed.json").read_text())
    with tempfile.TemporaryDirectory(prefix="bench-timeline-") as tmp:
        events_path = Path(tmp) / "events.jsonl"
        result_path = Path(tmp) / "result.json"
        archives = Path(tmp) / "archives"  # this run's own: the clinic's folder may be shared
        env = {
            **os.environ,
            "PYTHONPATH": str(bench.ROOT),
            "BACKUP_PLATFORM_DB_URL": f"sqlite:///{folder / 'platform.db'}",
            "BACKUP_MAIL_URL": (Path(tmp) / "outbox").as_uri(),
            "GOOGLE_CLOUD_PROJECT": "bench",
            "BENCH_BACKEND": "file",
            "BACKUP_FILES_URL": (folder / "files").as_uri(),
            "BACKUP_ARCHIVES_URL": archives.as_uri(),
            TIMELINE_ENV: str(events_path),
        }
        bench.warm_page_cache(folder)
        command = [
            sys.executable, "-m", "bench.run", "--worker", "job_in_process",
            "--clinic", str(folder), "--result", str(result_path),
            "--subscription", str(meta["subscription_id"]), "--user", str(meta["user_id"]),
        ]  # fmt: skip
        process = subprocess.Popen(command, env=env, cwd=bench.ROOT)
        sampler = ThreadSampler(process.pid)
        sampler.start()
        try:
            process.wait()
        finally:
            sampler.stop()
        report = json.loads(result_path.read_text())
        events = [json.loads(line) for line in events_path.read_text().splitlines()]
        shutil.rmtree(archives, ignore_errors=True)
    events.extend(report.pop("timeline_events", []))
    timeline = build(process.pid, sampler.samples, events)
    timeline["report"] = {
        k: report.get(k) for k in ("work_s", "work_cpu_s", "steps_s", "workbooks")
    }
    print_report(timeline, args.bin)
    print(f"work_s {report.get('work_s')}  work_cpu_s {report.get('work_cpu_s')}")
    print(f"steps_s {report.get('steps_s')}")
    print(
        "workbooks s: "
        + ", ".join(f"{k} {v['seconds']}" for k, v in report.get("workbooks", {}).items())
    )
    if args.json:
        Path(args.json).write_text(json.dumps(timeline, indent=1))


if __name__ == "__main__":
    main()
