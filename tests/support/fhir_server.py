"""A real FHIR R4 server on loopback for the tests: Medplum's repository and router, validating every resource.

tests/fhir_server/ holds the Node.js script and its npm lock; `npm ci` there is run on first use when node_modules is
missing (or older than the lock), so a fresh checkout needs only node and npm. Without them the tests fail: a FHIR
delivery never checked against a real server is not a pass.

    from tests.support.fhir_server import fhir_server  # noqa: F401 - the session fixture
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from tests.support.net import stop_process

SERVER_DIR = Path(__file__).resolve().parents[1] / "fhir_server"  # tests/fhir_server: the Makefile runs npm ci there
START_TIMEOUT_S = 60.0
INSTALL_TIMEOUT_S = 600.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is needed for the FHIR test server in {SERVER_DIR}: install Node.js >= 20.19 and npm")
    return path


def install(directory: Path = SERVER_DIR) -> None:
    """`npm ci` from the lock when node_modules is missing or older than the lock (npm writes its copy last)."""
    installed = directory / "node_modules" / ".package-lock.json"
    if installed.is_file() and installed.stat().st_mtime >= (directory / "package-lock.json").stat().st_mtime:
        return
    result = subprocess.run([_tool("npm"), "ci", "--prefix", str(directory), "--no-audit", "--no-fund"],
                            capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        output = f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        pytest.fail(f"npm ci in {directory} failed ({result.returncode}):\n{output}")


class FhirServer:
    """`node server.mjs --port 0` for as long as the context lasts; `base_url` is its FHIR base."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""
        self._stderr = tempfile.TemporaryFile("w+")  # a file, not a pipe: nobody reads it until something fails

    def start(self) -> FhirServer:
        install()
        self.process = subprocess.Popen([_tool("node"), "server.mjs", "--port", "0"], cwd=SERVER_DIR, text=True,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr)
        lines: queue.Queue[str] = queue.Queue()  # readline() has no timeout of its own
        reader = threading.Thread(target=lambda: lines.put(self.process.stdout.readline()), daemon=True)
        reader.start()
        try:
            line = lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            line = ""
        if not line.startswith("LISTENING "):
            stop_process(self.process, timeout=10)
            reader.join(timeout=5)  # it sees end-of-file once the process is gone
            self.stop()
            self._stderr.seek(0)
            pytest.fail(f"the FHIR test server printed no LISTENING line within {START_TIMEOUT_S:.0f} s (stdout "
                        f"{line.strip()!r}, exit status {self.process.returncode}); its stderr:\n"
                        f"{self._stderr.read()[-4000:]}")
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}/fhir/R4"
        return self

    def stop(self) -> None:
        stop_process(self.process, timeout=10)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> FhirServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
        self._stderr.close()


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirServer]:
    """One server for the session: tests tell their resources apart by their own ids and identifiers."""
    with FhirServer() as server:
        yield server
