"""setup.cfg holds coverage.py's configuration, and coverage.py reads it from there alone."""

from __future__ import annotations

import configparser
import tomllib
from pathlib import Path

import coverage
import pytest

REPO = Path(__file__).resolve().parents[2]


def test_coverage_reads_its_configuration_from_setup_cfg(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(REPO)  # where `make coverage` runs it

    config = coverage.Coverage().config

    assert config.config_files_read == [str(REPO / "setup.cfg")]
    assert config.source == ["backup_pipeline"]
    assert config.branch is True
    assert config.data_file == "var/coverage/.coverage"
    assert config.show_missing is True


def test_setup_cfg_says_nothing_another_file_also_says():
    sections = configparser.ConfigParser()
    sections.read(REPO / "setup.cfg", encoding="utf-8")
    assert sections.sections() and all(s.startswith("coverage:") for s in sections.sections())
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "coverage" not in pyproject["tool"]
    assert not (REPO / ".coveragerc").exists()
