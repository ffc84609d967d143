"""`progemu serve` as a subprocess on free loopback ports, for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.support.net import free_port, stop_process, wait_for

BIN = Path(sys.executable).parent
API_TOKEN = "node-test-token-0123456789abcdefghij"


class NodeServer:
    """The node as IT deploys it: one `progemu serve` process configured through PROGEMU_* variables."""

    def __init__(self, workdir: Path, *, env: dict[str, str] | None = None, dicom_port: int | None = None,
                 host: str = "127.0.0.1", launcher: Sequence[str] = ()) -> None:
        """``host``: where the test reaches its API; ``launcher``: a command that runs it elsewhere (another
        network namespace: tests/support/netns.py)."""
        self.workdir = workdir
        self.host, self.launcher = host, tuple(launcher)
        self.dicom_port = dicom_port or free_port()
        self.http_port = free_port()
        self.env = {
            "PROGEMU_DATA_DIR": str(workdir / "data"), "PROGEMU_DICOM_PORT": str(self.dicom_port),
            "PROGEMU_HTTP_PORT": str(self.http_port), "PROGEMU_API_TOKEN": API_TOKEN,
            "PROGEMU_STUDY_QUIET_SECONDS": "1", "PROGEMU_DELIVERY_RETRY_SECONDS": "1", **(env or {}),
        }
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "node.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_TOKEN}"}

    def start(self) -> NodeServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROGEMU_")} | self.env
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([*self.launcher, str(BIN / "progemu"), "-v", "serve"], env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.process.poll() is None and httpx.get(self.url + "/readyz").status_code == 200, 90,
                 f"progemu serve to be ready (log: {self.log_path})")
        return self

    def stop(self) -> None:
        stop_process(self.process, timeout=30)
        self.process = None

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def post(self, body: dict) -> httpx.Response:
        return httpx.post(self.url + "/v1/counterfactuals", json=body, headers=self.headers, timeout=30)

    def job(self, job_id: str) -> dict:
        response = httpx.get(f"{self.url}/v1/counterfactuals/{job_id}", headers=self.headers, timeout=30)
        response.raise_for_status()
        return response.json()

    def get_list(self, study_uid: str) -> list[dict]:
        response = httpx.get(self.url + "/v1/counterfactuals", params={"study_instance_uid": study_uid},
                             headers=self.headers, timeout=30)
        response.raise_for_status()
        return response.json()["items"]

    def wait_until(self, job_id: str, states: set[str], timeout: float = 180, interval: float = 0.5) -> dict:
        return wait_for(lambda: (job := self.job(job_id))["state"] in states and job, timeout,
                        f"job {job_id} to reach {states} (node log: {self.log_path})", interval=interval)
