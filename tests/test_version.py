"""One version, pyproject.toml's: the installed metadata carries it to ``plugin.__version__`` and the CLI."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import plugin

ROOT = Path(__file__).resolve().parents[1]
REINSTALL = "the installed metadata is stale: reinstall the project (pip install -e '.[test]')"


def pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_package_version_is_pyprojects() -> None:
    assert plugin.__version__ == pyproject_version(), REINSTALL


def test_progemu_version_prints_it() -> None:
    progemu = Path(sys.executable).with_name("progemu")
    result = subprocess.run([str(progemu), "--version"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"progemu-pacs {pyproject_version()}", REINSTALL
