"""A gcp-storage-emulator in its own process for the benchmark: `python -m bench.emulator PORT`."""

from __future__ import annotations

import signal
import sys
import threading
from http import server as http_server
from urllib.parse import quote

from gcp_storage_emulator.handlers import objects as emulator_objects
from gcp_storage_emulator.server import create_server
from gcp_storage_emulator.storage import Storage

_make_object_resource = emulator_objects._make_object_resource


def _encoded_media_link(*args, **kwargs) -> dict:
    # Same workaround as backup_pipeline_tests/support/gcs.py: the emulator puts the raw object
    # name into mediaLink, and the client downloads from it; GCS encodes the name.
    resource = _make_object_resource(*args, **kwargs)
    raw = f"/o/{resource['name']}?"
    resource["mediaLink"] = resource["mediaLink"].replace(
        raw, f"/o/{quote(resource['name'], safe='')}?", 1
    )
    return resource


def _keep_metadata_in_memory(self) -> None:
    # In memory the emulator reads its object table from its own attributes; rewriting all of
    # it as JSON after every write makes n uploads cost O(n^2), which GCS does not.
    return None


def main() -> None:
    port = int(sys.argv[1])
    emulator_objects._make_object_resource = _encoded_media_link
    Storage._write_config_to_file = _keep_metadata_in_memory
    # GCS serves requests side by side; the emulator's HTTPServer one at a time. This process
    # only runs the emulator, so its http.server may be the threading one.
    http_server.ThreadingHTTPServer.daemon_threads = True
    # Its handler closes the connection after each answer, and http.server's listen backlog is
    # 5: a client with dozens of reads in flight would have its connects dropped and retried a
    # second later (SYN retransmits), which says nothing about GCS.
    http_server.ThreadingHTTPServer.request_queue_size = 1024
    http_server.HTTPServer = http_server.ThreadingHTTPServer  # type: ignore[misc]
    server = create_server("127.0.0.1", port, in_memory=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    print("ready", flush=True)
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
