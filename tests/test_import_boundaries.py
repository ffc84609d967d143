"""The package boundaries hold: the model imports no DICOM code, the DICOM side no model, neither the application.

The contracts live in pyproject.toml (``[tool.importlinter]``) and ``make lint`` checks them with
``lint-imports``; this runs the same check, so a plain pytest run catches a broken boundary too. The second
test breaks every forbidden import on a copy of the packages, so the check is known to bite, third-party
packages (pydicom, torch, ...) included.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("inference", "dicom_io", "plugin")
FORBIDDEN = {
    "inference": ("dicom_io", "plugin", "pydicom", "highdicom", "pynetdicom"),
    "dicom_io": ("inference", "plugin", "torch", "transformers", "onnxruntime"),
}


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` from this interpreter's environment, on the packages and pyproject.toml in ``cwd``."""
    command = Path(sys.executable).with_name("lint-imports")
    assert command.exists(), f"{command} is missing: install the test extra (pip install -e '.[test]')"
    return subprocess.run([str(command), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def _python_only(directory: str, names: list[str]) -> list[str]:
    """copytree's ignore: keep packages and their modules, skip caches and assets (the demo model)."""
    return [name for name in names
            if name == "__pycache__" or not (name.endswith(".py") or Path(directory, name).is_dir())]


def test_the_contracts_are_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout, result.stdout


def test_every_forbidden_import_breaks_its_contract(tmp_path: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=_python_only)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for package, forbidden in FORBIDDEN.items():
        probe = "".join(f"import {module}  # noqa: F401\n" for module in forbidden)
        (tmp_path / package / "_boundary_probe.py").write_text(probe)

    result = lint_imports(tmp_path)

    assert result.returncode != 0, result.stdout
    for package, forbidden in FORBIDDEN.items():
        for module in forbidden:
            assert f"{package} is not allowed to import {module}:" in result.stdout, result.stdout
