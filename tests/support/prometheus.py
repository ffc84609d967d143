"""Debian's Prometheus (/usr/bin/prometheus, from scripts/install-system-deps.sh) on a loopback port, for tests that
scrape the node and its workers as IT's monitoring would, and ask it through its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.net import free_port, stop_process, wait_for

SCRAPE_INTERVAL = "1s"


@dataclass(frozen=True)
class Target:
    """One scrape job: a name (Prometheus's ``job`` label), host:port, and a bearer token where one is needed."""

    job: str
    address: str
    bearer_token: str | None = None


class Prometheus:
    """A Prometheus server of its own: generated prometheus.yml, its own storage, a free port, scraping every 1 s."""

    def __init__(self, workdir: Path, targets: list[Target]) -> None:
        self.workdir = workdir
        self.targets = targets
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict:
        jobs = []
        for target in self.targets:
            job: dict = {"job_name": target.job, "static_configs": [{"targets": [target.address]}]}
            if target.bearer_token:
                job["authorization"] = {"type": "Bearer", "credentials": target.bearer_token}
            jobs.append(job)
        return {"global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
                "scrape_configs": jobs}

    def start(self) -> Prometheus:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not Path(binary).exists():
            pytest.fail("Prometheus is needed for this test: install Debian's prometheus "
                        "(sudo scripts/install-system-deps.sh)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(json.dumps(self.config(), indent=2))  # JSON is YAML
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"], stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.process.poll() is None and httpx.get(self.url + "/-/ready").status_code == 200, 60,
                 f"Prometheus to be ready (log: {self.log_path})")
        return self

    def stop(self) -> None:
        stop_process(self.process, timeout=30)
        self.process = None

    def query(self, promql: str) -> list[dict]:
        """The instant vector of ``promql`` now: a list of {"metric": labels, "value": [time, "number"]}."""
        response = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The one value of ``promql``, None when it has no sample (yet)."""
        result = self.query(promql)
        assert len(result) <= 1, f"{promql} has {len(result)} series: {result}"
        return float(result[0]["value"][1]) if result else None
