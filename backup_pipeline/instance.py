"""The embedded Dagster instance on DAGSTER_HOME (CLI, `make demo`, `make dev`): created whole,
brought up to date, and healed when a kill left it half made.

A process killed while Dagster creates its SQLite storage leaves databases without some of their
tables, and every later command fails until `dagster instance migrate`. Here a new instance is
built in a scratch folder and moved into place only when whole; an existing one is upgraded with
Dagster's own instance migration and tried; one that cannot be healed is moved aside (nothing is
deleted) and replaced by a fresh one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

log = logging.getLogger(__name__)

# The storage folders of a SQLite instance (runs and event logs, schedules and sensor ticks).
STORAGE_FOLDERS = ("history", "schedules", "storage")
# Written last, holding the Dagster version that made the instance whole: while it is missing
# or names another version, the instance is checked and upgraded before use.
READY_MARKER = ".backup_pipeline_ready"
CONFIG_FILE = "dagster.yaml"


def prepare_embedded_instance(home: Path, config_template: Path | None = None) -> Path:
    """Make `home` a whole, current Dagster instance; returns it. Safe to call on every start:
    when the marker names this Dagster version, nothing is opened."""
    home.mkdir(parents=True, exist_ok=True)
    for scratch in home.glob(".instance-*"):  # a creation killed before it moved anything
        shutil.rmtree(scratch, ignore_errors=True)
    if config_template is not None and config_template.exists():
        _install_config(home / CONFIG_FILE, config_template.read_text(encoding="utf-8"))
    marker = home / READY_MARKER
    if _read(marker) == dg.__version__:
        return home
    if any((home / folder).exists() for folder in STORAGE_FOLDERS):
        try:
            _upgrade_and_try(home)
        except Exception as exc:
            aside = _move_storage_aside(home)
            log.warning(
                "the Dagster instance in %s could not be repaired (%s); its storage was moved to "
                "%s and a new one created",
                home,
                type(exc).__name__,
                aside,
            )
            _create_whole(home)
    else:
        _create_whole(home)
    _write_atomically(marker, dg.__version__)
    return home


def _install_config(config: Path, template: str) -> None:
    """Copy the template, or bring an older copy of it up to date: an instance prepared before
    run monitoring and the backups' own share of the run queue existed must get them too. A
    file that is not a copy of ours (its first line differs) is the operator's, left as it is;
    an older copy is kept beside it as dagster.yaml.previous."""
    current = _read(config)
    if current == template.strip():
        return
    if current is not None:
        if current.splitlines()[:1] != template.splitlines()[:1]:
            return
        _write_atomically(config.with_name(f"{CONFIG_FILE}.previous"), current + "\n")
        log.warning(
            "%s was an older copy of the embedded instance config; it was updated (the old one "
            "is kept as %s.previous) and applies from the next start of Dagster",
            config,
            CONFIG_FILE,
        )
    _write_atomically(config, template)


def _upgrade_and_try(home: Path) -> None:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # Dagster's own `dagster instance migrate`: adds missing tables, runs its migrations.
        with contextlib.redirect_stdout(None):
            instance.upgrade()
        _exercise(instance)


def _exercise(instance: dg.DagsterInstance) -> None:
    """Touch every storage the pipeline uses, so that a missing table shows here, not mid-run."""
    instance.get_runs(limit=1)
    instance.get_dynamic_partitions("backup_requests")
    instance.all_instigator_state()


def _create_whole(home: Path) -> None:
    """A new instance built in a scratch folder beside `home`, its storage moved in when whole."""
    scratch = Path(tempfile.mkdtemp(prefix=".instance-", dir=home))
    try:
        config = home / CONFIG_FILE
        if config.exists():
            shutil.copyfile(config, scratch / CONFIG_FILE)
        with dg.DagsterInstance.from_config(str(scratch)) as instance:
            _exercise(instance)
        for folder in STORAGE_FOLDERS:
            built = scratch / folder
            if built.exists():
                # A rename within one file system: each folder arrives whole or not at all.
                os.replace(built, home / folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _move_storage_aside(home: Path) -> Path:
    aside = home / f".broken-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    aside.mkdir()
    for folder in STORAGE_FOLDERS:
        if (home / folder).exists():
            os.replace(home / folder, aside / folder)
    return aside


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def _write_atomically(path: Path, text: str) -> None:
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
