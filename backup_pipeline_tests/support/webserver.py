"""A real Dagster webserver (`dagster-webserver`) on a loopback port, serving the code location on
a test's DAGSTER_HOME: the UI's own GraphQL API, which the CLI submits runs through."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
# A cold start loads the code location in a code server of its own: tens of seconds on a busy VM.
STARTUP_SECONDS = 300

LOCATION_STATUS = """
{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(url: str, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One query to the webserver's /graphql endpoint, as the UI sends it; its `data`."""
    answer = requests.post(
        f"{url}/graphql", json={"query": query, "variables": dict(variables or {})}, timeout=60
    )
    answer.raise_for_status()
    body = answer.json()
    assert not body.get("errors"), body["errors"]
    return body["data"]


@contextmanager
def dagster_webserver(env: Mapping[str, str]) -> Iterator[str]:
    """`dagster-webserver -w workspace.yaml` with `env` (DAGSTER_HOME, the platform's settings);
    yields its URL once the code location is loaded, and stops it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dagster-webserver"),
                "-w",
                str(REPO / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server goes with it
        )
        try:
            _wait_until_loaded(url, process, output)
            yield url
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _wait_until_loaded(url: str, process: subprocess.Popen, output: Any) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            entries = graphql(url, LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
        except (requests.RequestException, ValueError):
            entries = []
        if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
            errors = [e["locationOrLoadError"] for e in entries]
            assert all(e["__typename"] != "PythonError" for e in errors), errors
            return
        time.sleep(0.5)
    output.seek(0)
    raise AssertionError(
        f"dagster-webserver did not load the code location: {output.read().decode()[-3000:]}"
    )
