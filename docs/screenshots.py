"""Regenerates the README's screenshots of the Dagster UI (docs/*.png) on a throwaway embedded
setup: a support job's Launchpad, its launch refused for a blank reason, and a failed backup
run's error as an operator sees it.

Needs Debian's chromium and playwright-core from npm (docs/screenshots.cjs drives them), e.g.
`apt-get install chromium; npm install --prefix /tmp/pw playwright-core`, then from the
repository's root: `NODE_PATH=/tmp/pw/node_modules .venv/bin/python docs/screenshots.py`
(about a minute; everything else stays in a temporary folder).
"""

# ruff: noqa: S603, S607, S310 - a developer's tool of fixed commands and loopback URLs, as bench/ is

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "backup_pipeline.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout + done.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen) -> None:
    while server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the webserver stopped before it served the UI")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="backup-screenshots-") as tmp:
        var = Path(tmp) / "var"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "BACKUP_VAR_DIR": str(var),
            "DAGSTER_HOME": str(var / "dagster_home"),
            "BACKUP_EXPORT_WORKERS": "0",
        }
        print(cli(env, "demo").splitlines()[-1])
        seeded = cli(env, "seed", "--profile", "small")
        subscription, user = re.search(
            r"subscription (\d+): authorised user ids \[(\d+)", seeded
        ).groups()
        filed = cli(env, "request", "--subscription", subscription, "--user", user)
        request_id = re.search(r"request (\d+)", filed).group(1)
        # The platform's files are not mounted: a real failure of ours, as support meets one.
        unmounted = {**env, "BACKUP_FILES_URL": (Path(tmp) / "not-mounted").as_uri()}
        print(cli(unmounted, "run", request_id).splitlines()[-1])

        os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
        with dg.DagsterInstance.get() as instance:
            (failed,) = instance.get_runs(
                filters=dg.RunsFilter(job_name="backup_job", statuses=[dg.DagsterRunStatus.FAILURE])
            )
        # Dagster's "join the community" dialog would cover what the pictures are for.
        with (var / "dagster_home" / "dagster.yaml").open("a") as instance_yaml:
            instance_yaml.write("\nnux:\n  enabled: false\n")
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-p", str(port)],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/server_info", server)
            subprocess.run(
                ["node", str(DOCS / "screenshots.cjs"), base, failed.run_id, str(DOCS)],
                env=env,
                check=True,
            )
            print(
                "wrote docs/launchpad-support-job.png, launchpad-blank-reason.png, failed-run.png"
            )
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
