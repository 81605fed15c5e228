"""Startup of a backup run: `backup-pipeline process` in its own process, and the run worker a
daemon launches (`dagster dev`), from launch to the job's first step, on a seeded bench clinic.

    .venv/bin/python -m bench.startup --clinic bench/out/medium-5000p --modes import,process,daemon

Each run starts from scratch: a copy of the clinic's platform.db (the seeded one is never
written), its files folder read in place, a fresh DAGSTER_HOME, archives and outbox in a
temporary folder, and one pending request filed before the clock starts. Times come from the
run's events in that instance (Dagster's own timestamps), against the wall clock read just
before the measured command was started. `--code-roots A,B` measures other checkouts of the
package (e.g. `git archive` of an older commit), so that before and after run in one sequence.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.run import TreeSampler, warm_page_cache

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REQUEST_SENSOR = "backup_request_sensor"


def _cpu_s(after: resource.struct_rusage, before: resource.struct_rusage) -> float:
    return round(
        after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
        2,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _copy_database(source: Path, target: Path) -> None:
    """A consistent copy (SQLite's backup API: other benches file requests in the seeded
    database meanwhile) in which no earlier request counts against the quota or is in progress:
    each measured run then launches exactly one backup."""
    with (
        contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)
        dst.execute("UPDATE backup_requests SET status = 'failed'")
        dst.commit()


@contextlib.contextmanager
def fresh_clinic(
    clinic: Path, code_root: Path, request: bool = True
) -> Iterator[tuple[Path, dict[str, str]]]:
    """A temporary folder with a copy of the clinic's database, a fresh DAGSTER_HOME, and the
    environment of the measured commands; one pending request of the seeded subscription."""
    meta = json.loads((clinic / "seed.json").read_text())
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        folder = Path(tmp)
        _copy_database(clinic / "platform.db", folder / "platform.db")
        env = {
            **os.environ,
            "PYTHONPATH": str(code_root),
            "DAGSTER_HOME": str(folder / "dagster_home"),
            "BACKUP_VAR_DIR": str(folder),
            "BACKUP_PLATFORM_DB_URL": f"sqlite:///{folder / 'platform.db'}",
            "BACKUP_FILES_URL": (clinic / "files").resolve().as_uri(),
            "BACKUP_ARCHIVES_URL": (folder / "archives").as_uri(),
            "BACKUP_MAIL_URL": (folder / "outbox").as_uri(),
            "GOOGLE_CLOUD_PROJECT": "bench",
        }
        (folder / "dagster_home").mkdir()
        cli = str(BIN / "backup-pipeline")
        ids = ["--subscription", str(meta["subscription_id"]), "--user", str(meta["user_id"])]
        if request:
            subprocess.run(
                [cli, "request", *ids],
                env=env,
                cwd=code_root,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        yield folder, env


def run_events(home: Path) -> list[dict[str, Any]]:
    """Per run of the instance in `home`: its events' timestamps by type (first of each)."""
    import dagster as dg

    wanted = {
        "RUN_ENQUEUED",
        "RUN_DEQUEUED",
        "RUN_STARTING",
        "RUN_START",
        "STEP_START",
        "RUN_SUCCESS",
        "RUN_FAILURE",
    }
    out = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs():
            first: dict[str, float] = {}
            last_step_end = None
            for record in instance.all_logs(run.run_id):
                event = record.dagster_event
                if event is None:
                    continue
                kind = event.event_type.name  # the value of some is their old PIPELINE_ name
                if kind in wanted and kind not in first:
                    first[kind] = record.timestamp
                if kind in ("STEP_SUCCESS", "STEP_FAILURE"):
                    last_step_end = record.timestamp
            steps = {
                s.step_key: round(s.end_time - s.start_time, 2)
                for s in instance.get_run_step_stats(run.run_id)
                if s.start_time and s.end_time
            }
            out.append(
                {
                    "job": run.job_name,
                    "status": run.status.value,
                    "first": first,
                    "last_step_end": last_step_end,
                    "steps_s": steps,
                }
            )
    return [r for r in out if r["job"] == "backup_job"]


def _since(events: dict[str, float], start: float, kind: str) -> float | None:
    return round(events[kind] - start, 2) if kind in events else None


def _gaps(run: dict[str, Any], launched: float) -> dict[str, Any]:
    first = run["first"]
    end = first.get("RUN_SUCCESS") or first.get("RUN_FAILURE")
    step = first.get("STEP_START")
    return {
        "status": run["status"],
        **{
            f"to_{kind.lower()}_s": _since(first, launched, kind)
            for kind in ("RUN_ENQUEUED", "RUN_STARTING", "RUN_START", "STEP_START")
            if kind in first
        },
        # The run worker's own start: the launcher spawned it at RUN_STARTING, it reports
        # RUN_START once it has loaded the code location and built the job.
        "starting_to_first_step_s": round(step - first["RUN_STARTING"], 2)
        if step and "RUN_STARTING" in first
        else None,
        "first_step_to_end_s": round(end - step, 2) if end and step else None,
        "last_step_end_to_end_s": round(end - run["last_step_end"], 2)
        if end and run["last_step_end"]
        else None,
        "steps_s": run["steps_s"],
        "steps_sum_s": round(sum(run["steps_s"].values()), 2),
    }


def measure_import(code_root: Path) -> dict[str, Any]:
    """`import backup_pipeline.definitions` in a fresh interpreter: wall and CPU seconds."""
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # cwd too: `python -c` puts the current folder before PYTHONPATH on sys.path.
    subprocess.run(
        [sys.executable, "-c", "import backup_pipeline.definitions"],
        env=env,
        cwd=code_root,
        check=True,
    )
    wall = time.perf_counter() - started
    return {
        "wall_s": round(wall, 2),
        "cpu_s": _cpu_s(resource.getrusage(resource.RUSAGE_CHILDREN), before),
    }


def measure_process(clinic: Path, code_root: Path, prepared: bool = False) -> dict[str, Any]:
    """`backup-pipeline process` without a daemon: the run executes in the CLI's process.
    `prepared`: the instance is made before the clock starts (`prepare-instance`), as for every
    `process` after the first; else the command creates Dagster's SQLite storage itself."""
    with fresh_clinic(clinic, code_root) as (folder, env):
        if prepared:
            subprocess.run(
                [str(BIN / "backup-pipeline"), "prepare-instance"],
                env=env,
                cwd=code_root,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        warm_page_cache(clinic)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        launched = time.time()
        process = subprocess.Popen(
            [str(BIN / "backup-pipeline"), "process"],
            env=env,
            cwd=code_root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # The process tree's memory as bench.run samples it (the forked workers included).
        sampler = TreeSampler(process.pid)
        sampler.start()
        try:
            code = process.wait()
        finally:
            sampler.stop()
        wall = time.time() - launched
        cpu = _cpu_s(resource.getrusage(resource.RUSAGE_CHILDREN), before)
        if code:
            raise subprocess.CalledProcessError(code, process.args)
        runs = run_events(folder / "dagster_home")
    return {
        "process_wall_s": round(wall, 2),
        "cpu_s": cpu,
        "peak_pss_mb": round(sampler.peak_pss / 2**20, 1),
        **_gaps(runs[0], launched),
    }


def measure_bench_job(clinic: Path, code_root: Path) -> dict[str, Any]:
    """The bench's own `job_in_process` (bench/run.py: `execute_in_process` on
    `instance_for_test`, its work_s) on the same copy of the clinic: beside `process`, what the
    real instance and the CLI add after the first step."""
    meta = json.loads((clinic / "seed.json").read_text())
    with fresh_clinic(clinic, code_root, request=False) as (folder, env):
        warm_page_cache(clinic)
        result = folder / "result.json"
        subprocess.run(
            [
                sys.executable,
                *("-m", "bench.run", "--worker", "job_in_process", "--clinic", str(clinic)),
                *("--result", str(result)),
                *("--subscription", str(meta["subscription_id"]), "--user", str(meta["user_id"])),
            ],
            env={**env, "PYTHONPATH": f"{code_root}:{ROOT}", "BENCH_BACKEND": "file"},
            cwd=code_root,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        data = json.loads(result.read_text())
    return {
        "work_s": data["work_s"],
        "steps_s": data["steps_s"],
        "steps_sum_s": round(sum(data["steps_s"].values()), 2),
    }


def measure_idle(clinic: Path, code_root: Path) -> dict[str, Any]:
    """`backup-pipeline process` on a prepared instance with no pending request: everything the
    command does before it launches a run (imports, settings, the instance, our migrations'
    check, the job's definitions, the review), whose CPU seconds a loaded machine inflates
    less than its wall time."""
    with fresh_clinic(clinic, code_root, request=False) as (_folder, env):
        command = [str(BIN / "backup-pipeline")]
        subprocess.run(
            [*command, "prepare-instance"], env=env, cwd=code_root, check=True, capture_output=True
        )
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(
            [*command, "process"], env=env, cwd=code_root, check=True, capture_output=True
        )
        wall = time.perf_counter() - started
        cpu = _cpu_s(resource.getrusage(resource.RUSAGE_CHILDREN), before)
    return {"wall_s": round(wall, 2), "cpu_s": cpu}


def _wait_for_webserver(url: str, deadline: float) -> None:
    while time.time() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/server_info", timeout=2) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"no webserver at {url}")


def measure_daemon(clinic: Path, code_root: Path) -> dict[str, Any]:
    """`dagster dev` serves the instance (webserver, daemon, code server); `process` submits the
    request's run through the webserver; the daemon's run queue and the DefaultRunLauncher start
    the run worker (`dagster api execute_run`), which loads the code location and builds the
    job before its first step."""
    with fresh_clinic(clinic, code_root) as (folder, env):
        cli = str(BIN / "backup-pipeline")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run([cli, "prepare-instance"], env=env, cwd=code_root, check=True, **quiet)
        workspace = ["-w", str(code_root / "workspace.yaml")]
        # The request sensor would launch the request itself on its first tick: stopped, so that
        # the launch is the CLI's and its time known.
        subprocess.run(
            [str(BIN / "dagster"), "sensor", "stop", REQUEST_SENSOR, *workspace],
            env=env,
            cwd=code_root,
            check=True,
            **quiet,
        )
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = (folder / "dagster-dev.log").open("w")
        dev = subprocess.Popen(
            [str(BIN / "dagster"), "dev", *workspace, "-p", str(port)],
            env=env,
            cwd=code_root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_for_webserver(url, time.time() + 120)
            # The CLI refuses to submit until the daemon's run queue has a heartbeat.
            for _ in range(120):
                check = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        "import dagster as dg; from backup_pipeline import dagster_compat; "
                        "raise SystemExit(0 if dagster_compat.daemon_serves_run_queue("
                        "dg.DagsterInstance.get()) else 1)",
                    ],
                    env=env,
                    cwd=code_root,
                )
                if check.returncode == 0:
                    break
                time.sleep(1)
            launched = time.time()
            subprocess.run(
                [cli, "process", "--dagster-url", url],
                env=env,
                cwd=code_root,
                check=True,
                **quiet,
            )
            wall = time.time() - launched
            runs = run_events(folder / "dagster_home")
        finally:
            os.killpg(dev.pid, 15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                dev.wait(30)
            if dev.poll() is None:
                os.killpg(dev.pid, 9)
                dev.wait()
            log.close()
    return {"process_wall_s": round(wall, 2), **_gaps(runs[0], launched)}


def _medians(records: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in records[0].items() if isinstance(v, int | float)]
    out = {}
    for key in keys:
        values = [r[key] for r in records if isinstance(r.get(key), int | float)]
        out[key] = {"median": round(statistics.median(values), 2), "all": values}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clinic", type=Path, default=ROOT / "bench" / "out" / "medium-5000p")
    # import: `import backup_pipeline.definitions`; process: `backup-pipeline process` on a fresh
    # DAGSTER_HOME; process_prepared: on one made beforehand; process_idle: on one made
    # beforehand, with no request (the command's own start); daemon: under `dagster dev`;
    # bench_job: bench/run.py's job_in_process on the same clinic (instance_for_test).
    parser.add_argument("--modes", default="import,process,process_prepared,daemon")
    parser.add_argument("--repeat", type=int, default=3)
    # Several checkouts (comma-separated) are measured in turn, run by run, so that a change of
    # the machine's load falls on all of them alike.
    parser.add_argument("--code-roots", default=str(ROOT))
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    roots = [Path(root).resolve() for root in args.code_roots.split(",")]
    record: dict[str, Any] = {
        "label": args.label,
        "code_roots": [str(root) for root in roots],
        "clinic": args.clinic.name,
        "load_average": os.getloadavg(),
    }
    for mode in args.modes.split(","):
        runs: dict[str, list[dict[str, Any]]] = {str(root): [] for root in roots}
        for _ in range(args.repeat):
            for root in roots:
                if mode == "import":
                    result = measure_import(root)
                elif mode == "bench_job":
                    result = measure_bench_job(args.clinic.resolve(), root)
                elif mode == "process_idle":
                    result = measure_idle(args.clinic.resolve(), root)
                elif mode in ("process", "process_prepared"):
                    result = measure_process(
                        args.clinic.resolve(), root, prepared=mode == "process_prepared"
                    )
                else:
                    result = measure_daemon(args.clinic.resolve(), root)
                runs[str(root)].append(result)
                print(mode, root, json.dumps(result), flush=True)
        record[mode] = {root: {"runs": r, "medians": _medians(r)} for root, r in runs.items()}
        for root, r in record[mode].items():
            print(mode, root, "medians", json.dumps(r["medians"]), flush=True)
    record["load_average_after"] = os.getloadavg()
    out = ROOT / "bench" / "out" / "startup.jsonl"
    with out.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
