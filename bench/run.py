"""Benchmark of the backup job against the naive pipeline and a raw copy, on one synthetic clinic.

    .venv/bin/python -m bench.run --profile medium --backends file,gcs
    .venv/bin/python -m bench.run --sensor            # the request sensor with 10,000 pending
    .venv/bin/python -m bench.run --report            # the Markdown tables of bench/out/results.jsonl

Every measurement runs in its own subprocess (a "worker"), so that each one's peak memory is its
own: the orchestrator samples the RSS of the worker's whole process tree (the multiprocess
executor's step processes included) and takes its CPU time from getrusage. Seeded clinics are kept
under bench/out/<profile> and reused; the GCS emulator runs in a process of its own, outside the
measured tree (it stands in for GCS).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from backup_pipeline.datasets.parallel import usable_cpus

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
RESULTS = OUT / "results.jsonl"
MiB = 1024 * 1024
SAMPLE_SECONDS = 0.05
FILES_BUCKET = "bench-files"
ARCHIVES_BUCKET = "bench-archives"


# --- The orchestrator -----------------------------------------------------------------------


SHARED_LIBRARIES = frozenset(
    {"dagster", "google.cloud.storage", "numpy", "openpyxl", "pandas", "pyarrow", "xlsxwriter"}
)


def neighbours_sharing_libraries() -> int:
    """Processes outside this one that map pandas' or pyarrow's libraries from this virtualenv
    (another bench, a test suite): each takes a share of those pages off the measured tree's
    PSS (bench/README.md), so a record's peak PSS is only comparable with others made with none.
    Read from /proc/<pid>/maps, without importing either."""
    import importlib.util

    folders = []
    for name in ("pandas", "pyarrow"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            folders.append(str(Path(next(iter(spec.submodule_search_locations)))) + "/")
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            maps = (entry / "maps").read_text()
            count += any(folder in maps for folder in folders)
    return count


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": model,
        "python": platform.python_version(),
        # Libraries this orchestrator (outside the measured tree) has loaded: their pages are
        # shared with the tree, which then counts only part of them in its PSS. Empty for a fair
        # figure (issue 23: pandas and pyarrow here once took ~40 MB off the tree's peak PSS).
        "orchestrator_libraries": sorted(SHARED_LIBRARIES & set(sys.modules)),
    }


def clinic_dir(profile: str, patients: int | None) -> Path:
    return OUT / (profile if patients is None else f"{profile}-{patients}p")


def ensure_seeded(profile: str, patients: int | None) -> dict[str, Any]:
    """Seed the clinic once (SQLite + a files folder) and reuse it while seed.json exists."""
    from sqlalchemy import create_engine, select

    from backup_pipeline.platform import create_schema, tables
    from backup_pipeline.storage.folder import FolderStore
    from backup_pipeline.synthetic import seed_platform

    folder = clinic_dir(profile, patients)
    meta_path = folder / "seed.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    engine = create_engine(f"sqlite:///{folder / 'platform.db'}")
    create_schema(engine)
    print(f"seeding {folder.name} ...", flush=True)
    started = time.perf_counter()
    summary = seed_platform(
        engine, FolderStore(folder / "files"), profile=profile, patients=patients
    )
    seconds = time.perf_counter() - started
    sid = summary.subscription_ids[0]
    with engine.connect() as conn:
        timezone = conn.execute(
            select(tables.subscriptions.c.timezone).where(tables.subscriptions.c.id == sid)
        ).scalar_one()
    engine.dispose()
    meta = {
        "profile": profile,
        "patients": patients,
        "subscription_id": sid,
        "user_id": summary.user_ids[sid][0],
        "timezone": timezone,
        "counts": summary.counts,
        "file_bytes": summary.file_bytes,
        "seed_seconds": round(seconds, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    print(f"seeded in {seconds:.0f} s: {summary.counts}", flush=True)
    return meta


class TreeSampler(threading.Thread):
    """Peak of the summed RSS of a process and all its descendants, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.peak_pss = 0  # proportional set size: pages shared by forked processes counted once
        self.peak_processes = 0
        self.timeline: list[tuple[float, int]] = []  # (epoch seconds, tree RSS) every sample
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop_event.is_set():
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = pss = 0
            for process in processes:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    info = process.memory_full_info()
                    total += info.rss
                    pss += getattr(info, "pss", info.rss)
            if total > self.peak:
                self.peak, self.peak_processes = total, len(processes)
            self.peak_pss = max(self.peak_pss, pss)
            self.timeline.append((time.time(), total))
            self._stop_event.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def warm_page_cache(clinic: Path) -> float:
    """Read the clinic's database and files once, untimed, so that every measured run starts
    with them in the page cache. Without it, the first run of an invocation paid for reading
    what the kernel had reclaimed since (on one VM, 10,000 CFDI XML read cold added 8-43 s to
    the job), and the run that followed it read them warm. Returns the seconds it took."""
    started = time.perf_counter()
    paths = [clinic / "platform.db", *(p for p in (clinic / "files").rglob("*") if p.is_file())]
    for path in paths:
        with contextlib.suppress(OSError), path.open("rb") as handle:
            while handle.read(MiB):
                pass
    return time.perf_counter() - started


def run_worker(kind: str, env: dict[str, str], clinic: Path, extra: list[str]) -> dict[str, Any]:
    warm_s = warm_page_cache(clinic)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_path = Path(handle.name)
    command = [
        sys.executable,
        "-m",
        "bench.run",
        "--worker",
        kind,
        "--clinic",
        str(clinic),
        "--result",
        str(result_path),
        *extra,
    ]
    neighbours = neighbours_sharing_libraries()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    sampler = TreeSampler(process.pid)
    sampler.start()
    try:
        code = process.wait()
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        sampler.stop()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    data: dict[str, Any] = {}
    if result_path.exists() and result_path.stat().st_size:
        data = json.loads(result_path.read_text())
    result_path.unlink(missing_ok=True)
    data.update(
        exit_code=code,
        process_wall_s=round(wall, 2),
        cpu_s=round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 2),
        peak_rss_mb=round(sampler.peak / MiB, 1),
        peak_pss_mb=round(sampler.peak_pss / MiB, 1),
        peak_processes=sampler.peak_processes,
        page_cache_warm_s=round(warm_s, 1),
        # Before and after the run: more than 0 and its peak PSS is too low (bench/README.md).
        neighbours_sharing_libraries=[neighbours, neighbours_sharing_libraries()],
        load_average=[round(x, 2) for x in os.getloadavg()],
    )
    windows = data.get("step_windows", {})
    if windows:
        # Which step the memory peaked in: the tree's peak RSS while each step ran.
        data["step_peak_rss_mb"] = {
            step: round(
                max((rss for t, rss in sampler.timeline if start <= t <= end), default=0) / MiB, 1
            )
            for step, (start, end) in windows.items()
        }
    print(f"  {kind:<24} {json.dumps(_headline(data))}", flush=True)
    return data


def _headline(data: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "exit_code",
        "work_s",
        "process_wall_s",
        "cpu_s",
        "peak_rss_mb",
        "peak_pss_mb",
        "mb_per_s",
        "bytes_per_file",
    )
    return {k: data[k] for k in keys if k in data}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def gcs_emulator() -> Iterator[tuple[str, int]]:
    """The emulator in a process of its own; yields its base URL and pid."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.emulator", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the GCS emulator did not start")
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def upload_files(base_url: str, files_dir: Path) -> float:
    """Copy the seeded files folder into the emulator's files bucket; returns seconds."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    os.environ["STORAGE_EMULATOR_HOST"] = base_url
    client = storage.Client(project="bench", credentials=AnonymousCredentials())
    bucket = client.create_bucket(FILES_BUCKET)
    client.create_bucket(ARCHIVES_BUCKET)
    paths = [p for p in files_dir.rglob("*") if p.is_file()]
    started = time.perf_counter()

    def upload(path: Path) -> None:
        bucket.blob(path.relative_to(files_dir).as_posix()).upload_from_filename(str(path))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, paths))
    return time.perf_counter() - started


def bench_clinic(args: argparse.Namespace) -> None:
    if args.clinic_dir:
        # A clinic seeded elsewhere (its seed.json, platform.db and files/): its archives and
        # outbox go there too, away from other runs on the profile's own folder.
        folder = Path(args.clinic_dir).absolute()
        meta = json.loads((folder / "seed.json").read_text())
    else:
        meta = ensure_seeded(args.profile, args.patients)
        folder = clinic_dir(args.profile, args.patients)
    if args.seed_only:
        return
    base_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BACKUP_PLATFORM_DB_URL": f"sqlite:///{folder / 'platform.db'}",
        "BACKUP_MAIL_URL": (folder / "outbox").as_uri(),
        "BACKUP_MAX_CONCURRENT_OPS": str(args.max_concurrent),
        "GOOGLE_CLOUD_PROJECT": "bench",
    }
    ids = ["--subscription", str(meta["subscription_id"]), "--user", str(meta["user_id"])]
    for backend in args.backends.split(","):
        print(f"{folder.name} on {backend}", flush=True)
        record: dict[str, Any] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "clinic": meta,
            "backend": backend,
            "runs": {},
        }
        with contextlib.ExitStack() as stack:
            env = dict(base_env, BENCH_BACKEND=backend)
            if backend in ("file", "latency"):
                archives = folder / "archives"
                shutil.rmtree(archives, ignore_errors=True)
                env["BACKUP_FILES_URL"] = (folder / "files").as_uri()
                env["BACKUP_ARCHIVES_URL"] = archives.as_uri()
                if backend == "latency":
                    # The seeded folder as a remote store: every request of the files store
                    # waits this long first (bench/jobdef.py LatencyStore).
                    env["BENCH_FILES_LATENCY_MS"] = str(args.latency_ms)
                    record["files_latency_ms"] = args.latency_ms
            else:
                base_url, _pid = stack.enter_context(gcs_emulator())
                record["upload_to_emulator_s"] = round(upload_files(base_url, folder / "files"), 1)
                env["STORAGE_EMULATOR_HOST"] = base_url
                env["BACKUP_FILES_URL"] = f"gs://{FILES_BUCKET}"
                env["BACKUP_ARCHIVES_URL"] = f"gs://{ARCHIVES_BUCKET}"
            for kind in args.runs.split(","):
                if kind == "render" and backend != "file":
                    continue  # the workbooks do not depend on the backend
                record["runs"][kind] = run_worker(kind, env, folder, ids)
        record["summary"] = summarize(record)
        print(json.dumps(record["summary"], indent=2), flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as out:
            out.write(json.dumps(record) + "\n")


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    runs = record["runs"]
    summary: dict[str, Any] = {}
    naive = runs.get("naive", {}).get("work_s")
    for name in ("job_in_process", "job_multiprocess"):
        job = runs.get(name)
        if not job or "work_s" not in job:
            continue
        exports = [w["seconds"] for w in job.get("workbooks", {}).values() if w.get("seconds")]
        summary[name] = {
            "work_s": job["work_s"],
            "cpu_s": job["cpu_s"],
            "peak_rss_mb": job["peak_rss_mb"],
            "peak_pss_mb": job.get("peak_pss_mb"),
            # The critical path's floor: the backup cannot end before its slowest workbook
            # (extraction, rendering and staging, as its worker timed them).
            "slowest_export_s": max(exports, default=None),
            "files_mb_per_s": job.get("files_mb_per_s"),
            "naive_over_job": round(naive / job["work_s"], 2) if naive else None,
        }
    raw, zipped = runs.get("raw", {}), runs.get("zip", {})
    if raw.get("mb_per_s") and zipped.get("mb_per_s"):
        summary["zip_over_raw"] = round(zipped["mb_per_s"] / raw["mb_per_s"], 2)
    serial = runs.get("zip_serial", {})
    if raw.get("mb_per_s") and serial.get("mb_per_s"):
        summary["zip_serial_over_raw"] = round(serial["mb_per_s"] / raw["mb_per_s"], 2)
    job = runs.get("job_in_process", {})
    if raw.get("mb_per_s") and job.get("files_mb_per_s"):
        summary["job_files_over_raw"] = round(job["files_mb_per_s"] / raw["mb_per_s"], 2)
    render = runs.get("render", {}).get("datasets")
    if render:
        rows = sum(d["rows"] for d in render.values())
        ours = sum(d["render_s"] for d in render.values())
        theirs = sum(d["to_excel_s"] for d in render.values())
        summary["render_over_to_excel"] = round(theirs / ours, 2) if ours else None
        summary["render_rows_per_s"] = round(rows / ours) if ours else None
        summary["to_excel_rows_per_s"] = round(rows / theirs) if theirs else None
    return summary


# --- Workers (each in its own process) ------------------------------------------------------


def _own_tree_rss_mb() -> float:
    me = psutil.Process()
    return round(sum(p.memory_info().rss for p in [me, *me.children(recursive=True)]) / MiB, 1)


def worker_job(args: argparse.Namespace, executor: str) -> dict[str, Any]:
    import dagster as dg
    from sqlalchemy import create_engine

    from backup_pipeline import platform as db
    from backup_pipeline.synthetic import file_backup_request
    from bench import jobdef

    engine = create_engine(os.environ["BACKUP_PLATFORM_DB_URL"])
    request_id = file_backup_request(engine, subscription_id=args.subscription, user_id=args.user)
    key = str(request_id)
    with (
        tempfile.TemporaryDirectory(prefix="bench-dagster-") as home,
        dg.instance_for_test(temp_dir=home) as instance,
    ):
        instance.add_dynamic_partitions("backup_requests", [key])
        job = jobdef.bench_backup_job()
        baseline = _own_tree_rss_mb()
        self_before = resource.getrusage(resource.RUSAGE_SELF)
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        if os.environ.get("BENCH_TIMELINE"):  # bench/timeline.py: note the workbooks and zip
            from bench.timeline import install_hooks

            install_hooks()
        started = time.perf_counter()
        if executor == "in_process":
            result = job.execute_in_process(
                instance=instance, partition_key=key, raise_on_error=False
            )
        else:
            # The job runs in process since fe7f564; the step processes rebuild the job from
            # this environment, with the multiprocess executor it had before.
            os.environ.setdefault(jobdef.START_METHOD_ENV, "spawn")
            result = dg.execute_job(
                dg.reconstructable(jobdef.bench_backup_job),
                instance=instance,
                tags={"dagster/partition": key},
                raise_on_error=False,
            )
        work = time.perf_counter() - started
        # CPU of the work alone, split between the run's own process (the plan, the zip and
        # Dagster) and the processes it started and reaped (the workbook workers).
        run_cpu = _cpu_s(resource.getrusage(resource.RUSAGE_SELF), self_before)
        workers_cpu = _cpu_s(resource.getrusage(resource.RUSAGE_CHILDREN), children_before)
        stats = [
            s for s in instance.get_run_step_stats(result.run_id) if s.start_time and s.end_time
        ]
        steps = {s.step_key: round(s.end_time - s.start_time, 2) for s in stats}
        windows = {s.step_key: (s.start_time, s.end_time) for s in stats}
        metadata: dict[str, dict[str, Any]] = {}
        for record in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_OUTPUT):
            event = record.dagster_event
            if event is None:
                continue
            data = event.event_specific_data
            # By output: assemble_backup reports each workbook (export_<dataset>) and the archive.
            output = data.step_output_handle.output_name
            name = event.step_key if output == "result" else output
            metadata[name] = {k: getattr(v, "value", v) for k, v in data.metadata.items()}
        timeline_events = []
        if os.environ.get("BENCH_TIMELINE"):
            from bench.timeline import dagster_events

            timeline_events = dagster_events(instance, result.run_id)
    with engine.connect() as conn:
        row = db.get_request(conn, request_id)
    engine.dispose()
    workbooks = {}
    for output, values in metadata.items():
        if output.startswith("export_"):
            # Extraction, rendering and staging of that workbook, in its worker.
            rows, seconds = values.get("rows", 0), values.get("seconds")
            workbooks[output.removeprefix("export_")] = {
                "rows": rows,
                "seconds": seconds,
                "rows_per_s": round(rows / seconds) if seconds else None,
            }
    assemble = metadata.get("archive", {})
    file_bytes = assemble.get("file_bytes", 0)
    assemble_s = steps.get("assemble_backup")
    from backup_pipeline.datasets.parallel import worker_count
    from backup_pipeline.settings import Settings

    report = {
        "success": result.success,
        # Worker processes that rendered the workbooks (0: in the run's process, before the zip).
        "export_workers": worker_count(Settings.from_env().export_workers),
        "request_status": row.status if row else None,
        "work_s": round(work, 2),
        "work_cpu_s": {"run": run_cpu, "workers": workers_cpu},
        "baseline_rss_mb": baseline,
        "steps_s": steps,
        "step_windows": windows,
        "workbooks": workbooks,
        "files_copied": assemble.get("files_copied"),
        "file_bytes": file_bytes,
        "archive_bytes": assemble.get("archive_bytes"),
        "files_mb_per_s": round(file_bytes / MiB / assemble_s, 1) if assemble_s else None,
    }
    if timeline_events:
        report["timeline_events"] = timeline_events
    _store(os.environ["BACKUP_ARCHIVES_URL"]).delete_prefix("respaldos/")
    return report


def _cpu_s(after: resource.struct_rusage, before: resource.struct_rusage) -> float:
    return round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)


def _store(url: str):
    from bench.jobdef import bench_store

    return bench_store(url)


def _files_store():
    from bench.jobdef import bench_store, files_latency_ms

    return bench_store(os.environ["BACKUP_FILES_URL"], files_latency_ms())


def worker_naive(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import create_engine

    from bench.naive import naive_backup

    meta = json.loads((Path(args.clinic) / "seed.json").read_text())
    files = _files_store()
    archives = _store(os.environ["BACKUP_ARCHIVES_URL"])
    engine = create_engine(os.environ["BACKUP_PLATFORM_DB_URL"])
    baseline = _own_tree_rss_mb()
    with tempfile.TemporaryDirectory(prefix="bench-naive-") as tmp, engine.connect() as conn:
        started = time.perf_counter()
        report = naive_backup(
            conn,
            files=files,
            archives=archives,
            subscription_id=args.subscription,
            timezone=meta["timezone"],
            workdir=Path(tmp),
            archive_key="bench-naive/respaldo.zip",
        )
        report["work_s"] = round(time.perf_counter() - started, 2)
    archives.delete_prefix("bench-naive/")
    report["baseline_rss_mb"] = baseline
    report["mb_per_s"] = round(report["files"]["bytes"] / MiB / report["files"]["seconds"], 1)
    return report


def _plan(args: argparse.Namespace) -> list:
    from sqlalchemy import create_engine

    from backup_pipeline.archive.plan import plan_files

    engine = create_engine(os.environ["BACKUP_PLATFORM_DB_URL"])
    with engine.connect() as conn:
        plan = list(plan_files(conn, args.subscription))
    engine.dispose()
    return plan


def worker_raw(args: argparse.Namespace) -> dict[str, Any]:
    """The floor: each planned object copied as is through the same storage client."""
    from backup_pipeline.storage import ObjectNotFound

    plan = _plan(args)
    files = _files_store()
    archives = _store(os.environ["BACKUP_ARCHIVES_URL"])
    copied = copied_bytes = 0
    started = time.perf_counter()
    for index, planned in enumerate(plan):
        try:
            src = files.open_read(planned.source_key)
        except ObjectNotFound:
            continue
        with src, archives.open_write(f"bench-raw/{index}") as out:
            while chunk := src.read(MiB):
                out.write(chunk)
                copied_bytes += len(chunk)
        copied += 1
    work = time.perf_counter() - started
    archives.delete_prefix("bench-raw/")
    return {
        "work_s": round(work, 2),
        "files": copied,
        "bytes": copied_bytes,
        "mb_per_s": round(copied_bytes / MiB / work, 1),
    }


def worker_zip(args: argparse.Namespace, prefetch: int | None = None) -> dict[str, Any]:
    """The product's zipper on the planned files alone (no workbooks): files into the zip.

    prefetch=1 reads one file at a time, as the zipper did before its read-ahead.
    """
    from backup_pipeline.archive.zipper import assemble_archive

    options = {} if prefetch is None else {"prefetch": prefetch}

    plan = _plan(args)
    files = _files_store()
    archives = _store(os.environ["BACKUP_ARCHIVES_URL"])
    with tempfile.TemporaryDirectory(prefix="bench-zip-") as tmp:
        started = time.perf_counter()
        result = assemble_archive(
            archives=archives,
            files=files,
            final_key="bench-zip/files.zip",
            staged=[],
            planned=iter(plan),
            render_missing=lambda missing, workdir: None,
            leeme=lambda tally: "bench",
            workdir=Path(tmp),
            **options,
        )
        work = time.perf_counter() - started
    archives.delete_prefix("bench-zip/")
    return {
        "work_s": round(work, 2),
        "files": result.files_copied,
        "bytes": result.file_bytes,
        "archive_bytes": result.size,
        "mb_per_s": round(result.file_bytes / MiB / work, 1),
    }


def worker_zip_memory(args: argparse.Namespace) -> dict[str, Any]:
    """The zipper on `args.files` tiny files, made up on the fly (no plan or files in memory):
    what the zip's per-entry bookkeeping costs, as peak RSS."""
    import io as io_

    from backup_pipeline.archive.zipper import assemble_archive
    from backup_pipeline.rules.archive_entries import PlannedFile
    from backup_pipeline.storage import ObjectStore
    from backup_pipeline.storage.folder import FolderStore

    class TinyFiles(ObjectStore):
        url = "memory://tiny"
        reads_in_flight = 1

        def open_read(self, key: str):
            return io_.BytesIO(f"archivo {key}\n".encode())

        def open_write(self, key, content_type=None):
            raise NotImplementedError

        def exists(self, key: str) -> bool:
            return True

        def list(self, prefix: str = ""):
            return iter(())

        def delete(self, key: str) -> bool:
            return False

        def signed_url(self, key, expires_in, download_name):
            raise NotImplementedError

        def check_reachable(self) -> None:
            return None

    def planned():
        for n in range(args.files):
            patient = n // 20
            yield PlannedFile(
                archive_path=f"adjuntos/Hernández López María {patient} ({patient})/foto_{n:07d}.jpg",
                source_key=f"subscriptions/1/attachments/{n:07d}",
                kind="adjunto",
                record_id=n,
                patient_id=patient,
            )

    with tempfile.TemporaryDirectory(prefix="bench-zipmem-") as tmp:
        archives = FolderStore(Path(tmp) / "archives")
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        result = assemble_archive(
            archives=archives,
            files=TinyFiles(),
            final_key="zipmem.zip",
            staged=[],
            planned=planned(),
            render_missing=lambda missing, workdir: None,
            leeme=lambda tally: "bench",
            workdir=workdir,
            prefetch=1,
        )
        work = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "work_s": round(work, 2),
        "files": result.files_copied,
        "archive_bytes": result.size,
        "maxrss_before_mb": round(before / 1024, 1),
        "maxrss_mb": round(after / 1024, 1),
    }


def bench_zip_memory(args: argparse.Namespace) -> None:
    """Peak memory of zipping two counts of tiny files: the bookkeeping per archived file."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    counts = [int(n) for n in args.zip_memory.split(",")]
    runs = {}
    for count in counts:
        runs[count] = run_worker("zip_memory", env, OUT, ["--files", str(count)])
    low, high = runs[counts[0]], runs[counts[-1]]
    files = high["files"] - low["files"]
    record = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "zip_memory": {
            "runs": runs,
            "bytes_per_file_rss_sampled": round(
                (high["peak_rss_mb"] - low["peak_rss_mb"]) * MiB / files
            ),
            "bytes_per_file_maxrss": round((high["maxrss_mb"] - low["maxrss_mb"]) * MiB / files),
        },
    }
    print(json.dumps(record["zip_memory"], indent=2), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as out:
        out.write(json.dumps(record) + "\n")


def worker_render(args: argparse.Namespace) -> dict[str, Any]:
    """Same rows, two writers: render_workbook against DataFrame.to_excel with openpyxl."""
    import pandas as pd
    from sqlalchemy import create_engine

    from backup_pipeline.datasets import DATASETS
    from backup_pipeline.datasets.base import ExtractContext, Extraction
    from backup_pipeline.datasets.workbook import render_workbook
    from bench.naive import to_excel

    meta = json.loads((Path(args.clinic) / "seed.json").read_text())
    files = _files_store()
    engine = create_engine(os.environ["BACKUP_PLATFORM_DB_URL"])
    datasets: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp, engine.connect() as conn:
        for dataset in DATASETS:
            ctx = ExtractContext(
                connection=conn,
                subscription_id=args.subscription,
                files=files,
                timezone=meta["timezone"],
            )
            started = time.perf_counter()
            extraction = dataset.extract(ctx)
            chunks = list(extraction.chunks)
            extracted = time.perf_counter()
            rendered = render_workbook(
                Extraction(columns=extraction.columns, chunks=iter(chunks)),
                path=Path(tmp) / "ours.xlsx",
                sheet_title=dataset.sheet_title,
                timezone=meta["timezone"],
                archive_path=dataset.archive_path,
                overflow_dir=Path(tmp) / "overflow",
            )
            ours = time.perf_counter()
            frame = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame()
            frame = frame.reindex(columns=[c.key for c in extraction.columns])
            frame.columns = [c.header for c in extraction.columns]
            concatenated = time.perf_counter()
            to_excel(frame, Path(tmp) / "pandas.xlsx", dataset.sheet_title)
            theirs = time.perf_counter()
            datasets[dataset.name] = {
                "rows": rendered.rows,
                "columns": len(extraction.columns),
                "extract_s": round(extracted - started, 3),
                "render_s": round(ours - extracted, 3),
                "to_excel_s": round(theirs - concatenated, 3),
                "render_bytes": (Path(tmp) / "ours.xlsx").stat().st_size,
                "to_excel_bytes": (Path(tmp) / "pandas.xlsx").stat().st_size,
            }
            del chunks, frame
    return {"datasets": datasets}


def worker_sensor(args: argparse.Namespace) -> dict[str, Any]:
    """One tick of the request sensor's review with 10,000 pending requests of 10,000 clinics."""
    from sqlalchemy import create_engine, delete, insert, update

    from backup_pipeline.platform import create_schema
    from backup_pipeline.platform import tables as t
    from backup_pipeline.resources.platform_db import PlatformDatabaseResource
    from backup_pipeline.sensors import evaluate_pending_requests
    from backup_pipeline.services.intake import review_pending
    from backup_pipeline.settings import Settings

    url = args.db_url
    engine = create_engine(url)
    create_schema(engine)
    count = args.pending
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(
            insert(t.subscriptions),
            [
                {"id": i, "name": f"Clínica {i}", "timezone": "America/Mexico_City",
                 "status": "active", "created_at": now - timedelta(days=1000)}
                for i in range(1, count + 1)
            ],
        )  # fmt: skip
        conn.execute(
            insert(t.users),
            [
                {"id": i, "subscription_id": i, "email": f"u{i}@clinica.example",
                 "full_name": "Usuario", "role": "owner", "is_active": True,
                 "can_request_backup": True, "created_at": now - timedelta(days=1000)}
                for i in range(1, count + 1)
            ],
        )  # fmt: skip
        past = [
            {"id": count + i, "subscription_id": i, "requested_by_user_id": i,
             "requested_at": now - timedelta(days=400), "status": "delivered"}
            for i in range(1, count + 1)
        ]  # fmt: skip
        pending = [
            {"id": i, "subscription_id": i, "requested_by_user_id": i,
             "requested_at": now - timedelta(seconds=count - i), "status": "pending"}
            for i in range(1, count + 1)
        ]  # fmt: skip
        conn.execute(insert(t.backup_requests), past + pending)

    def reset() -> None:
        with engine.begin() as conn:
            conn.execute(delete(t.backup_request_reviews))
            conn.execute(
                update(t.backup_requests)
                .where(t.backup_requests.c.id <= count)
                .values(status="pending", status_detail=None, finished_at=None)
            )

    report: dict[str, Any] = {"pending": count, "db": url.split(":", 1)[0]}
    resource_ = PlatformDatabaseResource(url=url)
    started = time.perf_counter()
    tick = evaluate_pending_requests(resource_, limit=count)
    report["tick_limit_all_s"] = round(time.perf_counter() - started, 3)
    report["tick_limit_all_runs"] = len(tick.run_requests or [])
    for label, limit in (
        ("review_limit_all", count),
        ("review_default_batch", Settings.from_env().sensor_batch),
    ):
        reset()
        started = time.perf_counter()
        result = review_pending(engine, limit=limit)
        report[f"{label}_s"] = round(time.perf_counter() - started, 3)
        report[f"{label}_reviewed"] = result.reviewed
        report[f"{label}_accepted"] = len(result.accepted)
    engine.dispose()
    report["work_s"] = report["tick_limit_all_s"]
    return report


def bench_sensor(args: argparse.Namespace) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    urls = [f"sqlite:///{OUT / 'sensor.db'}"]
    if args.sensor_postgres:
        urls.append(args.sensor_postgres)
    for url in urls:
        if url.startswith("sqlite"):
            (OUT / "sensor.db").unlink(missing_ok=True)
            OUT.mkdir(parents=True, exist_ok=True)
        else:
            _recreate_postgres_database(url)
        data = run_worker("sensor", env, OUT, ["--db-url", url, "--pending", str(args.pending)])
        record = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "sensor": data,
        }
        print(json.dumps(data, indent=2), flush=True)
        with RESULTS.open("a") as out:
            out.write(json.dumps(record) + "\n")


def _recreate_postgres_database(url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    admin = parsed.set(drivername="postgresql", database="postgres").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}"')
        conn.execute(f'CREATE DATABASE "{parsed.database}"')


# --- The report -----------------------------------------------------------------------------


def report() -> None:
    """Markdown tables of the latest record per (clinic, backend) and of the sensor."""
    records = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    latest: dict[tuple[str, str], dict] = {}
    sensors: dict[str, dict] = {}
    for record in records:
        if "sensor" in record:
            sensors[record["sensor"]["db"]] = record
        elif "clinic" in record:
            clinic = record["clinic"]
            name = clinic["profile"] + (
                f" ({clinic['patients']} patients)" if clinic["patients"] else ""
            )
            latest[(name, record["backend"])] = record
    print(
        "| clinic | backend | executor | backup s | CPU s | peak RSS MB | naive s | naive peak MB "
        "| × naive | files into zip MB/s | raw copy MB/s | zip / raw | job files / raw |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, backend), record in latest.items():
        runs, summary = record["runs"], record["summary"]
        naive = runs.get("naive", {})
        for executor in ("job_in_process", "job_multiprocess"):
            job = runs.get(executor)
            if not job or "work_s" not in job:
                continue
            print(
                f"| {name} | {backend} | {executor.removeprefix('job_')} | {job['work_s']} "
                f"| {job['cpu_s']} | {job['peak_rss_mb']} | {naive.get('work_s', '–')} "
                f"| {naive.get('peak_rss_mb', '–')} "
                f"| {summary.get(executor, {}).get('naive_over_job', '–')} "
                f"| {runs.get('zip', {}).get('mb_per_s', '–')} "
                f"| {runs.get('raw', {}).get('mb_per_s', '–')} "
                f"| {summary.get('zip_over_raw', '–')} | {summary.get('job_files_over_raw', '–')} |"
            )
    print()
    print(
        "| clinic | workbook | rows | render_workbook rows/s | to_excel (openpyxl) rows/s | × | job step rows/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for (name, backend), record in latest.items():
        render = record["runs"].get("render", {}).get("datasets")
        if backend != "file" or not render:
            continue
        steps = record["runs"].get("job_in_process", {}).get("workbooks", {})
        for dataset, d in render.items():
            ours = d["rows"] / d["render_s"] if d["render_s"] else 0
            theirs = d["rows"] / d["to_excel_s"] if d["to_excel_s"] else 0
            ratio = f"{d['to_excel_s'] / d['render_s']:.2f}" if d["render_s"] else "–"
            step = steps.get(dataset, {}).get("rows_per_s", "–")
            print(
                f"| {name} | {dataset} | {d['rows']} | {ours:,.0f} | {theirs:,.0f} | {ratio} | {step} |"
            )
        summary = record["summary"]
        print(
            f"| {name} | **all** | | {summary.get('render_rows_per_s', 0):,} "
            f"| {summary.get('to_excel_rows_per_s', 0):,} | {summary.get('render_over_to_excel')} | |"
        )
    if sensors:
        print()
        print(
            "| database | pending | sensor tick, limit 10,000 (s) | review, limit 10,000 (s) | review, default batch (s) |"
        )
        print("|---|---|---|---|---|")
        for db_name, record in sensors.items():
            s = record["sensor"]
            print(
                f"| {db_name} | {s['pending']} | {s['tick_limit_all_s']} | {s['review_limit_all_s']} "
                f"| {s['review_default_batch_s']} ({s['review_default_batch_reviewed']} reviewed) |"
            )


# --- Entry point ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="small", choices=["small", "medium", "large"])
    parser.add_argument("--patients", type=int, help="scale the profile to this many patients")
    parser.add_argument("--backends", default="file,gcs")
    parser.add_argument(
        "--runs",
        default="job_in_process,job_multiprocess,naive,raw,zip,render",
        help="which measurements, in order",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=usable_cpus(),
        help="job_multiprocess: steps at once (default: the CPUs this process may use)",
    )
    parser.add_argument(
        "--clinic-dir",
        help="run on the clinic seeded in this folder (seed.json, platform.db, files/) instead "
        "of the profile's; its archives and outbox go there",
    )
    parser.add_argument("--seed-only", action="store_true")
    parser.add_argument("--sensor", action="store_true", help="benchmark the request sensor")
    parser.add_argument("--sensor-postgres", help="also on this PostgreSQL URL (recreated)")
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--report", action="store_true")
    parser.add_argument(
        "--latency-ms", type=float, default=40, help="the latency backend's wait per request"
    )
    parser.add_argument(
        "--zip-memory",
        metavar="N1,N2",
        help="zip N1 then N2 tiny files; report the peak memory per archived file",
    )
    parser.add_argument("--files", type=int, help=argparse.SUPPRESS)
    # Worker arguments (internal).
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--clinic", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--subscription", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--user", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db-url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        workers = {
            "job_in_process": lambda: worker_job(args, "in_process"),
            "job_multiprocess": lambda: worker_job(args, "multiprocess"),
            "naive": lambda: worker_naive(args),
            "raw": lambda: worker_raw(args),
            "zip": lambda: worker_zip(args),
            "zip_serial": lambda: worker_zip(args, prefetch=1),
            "render": lambda: worker_render(args),
            "zip_memory": lambda: worker_zip_memory(args),
            "sensor": lambda: worker_sensor(args),
        }
        if args.worker.startswith("zip_depth_"):  # zip_depth_N: N files read ahead
            workers[args.worker] = lambda: worker_zip(args, prefetch=int(args.worker[10:]))
        data = workers[args.worker]()
        Path(args.result).write_text(json.dumps(data, default=str))
        return
    if args.report:
        report()
        return
    if args.sensor:
        bench_sensor(args)
        return
    if args.zip_memory:
        bench_zip_memory(args)
        return
    bench_clinic(args)


if __name__ == "__main__":
    main()
