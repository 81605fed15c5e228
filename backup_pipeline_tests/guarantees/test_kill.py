"""A run SIGKILLed at each stage, then re-run by support: one complete archive, one email, delivered.

Each run is a real process (`python -c`, running `operations.run_request` on its own
DAGSTER_HOME) that stands still at the stage under test, so the kill lands exactly there every
time: the child wraps one product function in itself (nothing in the product knows about tests)
and, on reaching the stage, writes a marker file and sleeps; the test sees the marker, checks what
is on disk at that moment, and sends SIGKILL. Then `operations.run_request`, as support runs it.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import psutil
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from backup_pipeline import operations
from backup_pipeline.archive.verify import verify_zip
from backup_pipeline.instance import prepare_embedded_instance
from backup_pipeline.jobs import KIND_TAG
from backup_pipeline.rules.target import REQUEST_TAG
from backup_pipeline.run_liveness import RunWorker, is_alive
from backup_pipeline_tests.support.gcs import EMULATOR_PROJECT
from backup_pipeline_tests.support.location import code_location
from backup_pipeline_tests.support.platform import Platform, build_platform
from backup_pipeline_tests.support.processes import running_in_group

REPO = Path(__file__).resolve().parents[2]
PATIENTS = 12
# Long enough for a cold Python to import Dagster and get there on a busy CI machine; a run
# that takes longer is a failure of its own.
REACH_STAGE_TIMEOUT = 180

# The child: wrap the function at `stage`, then run the request as the CLI's `run` does.
CHILD = r"""
import json, os, sys, time
from pathlib import Path

stage, request_id, marker = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])


def stand_still(**facts):
    # Tell the test where we are, then wait for its SIGKILL.
    partial = marker.with_name(marker.name + ".tmp")
    partial.write_text(json.dumps(facts))
    os.replace(partial, marker)
    while True:
        time.sleep(60)


from backup_pipeline import operations
from backup_pipeline.archive import zipper
from backup_pipeline.services import archive as assembly
from backup_pipeline.datasets import export
from backup_pipeline import platform as platform_db
from backup_pipeline.resources import storage
from backup_pipeline.storage.gcs import GcsStore

if os.environ.get("KILL_TEST_GCS_CHUNK"):
    # The smallest resumable chunk, so that the zip is several chunks and some are sent
    # before the kill.
    open_store = storage.open_store

    def open_small_chunks(url, **options):
        store = open_store(url, **options)
        if isinstance(store, GcsStore):
            store.chunk_size = int(os.environ["KILL_TEST_GCS_CHUNK"])
        return store

    storage.open_store = open_small_chunks

if stage == "rendering":
    render_workbook = export.render_workbook
    rendered = []

    def render_then_stop(extraction, **kwargs):
        # The third workbook stops after its first chunk is written, asking for the next.
        rendered.append(kwargs["archive_path"])
        if len(rendered) == 3:
            chunks = extraction.chunks

            def first_chunk_only():
                yield next(chunks)
                stand_still(workbook=kwargs["archive_path"])

            extraction.chunks = first_chunk_only()
        return render_workbook(extraction, **kwargs)

    export.render_workbook = render_then_stop
elif stage == "zipping":
    add_stream = zipper._EntryWriter.add_stream
    attachments = []

    at_least = int(os.environ.get("KILL_TEST_ZIP_BYTES", "1"))

    def add_then_stop(self, path, src, sha256=None, **options):
        # Some attachments are in the zip (and at least that many bytes written).
        if path.startswith("adjuntos/"):
            attachments.append(path)
            if len(attachments) >= 5 and self._sink.size >= at_least:
                stand_still(zip_bytes=self._sink.size)
        return add_stream(self, path, src, sha256, **options)

    zipper._EntryWriter.add_stream = add_then_stop
elif stage == "uploaded":
    assemble_archive = assembly.assemble_archive

    def assemble_then_stop(**kwargs):
        result = assemble_archive(**kwargs)
        stand_still(key=result.key, sha256=result.sha256)

    assembly.assemble_archive = assemble_then_stop
elif stage == "emailed":
    # The email is sent and recorded; the request is not delivered yet.
    def stop_before_delivered(conn, request_id, run_id):
        stand_still()

    platform_db.mark_delivered = stop_before_delivered
else:
    raise SystemExit(f"unknown stage {stage}")

operations.run_request(request_id)
raise SystemExit("the run finished without reaching the stage")
"""


def emails(platform: Platform) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in sorted(platform.outbox.glob("*.eml"))
    ]


def _platform(tmp_path: Path, archives_url: str | None = None) -> tuple[Platform, int]:
    """A seeded clinic whose environment (`env`) also names a DAGSTER_HOME of its own, and the
    request its owner filed."""
    env = {"DAGSTER_HOME": str(tmp_path / "dagster_home")}
    if archives_url:
        env["BACKUP_ARCHIVES_URL"] = archives_url
    (tmp_path / "dagster_home").mkdir()
    platform = build_platform(tmp_path, env=env)
    (clinic,) = platform.seed(patients=PATIENTS, seed=3)
    return platform, platform.file_request(clinic)


@pytest.fixture
def filed(tmp_path: Path) -> Iterator[tuple[Platform, int]]:
    platform, request_id = _platform(tmp_path)
    yield platform, request_id
    platform.close()


@pytest.fixture
def platform(filed: tuple[Platform, int]) -> Platform:
    return filed[0]


@pytest.fixture
def request_id(filed: tuple[Platform, int]) -> int:
    return filed[1]


@dataclass
class Stopped:
    process: subprocess.Popen
    facts: dict

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)  # its own session: the run and any child
        assert self.process.wait(timeout=30) == -signal.SIGKILL


def _run_until(
    platform: Platform, request_id: int, stage: str, extra_env: dict[str, str] | None = None
) -> Stopped:
    """Start the request's run in a child process and return once it stands still at stage."""
    marker = platform.root / f"at-{stage}.json"
    log = (platform.root / f"child-{stage}.log").open("wb")
    env = {
        **os.environ,
        **platform.env,
        **(extra_env or {}),
        "PYTHONPATH": str(REPO),
        "BACKUP_RETRY_DELAY_SECONDS": "0.1",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, stage, str(request_id), str(marker)],
        env=env,
        cwd=platform.root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + REACH_STAGE_TIMEOUT
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            tail = (platform.root / f"child-{stage}.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"the run never reached {stage} (exit {process.returncode}):\n{tail}")
        time.sleep(0.02)
    return Stopped(process, json.loads(marker.read_text()))


def _rerun_as_support(platform: Platform, request_id: int, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in platform.env.items():
        monkeypatch.setenv(name, value)
    operations.run_request(request_id)


def _assert_one_archive_and_one_email(platform: Platform, request_id: int) -> None:
    request = platform.request(request_id)
    assert request.status == "delivered"
    assert platform.archives_made() == [request.archive_key]
    data = platform.archives.get_bytes(request.archive_key)
    report = verify_zip(io.BytesIO(data))
    assert report.ok, report.problems
    assert len(data) == request.archive_size_bytes
    assert hashlib.sha256(data).hexdigest() == request.archive_sha256
    (sent,) = emails(platform)
    # The one email describes the archive that is there.
    assert request.archive_sha256 in sent.get_body(("plain",)).get_content()
    assert sent["Message-ID"] == request.email_message_id


def _partial_files(platform: Platform) -> list[Path]:
    return list((platform.root / "archives" / "respaldos").rglob("*.bp-partial"))


@pytest.mark.slow
def test_killed_while_rendering_workbooks(
    platform: Platform, request_id: int, monkeypatch: pytest.MonkeyPatch
):
    stopped = _run_until(platform, request_id, "rendering")
    assert stopped.facts["workbook"].endswith(".xlsx")
    stopped.kill()

    assert platform.request(request_id).status == "running"
    assert platform.archives_made() == []
    _rerun_as_support(platform, request_id, monkeypatch)
    _assert_one_archive_and_one_email(platform, request_id)


@pytest.mark.slow
def test_the_run_killed_alone_while_workers_render_leaves_no_worker_behind(
    platform: Platform, request_id: int, monkeypatch: pytest.MonkeyPatch
):
    # The workbooks render in worker processes forked by the run; one of them stands still.
    stopped = _run_until(platform, request_id, "rendering", {"BACKUP_EXPORT_WORKERS": "2"})
    group = stopped.process.pid
    assert len(running_in_group(group)) >= 3  # the run and its two workers
    os.kill(stopped.process.pid, signal.SIGKILL)  # the run only, as an evicted pod's process
    assert stopped.process.wait(timeout=30) == -signal.SIGKILL

    # The workers die with the run: no render goes on writing into staging.
    deadline = time.monotonic() + 30
    while running_in_group(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running_in_group(group) == []
    assert platform.request(request_id).status == "running"
    _rerun_as_support(platform, request_id, monkeypatch)
    _assert_one_archive_and_one_email(platform, request_id)


@pytest.mark.slow
def test_killed_while_writing_the_zip(
    platform: Platform, request_id: int, monkeypatch: pytest.MonkeyPatch
):
    stopped = _run_until(platform, request_id, "zipping")
    assert stopped.facts["zip_bytes"] > 0
    # The zip is being written: to a partial file beside its final key, not at it.
    assert _partial_files(platform)
    assert platform.archives_made() == []
    stopped.kill()

    assert platform.archives_made() == []
    _rerun_as_support(platform, request_id, monkeypatch)
    _assert_one_archive_and_one_email(platform, request_id)


@pytest.mark.slow
def test_killed_after_the_upload_before_the_email(
    platform: Platform, request_id: int, monkeypatch: pytest.MonkeyPatch
):
    stopped = _run_until(platform, request_id, "uploaded")
    stopped.kill()

    assert platform.archives_made() == [stopped.facts["key"]]
    assert emails(platform) == []
    _rerun_as_support(platform, request_id, monkeypatch)
    _assert_one_archive_and_one_email(platform, request_id)


@pytest.mark.slow
def test_killed_after_the_email_before_delivered(
    platform: Platform, request_id: int, monkeypatch: pytest.MonkeyPatch
):
    stopped = _run_until(platform, request_id, "emailed")
    emailed = platform.request(request_id)
    assert emailed.status == "running" and emailed.email_sent_at is not None
    stopped.kill()

    assert len(emails(platform)) == 1
    _rerun_as_support(platform, request_id, monkeypatch)
    _assert_one_archive_and_one_email(platform, request_id)
    # What the clinic was told still holds: the same archive, the same expiry.
    delivered = platform.request(request_id)
    assert delivered.archive_sha256 == emailed.archive_sha256
    assert delivered.link_expires_at == emailed.link_expires_at


@pytest.mark.slow
def test_killed_mid_upload_to_gcs_leaves_no_object_at_the_final_key(
    tmp_path: Path, gcs_emulator: str
):
    client = storage.Client(project=EMULATOR_PROJECT, credentials=AnonymousCredentials())
    bucket = client.create_bucket(f"bp-kill-{uuid.uuid4().hex[:12]}")
    platform, request_id = _platform(tmp_path, archives_url=f"gs://{bucket.name}/backups")
    chunk = 256 * 1024

    stopped = _run_until(
        platform,
        request_id,
        "zipping",
        {"KILL_TEST_GCS_CHUNK": str(chunk), "KILL_TEST_ZIP_BYTES": str(2 * chunk)},
    )
    # Several chunks of the zip are in GCS's upload session by now.
    assert stopped.facts["zip_bytes"] > 2 * chunk
    assert platform.archives_made() == []
    stopped.kill()

    assert platform.archives_made() == []
    assert not list(client.list_blobs(bucket, prefix="backups/respaldos/"))
    platform.close()


# --- Under the embedded instance's monitoring: nothing stuck -------------------------------------


def _in_progress(instance: dg.DagsterInstance) -> list[str]:
    """Runs the queue daemon counts against its limits."""
    statuses = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ]
    return [
        r.dagster_run.run_id for r in instance.get_run_records(dg.RunsFilter(statuses=statuses))
    ]


def _queue_admits(instance: dg.DagsterInstance, tags: dict[str, str]) -> bool:
    """Whether the queue daemon would launch a run with `tags` now, by the instance's limits
    and its runs in progress (Dagster's own counter: support/dagster_internals.py)."""
    from backup_pipeline_tests.support.dagster_internals import TagConcurrencyLimitsCounter

    queue = instance.get_concurrency_config().run_queue_config
    in_progress = [instance.get_run_by_id(run_id) for run_id in _in_progress(instance)]
    counter = TagConcurrencyLimitsCounter(queue.tag_concurrency_limits, in_progress)
    return len(in_progress) < queue.max_concurrent_runs and not counter.is_blocked(
        SimpleNamespace(tags=tags)
    )


@pytest.mark.slow
def test_a_run_killed_mid_zip_is_failed_its_request_failed_and_nothing_of_it_is_left(
    platform: Platform, request_id: int
):
    # The embedded instance as `make dev` and the CLI prepare it (run monitoring on); the run
    # records itself there, is killed with its whole process group while it writes the zip (a
    # reboot, the OOM killer), and the instance's watch and failure sensor then take their
    # turns, as the daemon would tick them.
    home = prepare_embedded_instance(Path(platform.env["DAGSTER_HOME"]), REPO / "dagster.yaml")
    location = code_location()
    watch = location.resolve_sensor_def("run_worker_watch")
    failure_sensor = location.resolve_sensor_def("backup_failure_sensor")
    stopped = _run_until(platform, request_id, "zipping")

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_monitoring_enabled
        (run,) = instance.get_runs(dg.RunsFilter(tags={REQUEST_TAG: str(request_id)}))
        # While its process lives, the run is left alone.
        watch(dg.build_sensor_context(instance=instance))
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
        assert _partial_files(platform) and list(platform.archives.list("staging/"))

        stopped.kill()
        # Dead, it would hold its slots for good: the clinic's next run (support's re-run) waits.
        assert _in_progress(instance) == [run.run_id]
        next_run = dict(run.tags)
        assert next_run[KIND_TAG] == "backup"
        assert not _queue_admits(instance, next_run)
        watch(dg.build_sensor_context(instance=instance))

        ended = instance.get_run_by_id(run.run_id)
        assert ended.status == dg.DagsterRunStatus.FAILURE
        assert _in_progress(instance) == []  # the queue moves on
        assert _queue_admits(instance, next_run)
        (failure,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        failure_sensor(
            dg.build_run_status_sensor_context(
                sensor_name=failure_sensor.name,
                dagster_instance=instance,
                dagster_run=ended,
                dagster_event=failure.dagster_event,
                resources=platform.resources(),
            )
        )

    request = platform.request(request_id)
    assert request.status == "failed"  # it does not count
    assert request.status_detail.startswith("No se pudo generar su respaldo")
    # Nothing of the killed run is left: no partial zip, no staged workbook or file.
    assert platform.archives_made() == []
    assert _partial_files(platform) == []
    assert list(platform.archives.list("staging/")) == []
    assert not list((platform.root / "archives").rglob("*.bp-partial"))
    # Support hears why; the requester that it failed and does not count.
    told = {
        message["To"]: message.get_body(("plain",)).get_content() for message in emails(platform)
    }
    assert len(told) == 2
    assert any("RunWorkerDied" in text for text in told.values())


def test_a_process_id_reused_by_a_newer_process_is_not_the_run_worker():
    me = psutil.Process()
    # Recorded before this process started: the id now names another process.
    assert not is_alive(RunWorker("r", me.pid, recorded_at=me.create_time() - 60))
    assert is_alive(RunWorker("r", me.pid, recorded_at=me.create_time()))
