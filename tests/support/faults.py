"""Fault injection for tests/test_fault_matrix.py: parts that can be killed, filled and brought back.

* :class:`RedisServer`: a private redis-server on a free loopback port with its own directory and an
  append-only file, so a killed and restarted broker keeps what it had acknowledged.
* :class:`Tmpfs`: a tmpfs of a given size (needs root and a kernel that lets us mount), and :func:`fill`.
* :class:`RestartableFhirServer`: the FHIR test server on a fixed port, so it can go down and come back at
  the same address.
* :func:`c_store_each`: a DICOM sender that records, instance by instance, what the node acknowledged.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import pydicom
import redis
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from plugin.config import DEMO_PRIOR
from tests.support.fhir_server import SERVER_DIR, FhirServer, _tool, install
from tests.support.net import free_port, stop_process, wait_for
from tests.support.orthanc_server import OrthancServer

REDIS_SERVER = "/usr/bin/redis-server"


class RedisServer:
    """redis-server on 127.0.0.1:``port`` with ``appendfsync always``: every write it acknowledged survives a
    SIGKILL (what a broker restart after a crash, or a pod being rescheduled, looks like)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        process = self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", str(self.log_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(lambda: process.poll() is None and redis.Redis(port=self.port, socket_timeout=1).ping(), 20,
                 f"redis-server on port {self.port} (log: {self.log_path})")
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; only the append-only file remains."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        stop_process(self.process, timeout=10)


class MountRefused(RuntimeError):
    """This process may not mount a tmpfs (not root, or no CAP_SYS_ADMIN in its container)."""


class Tmpfs:
    """A tmpfs of ``size_bytes`` at ``path``: a disk that really fills up (ENOSPC), not a configured limit."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path, self.size_bytes = path, size_bytes
        self.mounted = False

    def mount(self) -> Tmpfs:
        if os.geteuid() != 0:
            raise MountRefused(f"mounting a tmpfs needs root; this test runs as uid {os.geteuid()}")
        self.path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_bytes},mode=0755", "tmpfs",
                                 str(self.path)], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise MountRefused(f"mount -t tmpfs was refused: {result.stderr.strip() or result.returncode}")
        self.mounted = True
        return self

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "--lazy", str(self.path)], capture_output=True, timeout=30, check=True)
            self.mounted = False


def free_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def fill(directory: Path, leave_bytes: int = 0) -> Path:
    """Take all of the file system's free space but ``leave_bytes`` (rounded to its blocks) with one file."""
    filler = directory / "filler.bin"
    size = free_bytes(directory) - leave_bytes
    with filler.open("wb") as stream:
        if size > 0:
            os.posix_fallocate(stream.fileno(), 0, size)
    return filler


class RestartableFhirServer(FhirServer):
    """The FHIR test server on a fixed port: stopped, it refuses connections there; started again, it answers at
    the same base URL (empty: it keeps its resources in memory)."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__()
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/fhir/R4"

    def start(self) -> RestartableFhirServer:
        install()
        self._stderr.seek(0)
        self._stderr.truncate()
        process = self.process = subprocess.Popen(
            [_tool("node"), "server.mjs", "--port", str(self.port)], cwd=SERVER_DIR, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr)

        def listening() -> bool:
            if process.poll() is not None:
                self._stderr.seek(0)
                raise AssertionError(f"the FHIR test server exited: {self._stderr.read()[-2000:]}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_for(listening, 60, f"the FHIR test server on port {self.port}", interval=0.2)
        return self

    def count(self, resource_type: str, **search: str) -> int:
        """How many resources of the type the server holds that match ``search`` (FHIR search parameters)."""
        bundle = httpx.get(f"{self.base_url}/{resource_type}", params=search, timeout=30).json()
        return len(bundle.get("entry", []))


def study_of(count: int, *, views: Sequence[str] | None = None, **attributes: object) -> list[pydicom.Dataset]:
    """``count`` instances of one new study, one series, copies of the shipped prior (2 MB each); ``views`` gives
    each instance's ViewPosition (the node chooses a PA over an AP as the prior)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    instances: list[pydicom.Dataset] = []
    for number in range(1, count + 1):
        ds = pydicom.dcmread(DEMO_PRIOR)  # a copy of its own: Dataset.copy() would share the elements
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        if views is not None:
            ds.ViewPosition = views[number - 1]
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        instances.append(ds)
    return instances


def c_store_each(port: int, datasets: Sequence[pydicom.Dataset], *, calling: str, called: str = "PROGEMU",
                 after: Callable[[int, int | None], None] | None = None) -> list[int | None]:
    """C-STORE the datasets in order, in one association; return each one's status (None: it got no answer,
    because the association was lost). ``after(index, status)`` runs after each answer."""
    ae = AE(calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class in sorted({ds.SOPClassUID for ds in datasets}):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    statuses: list[int | None] = []
    try:
        for index, ds in enumerate(datasets):
            if not assoc.is_established:
                statuses.append(None)
                continue
            status = getattr(assoc.send_c_store(ds), "Status", None)
            statuses.append(status)
            if after is not None:
                after(index, status)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def study_sop_uids(orthanc: OrthancServer, study_uid: str) -> list[str]:
    """The SOP Instance UID of every instance Orthanc holds in the study (a list: duplicates would show)."""
    study_id = orthanc.client.studies.lookup(study_uid)
    if study_id is None:
        return []
    return [i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get(f"/studies/{study_id}/instances").json()]


def sigkill(process: subprocess.Popen | None) -> None:
    """Kill without warning, as the OOM killer or a power cut would, and reap it."""
    if process is not None and process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
