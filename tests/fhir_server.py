"""A real FHIR R4 server on loopback for the tests: Medplum's repository and router, validating every resource.

tests/fhir_server/ holds the Node script and its locked npm dependencies (`make setup` runs `npm ci`).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.net import stop_process

HERE = Path(__file__).resolve().parent / "fhir_server"


class FhirServer:
    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.base_url = ""

    def start(self) -> FhirServer:
        node = shutil.which("node")
        if node is None:
            pytest.fail("node (Node.js) is needed for the FHIR test server: run `make setup`")
        if not (HERE / "node_modules" / "@medplum" / "fhir-router").is_dir():
            pytest.fail(f"the FHIR test server's packages are missing: run `make setup` (npm ci in {HERE})")
        self.process = subprocess.Popen([node, str(HERE / "server.mjs"), "--port", "0"], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, cwd=HERE)
        line = self.process.stdout.readline()  # the server prints this one line once it listens
        if not line.startswith("LISTENING "):
            stop_process(self.process, timeout=5)
            pytest.fail(f"the FHIR test server did not start: {line}{self.process.stdout.read()[-2000:]}")
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}/fhir/R4"
        return self

    def stop(self) -> None:
        stop_process(self.process, timeout=10)


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirServer]:
    server = FhirServer().start()
    try:
        yield server
    finally:
        server.stop()
