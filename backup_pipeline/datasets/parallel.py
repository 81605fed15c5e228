"""A supervised pool of exports: worker processes forked from the run render them while the run zips.

Rendering is Python-bound (XlsxWriter's per-cell work holds the GIL), so threads cannot overlap
workbooks with each other or with the zip. Processes forked from the run's own process start at
once and share its imported pages (Dagster, pandas, XlsxWriter, SQLAlchemy: ~250 MB), where the
multiprocess executor's step processes each rebuilt the job, its resources and its event log
connection (bench/RESULTS.md). The caller's priority decides what starts first (the datasets: the
costliest workbook, so that it starts at once and the small ones fill the other worker).

It knows nothing of what it exports: anything with a unique `name`, and `export_one`'s picklable
result; the datasets and their staging are the caller's (services.export).

A worker shares nothing mutable with the run: the run's pooled database connections are closed
before the fork, the sockets the fork copied are let go of in the worker, and each worker opens
its own database connections and store clients. A worker dies with the run (Linux's parent-death signal), so a killed run
leaves no render behind; the next run renders again, as it would after a kill today.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import pickle
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, InvalidStateError, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from backup_pipeline.archive.memory import trim_free_memory

_PR_SET_PDEATHSIG = 1
# A worker whose export shows no progress (a chunk of rows, a staged file) for this long is
# killed.
DEFAULT_STALL_SECONDS = 15 * 60.0
# Without a CPU limit a pod sees every CPU of its node: more workers than this gain little (the
# slowest workbook alone is a third of the work; 3 were slower than 2 on 2 CPUs) and each costs
# its memory. The run pods request 2 CPUs (deploy/).
DEFAULT_MAX_WORKERS = 2
# Niceness of the work off the critical path (every workbook but the slowest, and the zip).
OFF_CRITICAL_PATH_NICENESS = 5
# A worker's result travels to the run through a pipe that every worker writes to. A message
# longer than the pipe's atomic write (PIPE_BUF, 4 KiB on Linux) goes in several writes, and a
# worker killed between two of them (the OOM killer) would leave half a message that the pool's
# reader waits for forever: the run would hang, and stop() with it. A result pickled longer than
# this is written to a file instead, and only its path goes through the pipe (exceptions are
# short already: DatasetExportFailed keeps four frames).
INLINE_RESULT_BYTES = 2048


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity, cut to a cgroup v2 CPU quota (a
    Kubernetes pod's limit) when there is one; not the host's count."""
    cpus = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()  # cgroup v2
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    with contextlib.suppress(OSError, ValueError):
        v1 = Path("/sys/fs/cgroup/cpu")  # cgroup v1: a quota of -1 is no limit
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        if quota_us > 0:
            cpus = min(cpus, max(1, quota_us // int((v1 / "cpu.cfs_period_us").read_text())))
    return max(cpus, 1)


def worker_count(configured: int | None) -> int:
    """Workers for a run: as configured, else one per usable CPU up to DEFAULT_MAX_WORKERS;
    0 off Linux (the workers rely on fork, /proc and the parent-death signal)."""
    if not sys.platform.startswith("linux"):
        return 0
    return min(usable_cpus(), DEFAULT_MAX_WORKERS) if configured is None else configured


class Export(Protocol):
    """What the pool runs: anything named uniquely (in this package, a dataset's workbook)."""

    name: str


# What export_one returns: any picklable value (the datasets' Result).
Result = Any


@dataclass(frozen=True)
class Rendered:
    """One dataset's export and how long it took (extraction, rendering and staging)."""

    dataset: Export
    result: Result
    seconds: float
    reused: bool = False  # staged by an earlier attempt of the same run, not rendered again


ExportOne = Callable[[Any], Any]
Priority = Callable[[Any], float]


def in_priority_order(exports: Sequence[Export], priority: Priority | None) -> list[Export]:
    """The order exports start in: a higher priority first, the declared order among equals."""
    if priority is None:
        return list(exports)
    return sorted(exports, key=lambda export: -priority(export))


class DatasetExportFailed(Exception):
    """A dataset's export failed (in a worker or here); names the dataset, never its data."""

    def __init__(self, dataset: str, cause: BaseException) -> None:
        # Where it failed, not what the error said: an error's text may quote a row's values.
        frames = traceback.extract_tb(cause.__traceback__)[-_FRAMES_SHOWN:]
        where = "; ".join(f"{_short(f.filename)}:{f.lineno} in {f.name}" for f in frames)
        super().__init__(
            f"the export of {dataset} failed: {type(cause).__name__}"
            + (f" (at {where})" if where else "")
        )
        self.dataset = dataset
        self.cause_class = type(cause).__name__

    def __reduce__(self) -> tuple[object, ...]:
        # Sent back from a worker by pickle: by the names alone (the cause may not pickle).
        return (_export_failed, (self.dataset, self.cause_class, str(self)))


_FRAMES_SHOWN = 4


def _short(filename: str) -> str:
    """A frame's file from its package on: 'backup_pipeline/datasets/workbook.py', 'xlsxwriter/...'."""
    parts = Path(filename).parts
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == "site-packages" or parts[index].endswith(".venv"):
            return "/".join(parts[index + 1 :])
    return "/".join(parts[-2:])


def _export_failed(dataset: str, cause_class: str, message: str) -> DatasetExportFailed:
    error = DatasetExportFailed.__new__(DatasetExportFailed)
    Exception.__init__(error, message)
    error.dataset, error.cause_class = dataset, cause_class
    return error


class WorkbookExports:
    """Exports `datasets` with `export_one`: in `workers` forked processes, or one after another
    in this process when `workers` is 0.

    `worker_setup` runs first in each worker (open the worker's own connections); `priority`
    (higher first, default the declared order) decides which start first, and the first is the
    critical path the zip yields to. Use as a context manager: leaving it stops every worker still rendering.
    """

    def __init__(
        self,
        datasets: Sequence[Export],
        *,
        workers: int,
        export_one: ExportOne,
        worker_setup: Callable[[], None],
        stall_seconds: float = DEFAULT_STALL_SECONDS,
        done: Mapping[str, tuple[Result, float]] | None = None,
        priority: Priority | None = None,
    ) -> None:
        self._datasets = list(datasets)
        self._stall_seconds = stall_seconds
        self._order = in_priority_order(self._datasets, priority)
        self._reused = dict(done or {})
        self._to_render = [d for d in self._order if d.name not in self._reused]
        self._workers = min(max(workers, 0), len(self._to_render))
        self._export_one = export_one
        self._setup = worker_setup
        self._pool: ProcessPoolExecutor | None = None
        self._ours: list[multiprocessing.process.BaseProcess] = []
        self._futures: dict[str, Future[tuple[Result, float]]] = {
            name: _done(value) for name, value in self._reused.items()
        }
        # Which worker (pid) is exporting each dataset, written by the workers: names the
        # dataset a worker held when it was killed outright.
        self._holders = multiprocessing.get_context("fork").RawArray("i", len(self._datasets))
        # When each dataset's export last showed progress (time.monotonic(), one clock for
        # every process on Linux): a worker silent for stall_seconds is killed.
        self._beats = multiprocessing.get_context("fork").RawArray("d", len(self._datasets))
        # The run's thread and the zip's both wait for exports: one of them at a time shuts the
        # pool down (closing its queues twice fails) and names a dead worker's dataset.
        self._lock = threading.Lock()
        self._culprit: list[str | None] = []
        self._results_dir: str | None = None  # where workers write results too long to send
        # Those results once read: the run's thread and the zip's may both ask for one.
        self._spilled: dict[str, tuple[Result, float]] = {}
        self._spilled_lock = threading.Lock()

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._ours if p.pid is not None]

    def __enter__(self) -> WorkbookExports:
        if self._workers:
            before = set(multiprocessing.active_children())
            try:
                self._start_pool()
            except BaseException:
                # Interrupted after forking: no worker may go on unsupervised.
                self._ours = [p for p in multiprocessing.active_children() if p not in before]
                self.stop()
                raise
            self._ours = [p for p in multiprocessing.active_children() if p not in before]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _start_pool(self) -> None:
        # Objects that exist now go to a generation the collector leaves alone, so the children's
        # collections do not write to (and so copy) the pages they share with the run.
        self._results_dir = tempfile.mkdtemp(prefix="bp-exports-")
        gc.freeze()
        try:
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=multiprocessing.get_context("fork"),
                # With fork these are inherited, not pickled: closures over the run's resources.
                initializer=_start_worker,
                initargs=(
                    self._datasets,
                    self._order[0].name,
                    self._export_one,
                    self._setup,
                    os.getpid(),
                    self._holders,
                    self._beats,
                    self._results_dir,
                ),
            )
            # With fork the pool forks all its workers at the first submit, before its own
            # management thread starts.
            for dataset in self._to_render:
                self._futures[dataset.name] = self._pool.submit(_export_in_worker, dataset.name)
        finally:
            gc.unfreeze()

    def completed(self, watch: Future[Any] | None = None) -> Iterator[Rendered]:
        """Each dataset's export as it finishes (in this process: in turn, slowest first).

        `watch` (the zip) is waited on beside the exports: if it fails, its error is raised at
        once instead of after the last workbook."""
        for dataset in self._order:
            if dataset.name in self._reused:
                result, seconds = self._reused[dataset.name]
                yield Rendered(dataset, result, seconds, reused=True)
        if not self._workers:
            # As in a worker, which is forked with them frozen: the run's long-lived objects
            # (Dagster, pandas, SQLAlchemy) stay out of the collector's passes while the
            # workbooks render here; with Dagster loaded those passes were ~4% of the renders.
            gc.freeze()
            try:
                for dataset in self._to_render:
                    result, seconds = _timed_export(self._export_one, dataset)
                    self._futures[dataset.name] = _done((result, seconds))
                    yield Rendered(dataset, result, seconds)
            finally:
                gc.unfreeze()
            return
        by_future = {
            future: name for name, future in self._futures.items() if name not in self._reused
        }
        pending: set[Future[Any]] = set(by_future)
        while pending:
            done, pending = wait(
                pending | ({watch} if watch is not None else set()),
                timeout=min(self._stall_seconds / 2, 30.0),
                return_when=FIRST_COMPLETED,
            )
            pending.discard(watch)  # waited on again next time round, unless it is done
            if not done:
                self._stop_a_stalled_worker()
                continue
            if watch is not None and watch in done:
                watch.result()  # raises the zip's error; a finished zip waits for us no more
                done.discard(watch)
                watch = None
            for future in sorted(done, key=lambda f: self._order_of(by_future[f])):
                dataset = self._dataset(by_future[future])
                result, seconds = self._result_of(dataset, future)
                yield Rendered(dataset, result, seconds)

    def all_results(self) -> list[Result]:
        """Every export in the datasets' declared order, waiting for those still rendering."""
        return list(self.results_in_order())

    def results_in_order(self) -> Iterator[Result]:
        """Each export in the datasets' declared order, as soon as it and those before it are
        done: the zip adds the slowest workbook while the last small ones still render."""
        if any(d.name not in self._futures for d in self._datasets):  # none rendered yet
            for _rendered in self.completed():
                pass
        for dataset in self._datasets:
            yield self._result_of(dataset, self._futures[dataset.name])[0]

    def stop(self) -> None:
        """Stop rendering: workers still running are killed, pending datasets dropped."""
        with self._lock:
            pool, self._pool = self._pool, None
            # Killed first: a worker still rendering would keep the pool's thread waiting.
            self._kill_workers()
            if pool is not None:
                # Joins the pool's own thread, which reaps the workers (a first shutdown
                # without waiting would leave that thread unjoined).
                pool.shutdown(wait=True, cancel_futures=True)
        if self._results_dir is not None:  # also when the pool could not be started
            shutil.rmtree(self._results_dir, ignore_errors=True)
        if pool is None:
            return
        for process in self._ours:
            process.join(timeout=10)
        stopped = RuntimeError("the workbooks' rendering was stopped")
        for future in self._futures.values():
            # Whoever waits for a workbook (the zip) wakes up, whether or not the pool has
            # already said so for this future.
            with contextlib.suppress(InvalidStateError):
                if not future.done():
                    future.set_exception(stopped)

    def _result_of(
        self, dataset: Export, future: Future[tuple[Result, float]]
    ) -> tuple[Result, float]:
        try:
            value = future.result()
            if isinstance(value, SpilledResult):
                value = self._load_spilled(dataset.name, value)
            return value
        except DatasetExportFailed:
            raise
        except BrokenProcessPool as exc:
            # A worker killed outright (out of memory) breaks the pool, failing every dataset
            # not yet done: name the one that worker held.
            raise DatasetExportFailed(self._held_by_a_dead_worker() or dataset.name, exc) from None
        except BaseException as exc:  # cancelled, stopped, a result that could not travel
            raise DatasetExportFailed(dataset.name, exc) from None

    def _load_spilled(self, name: str, spilled: SpilledResult) -> tuple[Result, float]:
        # Read once (the file goes), under a lock: the run's thread (completed) and the zip's
        # (all_results) may ask for the same result at once.
        with self._spilled_lock:
            if name not in self._spilled:
                self._spilled[name] = spilled.load()
            return self._spilled[name]

    def _held_by_a_dead_worker(self) -> str | None:
        with self._lock:
            if not self._culprit:
                self._culprit.append(self._find_culprit())
            return self._culprit[0]

    def _find_culprit(self) -> str | None:
        pool = self._pool
        if pool is not None:
            # Its thread has failed every pending export and terminates (SIGTERM) the other
            # workers, which take that signal's default action: wait for it to reap them, so
            # that every worker's exit is known.
            pool.shutdown(wait=True, cancel_futures=True)
        # The one that died first died otherwise (killed, crashed); a worker that held nothing
        # when it died names no dataset.
        exits = {p.pid: p.exitcode for p in self._ours if p.exitcode not in (None, 0)}
        held = [
            index
            for index, pid in enumerate(self._holders)
            if pid in exits and exits[pid] != -signal.SIGTERM
        ]
        return self._datasets[held[0]].name if held else None

    def _stop_a_stalled_worker(self) -> None:
        """A worker whose export showed no progress for stall_seconds (a lock the fork copied
        held forever, a query that never answers) is killed and its dataset failed, rather than
        the run waiting until Dagster's run timeout."""
        now = time.monotonic()
        for index, pid in enumerate(self._holders):
            if pid and self._beats[index] and now - self._beats[index] > self._stall_seconds:
                name = self._datasets[index].name
                with self._lock:  # named before the kill, which other waiters then learn of
                    if not self._culprit:
                        self._culprit.append(name)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                raise DatasetExportFailed(
                    name, TimeoutError(f"no progress for {self._stall_seconds:.0f} s")
                )

    def _kill_workers(self) -> None:
        for process in self._ours:
            with contextlib.suppress(OSError, ValueError):
                if process.is_alive():
                    process.kill()

    def _dataset(self, name: str) -> Export:
        return next(d for d in self._datasets if d.name == name)

    def _order_of(self, name: str) -> int:
        return next(i for i, d in enumerate(self._order) if d.name == name)


def _done(value: tuple[Result, float]) -> Future[tuple[Result, float]]:
    future: Future[tuple[Result, float]] = Future()
    future.set_result(value)
    return future


def _timed_export(export_one: ExportOne, dataset: Export) -> tuple[Result, float]:
    started = time.perf_counter()
    try:
        result = export_one(dataset)
    except Exception as exc:
        # Not chained: the cause's text (which may quote patient data) would travel with it
        # into Dagster's event log. Its class and frames are in the message.
        raise DatasetExportFailed(dataset.name, exc) from None
    return result, time.perf_counter() - started


# --- In the worker process --------------------------------------------------------------------

_worker_export: ExportOne | None = None
_worker_datasets: dict[str, tuple[int, Export]] = {}
_worker_holders: Any = None
_worker_beats: Any = None
_worker_index = -1  # the dataset this worker exports now
_worker_setup: list[Callable[[], None]] = []  # run once, by the first export
_worker_critical = -1  # index of the dataset expected to render longest
_worker_results_dir = ""


def yield_to_the_slowest_workbook() -> None:
    """Lower the calling thread's CPU priority (Linux: niceness is per thread) so that, while
    the cores are contended, the slowest workbook's render keeps a core: the backup cannot end
    before it, while everything else (other workbooks, the zip) can wait a little and fill the
    cores once it is done."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, max(current, OFF_CRITICAL_PATH_NICENESS))


def _start_worker(
    datasets: Sequence[Export],
    slowest: str,
    export_one: ExportOne,
    setup: Callable[[], None],
    parent_pid: int,
    holders: Any,
    beats: Any,
    results_dir: str,
) -> None:
    global _worker_export, _worker_holders, _worker_critical, _worker_beats, _worker_results_dir
    # Killed with the run: a render must not outlive the run that wanted it.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the run died before the signal was armed
        os._exit(1)
    _release_inherited_sockets()
    # The run's interrupt handling is not ours (Dagster turns SIGTERM into an exception that
    # would let the render go on): a worker stops when the run or the pool says so.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _worker_setup.append(setup)
    _worker_export = export_one
    _worker_holders = holders
    _worker_beats = beats
    _worker_results_dir = results_dir
    _worker_datasets.update((d.name, (index, d)) for index, d in enumerate(datasets))
    _worker_critical = next(i for i, d in enumerate(datasets) if d.name == slowest)


def _release_inherited_sockets() -> None:
    """Let go of every socket the fork copied from the run: its database and HTTP connections,
    and any server it hosts. A connection the run closes must really close (its peer waits for
    that end of the stream), and the worker opens its own. Each socket's descriptor is pointed
    at /dev/null rather than closed, so that its number is not reused while the run's objects
    that the fork copied still hold it."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            with contextlib.suppress(OSError):
                # Not stdin, stdout or stderr, even where they are sockets (journald).
                if fd > 2 and fd != devnull and stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _export_in_worker(name: str) -> tuple[Result, float] | SpilledResult:
    if _worker_export is None:
        raise RuntimeError("the worker was not started by WorkbookExports")
    global _worker_index
    index, dataset = _worker_datasets[name]
    if index != _worker_critical:
        yield_to_the_slowest_workbook()
    _worker_index = index
    _worker_beats[index] = time.monotonic()
    _worker_holders[index] = os.getpid()
    if _worker_setup:
        # Here rather than in the pool's initializer, whose failure would break the pool
        # without saying why: a failed setup fails this dataset with its cause.
        try:
            _worker_setup[0]()
        except Exception as exc:
            raise DatasetExportFailed(dataset.name, exc) from None
        _worker_setup.clear()
    try:
        value = _timed_export(_worker_export, dataset)
    finally:
        _worker_holders[index] = 0
        _worker_index = -1
        # What this workbook freed goes back to the system before the next one, instead of
        # staying in this worker's heaps while it renders another or waits for the run.
        gc.collect()
        trim_free_memory()
    return sendable(name, value, _worker_results_dir)


@dataclass(frozen=True)
class SpilledResult:
    """A worker's result written to a file, as it travels to the run instead of the result."""

    path: str

    def load(self) -> tuple[Result, float]:
        with open(self.path, "rb") as src:
            value = pickle.load(src)  # noqa: S301 (written by our own worker, in our 0700 folder)
        os.unlink(self.path)
        return value


def sendable(
    name: str, value: tuple[Result, float], results_dir: str
) -> tuple[Result, float] | SpilledResult:
    """`value` itself when it pickles short enough for one atomic write to the pool's pipe,
    otherwise a SpilledResult (see INLINE_RESULT_BYTES)."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) <= INLINE_RESULT_BYTES:
        return value
    path = os.path.join(results_dir, f"{name}.pickle")
    with open(path + ".part", "wb") as out:
        out.write(data)
    os.replace(path + ".part", path)  # whole or absent, whenever the worker is killed
    return SpilledResult(path)


def progress() -> None:
    """Called by an export as it goes (each chunk of rows): in a worker, tells the run that the
    export is alive, and gives what the chunk freed back to the system; elsewhere nothing.

    The workers' heaps are mostly pages shared with the run since the fork: each page a chunk
    writes becomes the worker's own copy, and without a trim per chunk the freed ones stayed
    until the workbook's end (large: ~3 MB more peak PSS)."""
    if _worker_beats is not None and _worker_index >= 0:
        _worker_beats[_worker_index] = time.monotonic()
        trim_free_memory()
