"""External DICOM validators for tests: dicom3tools' dciodvfy (IOD conformance) and DCMTK's dsrdump (SR parsing)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    # A missing validator is a broken set-up, never a reason to skip: `make test` installs it.
    assert shutil.which(tool), f"{tool} is not installed: run `make test`, which installs dcmtk and dicom3tools"
    return subprocess.run([tool, *args], capture_output=True, encoding="utf-8", errors="replace", timeout=60,
                          check=False)


def assert_dciodvfy_clean(path: str | Path) -> str:
    """Fail on any dciodvfy line starting with "Error" (stdout or stderr); return its full output for more checks."""
    result = _run("dciodvfy", str(path))
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert not errors, "dciodvfy reported:\n" + "\n".join(errors)
    return output


def dsrdump_text(path: str | Path) -> str:
    """The SR as dsrdump prints it, long text values in full; fails unless dsrdump exits 0."""
    result = _run("dsrdump", "+Pl", str(path))
    assert result.returncode == 0, f"dsrdump exited {result.returncode}: {result.stderr.strip()}"
    return result.stdout
