"""A real Orthanc (Debian's package) on free loopback ports, with its own config and storage, for tests."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from orthanc_api_client import OrthancApiClient

from tests.support.net import free_port, stop_process, wait_for

ORTHANC = "/usr/sbin/Orthanc"
PYTHON_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"  # Debian's orthanc-dicomweb
USER, PASSWORD = "progemu", "orthanc-test-password"


class OrthancServer:
    """Start with ``start()``, stop with ``stop()``; ``config`` is Orthanc's JSON configuration."""

    def __init__(self, workdir: Path, *, aet: str = "ORTHANC", modalities: dict | None = None,
                 extra: dict | None = None, dicomweb: bool = False) -> None:
        """``dicomweb``: also serve DICOMweb (QIDO-RS, WADO-RS, STOW-RS) at :attr:`dicomweb_url`."""
        if not Path(ORTHANC).exists():
            pytest.fail(f"{ORTHANC} missing: run `make setup` (Debian packages orthanc, orthanc-python)")
        self.workdir = workdir
        self.http_port, self.dicom_port, self.aet = free_port(), free_port(), aet
        storage = workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self.config = {
            "Name": "progemu-test-pacs", "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": aet, "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "DicomModalities": modalities or {}, "DicomModalitiesInDatabase": False, "StableAge": 1,
            "DicomCheckCalledAet": False, "HttpTimeout": 60, "DicomScuTimeout": 30, "ConcurrentJobs": 2,
            **(extra or {}),
        }
        if dicomweb:
            if not Path(DICOMWEB_PLUGIN).exists():
                pytest.fail(f"{DICOMWEB_PLUGIN} missing: run `make setup` (Debian package orthanc-dicomweb)")
            self.config["Plugins"] = [*self.config.get("Plugins", []), DICOMWEB_PLUGIN]
            self.config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def client(self) -> OrthancApiClient:
        return OrthancApiClient(self.url, user=USER, pwd=PASSWORD)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, auth=(USER, PASSWORD), timeout=30)

    def start(self) -> OrthancServer:
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config, indent=2))
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([ORTHANC, "--verbose", str(config_path)], stdout=log,
                                            stderr=subprocess.STDOUT)
        wait_for(lambda: self.process.poll() is None and self.get("/system").status_code == 200, 30,
                 f"Orthanc on port {self.http_port} (log: {self.log_path})")
        return self

    def stop(self) -> None:
        stop_process(self.process, timeout=20)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def upload(self, path: Path) -> list[str]:
        return self.client.upload_file(str(path))

    def series_of(self, study_uid: str) -> list[dict]:
        """Main tags of every series of a study (Orthanc's view)."""
        study_id = self.client.studies.lookup(study_uid)
        if study_id is None:
            return []
        return [self.get(f"/series/{sid}").json() for sid in self.get(f"/studies/{study_id}").json()["Series"]]


def remove(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
