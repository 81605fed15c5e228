"""WorkbookExports: forked workers that render, fail, die and stop as the run needs."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from backup_pipeline.datasets import DATASETS
from backup_pipeline.datasets.export import ExportResult
from backup_pipeline.datasets.parallel import (
    DEFAULT_MAX_WORKERS,
    DatasetExportFailed,
    SpilledResult,
    WorkbookExports,
    in_priority_order,
    progress,
    sendable,
    usable_cpus,
    worker_count,
)
from backup_pipeline.rules.archive_entries import StagedEntry
from backup_pipeline_tests.support.processes import running


def _result(name: str) -> ExportResult:
    return ExportResult(dataset=name, archive_path=f"{name}.xlsx", description="", rows=1)


def _names(datasets) -> list[str]:
    return [d.name for d in datasets]


def test_the_slowest_workbook_starts_first_and_every_one_is_exported_once():
    assert _names(in_priority_order(DATASETS, lambda d: d.render_cost))[0] == "consultations"
    with WorkbookExports(
        DATASETS,
        workers=2,
        export_one=lambda d: _result(d.name),
        worker_setup=lambda: None,
        priority=lambda d: d.render_cost,
    ) as exports:
        finished = [rendered.dataset.name for rendered in exports.completed()]
        results = exports.all_results()
        assert len(exports.worker_pids) == 2
    assert sorted(finished) == sorted(_names(DATASETS))
    # In the declared order, whatever order they finished in.
    assert [r.dataset for r in results] == _names(DATASETS)
    assert running(exports.worker_pids) == []


def test_without_workers_they_are_exported_here_one_after_another():
    pids: list[int] = []

    def export_one(dataset):
        pids.append(os.getpid())
        return _result(dataset.name)

    with WorkbookExports(
        DATASETS, workers=0, export_one=export_one, worker_setup=lambda: None
    ) as exports:
        assert [r.dataset for r in exports.all_results()] == _names(DATASETS)
    assert pids == [os.getpid()] * len(DATASETS)


def test_without_workers_the_runs_objects_are_frozen_while_they_render_and_thawed_after():
    frozen_while_rendering: list[int] = []

    def export_one(dataset):
        frozen_while_rendering.append(gc.get_freeze_count())
        return _result(dataset.name)

    before = gc.get_freeze_count()
    with WorkbookExports(
        DATASETS, workers=0, export_one=export_one, worker_setup=lambda: None
    ) as exports:
        rendering = exports.completed()
        next(rendering)
        next(rendering)
        rendering.close()  # left early (a failure, a cancel): thawed all the same
        assert gc.get_freeze_count() == before
        exports.all_results()
    assert len(frozen_while_rendering) >= len(DATASETS)
    assert all(count > before for count in frozen_while_rendering)
    assert gc.get_freeze_count() == before


def test_the_workers_are_sized_from_the_usable_cpus():
    assert usable_cpus() <= len(os.sched_getaffinity(0))
    assert worker_count(None) == min(usable_cpus(), DEFAULT_MAX_WORKERS)
    assert worker_count(0) == 0 and worker_count(3) == 3


class _Unpicklable(Exception):
    def __init__(self, handle: object) -> None:
        super().__init__("no")
        self.handle = handle

    def __reduce__(self):
        raise TypeError("cannot pickle this error")


def test_a_failing_workbook_is_named_even_when_its_error_cannot_travel():
    def export_one(dataset):
        if dataset.name == "vaccinations":
            raise _Unpicklable(threading.Lock())
        return _result(dataset.name)

    with (
        WorkbookExports(
            DATASETS, workers=2, export_one=export_one, worker_setup=lambda: None
        ) as exports,
        pytest.raises(DatasetExportFailed) as failed,
    ):
        list(exports.completed())
    assert failed.value.dataset == "vaccinations"
    assert failed.value.cause_class == "_Unpicklable"
    copy = pickle.loads(pickle.dumps(failed.value))
    assert (copy.dataset, copy.cause_class, str(copy)) == (
        "vaccinations",
        "_Unpicklable",
        str(failed.value),
    )
    assert running(exports.worker_pids) == []


def test_a_worker_killed_outright_fails_the_workbook_it_held():
    def export_one(dataset):
        if dataset.name == "consultations":
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
        time.sleep(0.2)
        return _result(dataset.name)

    with (
        WorkbookExports(
            DATASETS, workers=2, export_one=export_one, worker_setup=lambda: None
        ) as exports,
        pytest.raises(DatasetExportFailed) as failed,
    ):
        exports.all_results()
    assert failed.value.dataset == "consultations"
    assert running(exports.worker_pids) == []


def test_stopping_kills_workers_still_rendering_and_wakes_whoever_waits(tmp_path: Path):
    started = tmp_path / "started"

    def export_one(dataset):
        # Both workers say so: each writes whole, then renames, so no reader sees half of it.
        mine = started.with_name(f"started.{os.getpid()}")
        mine.write_text(str(os.getpid()))
        os.replace(mine, started)
        time.sleep(600)
        return _result(dataset.name)

    exports = WorkbookExports(DATASETS, workers=2, export_one=export_one, worker_setup=lambda: None)
    with exports:
        waiter_error: list[BaseException] = []

        def wait_for_all() -> None:
            try:
                exports.all_results()
            except BaseException as exc:  # the zip's thread waits like this
                waiter_error.append(exc)

        waiter = threading.Thread(target=wait_for_all)
        waiter.start()
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        worker_pid = int(started.read_text())
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert waiter_error and isinstance(waiter_error[0], DatasetExportFailed | RuntimeError)
    assert worker_pid in exports.worker_pids
    assert running(exports.worker_pids) == []


@dataclass
class _Server:
    """A one-shot HTTP-like server in this process: answers, then closes the connection."""

    listener: socket.socket

    def serve_one(self) -> None:
        conn, _ = self.listener.accept()
        conn.recv(1024)
        conn.sendall(b"answer until the connection closes")
        conn.close()


def test_a_connection_this_process_closes_closes_although_workers_were_forked(tmp_path: Path):
    # A connection accepted before the fork is copied into the workers; unless they let go of
    # it, closing it here sends no end of stream and its peer waits forever.
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    holding = tmp_path / "holding"

    def export_one(dataset):
        holding.write_text("yes")
        time.sleep(3)
        return _result(dataset.name)

    with WorkbookExports(
        DATASETS[:1], workers=1, export_one=export_one, worker_setup=lambda: None
    ) as exports:
        while not holding.exists():
            time.sleep(0.05)
        conn.sendall(b"all of it")
        conn.close()
        client.settimeout(2)
        received = b""
        while chunk := client.recv(1024):  # times out if the worker still holds the socket
            received += chunk
        assert received == b"all of it"
        exports.all_results()
    client.close()
    listener.close()


def test_a_worker_that_cannot_open_its_connections_fails_the_workbook_it_was_given():
    def setup() -> None:
        raise ConnectionRefusedError("metadata server unreachable")

    with (
        WorkbookExports(
            DATASETS[:1], workers=1, export_one=lambda d: _result(d.name), worker_setup=setup
        ) as exports,
        pytest.raises(DatasetExportFailed) as failed,
    ):
        exports.all_results()
    assert failed.value.dataset == DATASETS[0].name
    assert failed.value.cause_class == "ConnectionRefusedError"
    assert "metadata server" not in str(failed.value)  # the class and frames, not the text
    assert running(exports.worker_pids) == []


def test_a_worker_that_shows_no_progress_is_killed_and_its_workbook_failed():
    def export_one(dataset):
        if dataset.name == "patients":
            progress()  # one chunk, then nothing: a lock never released, a query never answered
            time.sleep(600)
        for _ in range(3):
            progress()
            time.sleep(0.1)
        return _result(dataset.name)

    started = time.monotonic()
    with (
        WorkbookExports(
            DATASETS, workers=2, export_one=export_one, worker_setup=lambda: None, stall_seconds=2
        ) as exports,
        pytest.raises(DatasetExportFailed) as failed,
    ):
        list(exports.completed())
    assert failed.value.dataset == "patients"
    assert failed.value.cause_class == "TimeoutError"
    assert time.monotonic() - started < 60
    assert running(exports.worker_pids) == []


def _with_long_texts(name: str, count: int) -> ExportResult:
    entries = [
        StagedEntry(
            archive_path=f"textos_largos/{name}/registro_{i}_notas.txt",
            staging_key=f"staging/run/textos_largos/{name}/registro_{i}_notas.txt",
            size=40_000 + i,
            sha256=f"{i:064x}",
        )
        for i in range(count)
    ]
    return ExportResult(
        dataset=name, archive_path=f"{name}.xlsx", description="", rows=1, entries=entries
    )


def test_a_result_too_long_for_one_pipe_write_reaches_the_run_through_a_file():
    def export_one(dataset):
        return _with_long_texts(dataset.name, 200 if dataset.name == "consultations" else 1)

    with WorkbookExports(
        DATASETS, workers=2, export_one=export_one, worker_setup=lambda: None
    ) as exports:
        results = exports.all_results()
        results_dir = exports._results_dir
        assert results_dir is not None and os.listdir(results_dir) == []  # each read once
        assert exports.all_results() == results  # asked again: the same, from memory
    assert results == [
        _with_long_texts(d.name, 200 if d.name == "consultations" else 1) for d in DATASETS
    ]
    assert not os.path.exists(results_dir)


def test_a_result_through_a_file_reaches_both_threads_that_wait_for_it():
    """The run's thread reads the exports as they finish while the zip's waits for them all:
    both get each result, though its file is read only once."""

    def export_one(dataset):
        return _with_long_texts(dataset.name, 100)

    expected = [_with_long_texts(d.name, 100) for d in DATASETS]
    for _ in range(3):
        from_zip: list[list[ExportResult]] = []
        with WorkbookExports(
            DATASETS, workers=2, export_one=export_one, worker_setup=lambda: None
        ) as exports:
            zip_thread = threading.Thread(target=_append_all_results, args=(exports, from_zip))
            zip_thread.start()
            in_turn = {rendered.dataset.name: rendered.result for rendered in exports.completed()}
            zip_thread.join()
        assert from_zip == [expected]
        assert in_turn == {result.dataset: result for result in expected}


def test_a_pool_that_cannot_start_leaves_no_results_folder(monkeypatch):
    from backup_pipeline.datasets import parallel

    made: list[str] = []
    real_mkdtemp = parallel.tempfile.mkdtemp

    def mkdtemp(**kwargs):
        made.append(real_mkdtemp(**kwargs))
        return made[-1]

    def no_pool(**kwargs):
        raise OSError("too many open files")

    monkeypatch.setattr(parallel.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(parallel, "ProcessPoolExecutor", no_pool)
    exports = WorkbookExports(
        DATASETS, workers=2, export_one=lambda d: _result(d.name), worker_setup=lambda: None
    )
    with pytest.raises(OSError, match="too many open files"), exports:
        pass
    assert len(made) == 1 and not os.path.exists(made[0])


def _append_all_results(exports: WorkbookExports, into: list[list[ExportResult]]) -> None:
    into.append(exports.all_results())


def test_what_a_worker_sends_fits_one_atomic_pipe_write(tmp_path: Path):
    short = (_with_long_texts("patients", 1), 1.5)
    assert sendable("patients", short, str(tmp_path)) is short
    long = (_with_long_texts("consultations", 500), 2.5)
    sent = sendable("consultations", long, str(tmp_path))
    assert isinstance(sent, SpilledResult)
    assert len(pickle.dumps(sent)) < 512  # the path, far under PIPE_BUF (4 KiB)
    assert [p.name for p in tmp_path.iterdir()] == ["consultations.pickle"]  # no .part left
    assert sent.load() == long
    assert list(tmp_path.iterdir()) == []


def test_a_worker_hands_back_free_memory_after_each_chunk_and_each_workbook(monkeypatch):
    from backup_pipeline.datasets import parallel

    trims = multiprocessing.get_context("fork").RawValue("i", 0)  # shared with the forked worker

    def count() -> bool:
        trims.value += 1
        return True

    monkeypatch.setattr(parallel, "trim_free_memory", count)

    def export_one(dataset):
        for _ in range(3):
            progress()  # one chunk of rows written
        return _result(dataset.name)

    with WorkbookExports(
        DATASETS[:1], workers=1, export_one=export_one, worker_setup=lambda: None
    ) as exports:
        exports.all_results()
    assert trims.value == 3 + 1
    progress()  # outside a worker: nothing to tell, nothing trimmed
    assert trims.value == 3 + 1


def test_a_worker_hands_back_free_memory_between_two_workbooks():
    """malloc_trim is a real call on glibc, and safe in a forked worker."""
    import platform

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        trimmed = pool.apply(_allocate_and_trim)
    assert trimmed == (platform.libc_ver()[0] == "glibc")


def _allocate_and_trim() -> bool:
    from backup_pipeline.archive import memory

    blocks = [bytearray(200_000) for _ in range(5)]
    del blocks
    return memory.trim_free_memory()


_ARENAS_SCRIPT = """
import ctypes, sys, threading
from backup_pipeline.archive.memory import limit_malloc_arenas

def allocate(barrier=None):
    kept = [bytearray(3000) for _ in range(50)]  # past Python's small-object allocator: malloc's
    if barrier is not None:
        barrier.wait()  # every thread alive at once, each asking for a heap

limited = sys.argv[1] == "limited"
started = [threading.Thread(target=allocate) for _ in range(3)]  # threads of the run before it
for thread in started:
    thread.start()
    thread.join()
if limited:
    assert limit_malloc_arenas()
barrier = threading.Barrier(40)
threads = [threading.Thread(target=allocate, args=(barrier,)) for _ in range(40)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL(None).malloc_stats()  # one 'Arena N:' line per heap, on stderr
"""


def _arenas(mode: str) -> int:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _ARENAS_SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


def test_the_run_s_threads_share_a_few_heaps_once_limited():
    """glibc makes a heap per thread up to 8 per core, each keeping its own free pages; once
    limited, 40 threads started after share those there are."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt and malloc_stats are glibc's")
    # Limited: the main heap, the earlier threads' (reused), RUN_ARENAS; unlimited: 8 per core.
    assert _arenas("limited") <= 4 < _arenas("unlimited")
