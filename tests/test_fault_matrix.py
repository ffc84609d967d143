"""The fault matrix: each fault injected into the real parts, and what must hold afterwards.

Whatever breaks (a worker process, the broker, the PACS, the node itself, the disk, the FHIR server): no
acknowledged study and no result is lost, none is stored twice in the PACS (the study in Orthanc holds exactly
the job's outputs, counted by SOP Instance UID), and the job ends ``done``, or ``failed`` with a reason.

One Orthanc is the PACS and one FHIR server takes the FHIR results, for two deployments of the node, each a real
`progemu serve` on loopback whose data directory is a 64 MiB tmpfs (so that its disk can really fill up; the job
store lies elsewhere, as a PostgreSQL would):

* ``embedded``: the default, one process with its in-memory broker and its worker threads;
* ``broker``: a private Redis, `progemu serve` on the io queue and a separate `progemu worker` on the gpu queue.

Studies come from a modality (pynetdicom as AE MODALITY); results go to Orthanc.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx
import pydicom
import pytest
import redis

from dicom_io.listener import OUT_OF_RESOURCES
from dicom_io.synthetic import build_synthetic_image
from plugin.jobs import JobState, JobStore, JobView
from tests.support.dicom_fixtures import chest_pixels
from tests.support.faults import (
    MountRefused,
    RedisServer,
    RestartableFhirServer,
    Tmpfs,
    c_store_each,
    fill,
    sigkill,
    study_of,
    study_sop_uids,
)
from tests.support.net import stop_process, wait_for
from tests.support.node_server import BIN, NodeServer
from tests.support.orthanc_server import OrthancServer

pytestmark = pytest.mark.integration

MODALITY = "MODALITY@127.0.0.1:104"
ROUTE = {"name": "fault-route", "hypothesis": "A small right pleural effusion develops.",
         "attribute": "StudyDescription", "pattern": "*FAULT-ROUTE*"}
DATA_DISK_BYTES = 64 * 2**20
SUCCESS = 0x0000


@dataclass
class Pacs:
    orthanc: OrthancServer
    fhir: RestartableFhirServer


@dataclass
class Deployment:
    """A running node, its data directory (a tmpfs unless ``no_tmpfs`` says why not) and its job store."""

    node: NodeServer
    disk: Tmpfs
    no_tmpfs: str | None
    store: JobStore
    redis: RedisServer | None = None
    worker: subprocess.Popen | None = None
    worker_log: Path | None = None

    @property
    def data(self) -> Path:
        return self.disk.path


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    orthanc = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    try:
        fhir = RestartableFhirServer()
        with fhir:
            yield Pacs(orthanc, fhir)
    finally:
        orthanc.stop()


def _data_disk(workdir: Path) -> tuple[Tmpfs, str | None]:
    disk = Tmpfs(workdir / "data", DATA_DISK_BYTES)
    try:
        disk.mount()
    except MountRefused as exc:
        return disk, str(exc)
    return disk, None


def _node_env(workdir: Path, pacs: Pacs, disk: Tmpfs) -> dict[str, str]:
    return {"PROGEMU_DATA_DIR": str(disk.path), "PROGEMU_DATABASE_URL": f"sqlite:///{workdir / 'jobs.sqlite'}",
            "PROGEMU_PEERS": MODALITY, "PROGEMU_DESTINATION": f"ORTHANC@127.0.0.1:{pacs.orthanc.dicom_port}",
            "PROGEMU_TASK_RETRIES": "1"}


@pytest.fixture(scope="module")
def embedded(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("embedded")
    disk, no_tmpfs = _data_disk(workdir)
    node = NodeServer(workdir, env=_node_env(workdir, pacs, disk) | {
        "PROGEMU_FHIR_URL": pacs.fhir.base_url, "PROGEMU_FHIR_ALLOW_HTTP": "true", "PROGEMU_FHIR_VERSION": "R4B",
        "PROGEMU_ROUTES": json.dumps([ROUTE])})
    try:
        node.start()
        store = JobStore(node.env["PROGEMU_DATABASE_URL"])
        yield Deployment(node, disk, no_tmpfs, store)
        store.dispose()
    finally:
        node.stop()
        disk.unmount()


@pytest.fixture(scope="module")
def broker(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("broker")
    disk, no_tmpfs = _data_disk(workdir)
    queue = RedisServer(workdir / "redis").start()
    node = NodeServer(workdir, env=_node_env(workdir, pacs, disk) | {
        "PROGEMU_BROKER_URL": queue.url, "PROGEMU_WORKER_QUEUES": "io", "PROGEMU_ROUTES": json.dumps([ROUTE])})
    worker_log = workdir / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROGEMU_")} | node.env
    worker = None
    try:
        node.start()
        with worker_log.open("ab") as log:
            worker = subprocess.Popen([str(BIN / "progemu"), "-v", "worker"], stdout=log, stderr=subprocess.STDOUT,
                                      env=env | {"PROGEMU_WORKER_QUEUES": "gpu", "PROGEMU_WORKER_CONCURRENCY": "1"})
        store = JobStore(node.env["PROGEMU_DATABASE_URL"])
        yield Deployment(node, disk, no_tmpfs, store, queue, worker, worker_log)
        store.dispose()
    finally:
        stop_process(worker, timeout=30)
        node.stop()
        queue.stop()
        disk.unmount()


def _push(node: NodeServer, instances: list[pydicom.Dataset]) -> None:
    assert c_store_each(node.dicom_port, instances, calling="MODALITY") == [SUCCESS] * len(instances)


def _request(node: NodeServer, study_uid: str) -> str:
    response = node.post({"study_instance_uid": study_uid, "hypothesis": "The left pleural effusion worsens."})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _finished(site: Deployment, job_id: str, timeout: float = 120) -> dict:
    job = site.node.wait_until(job_id, {"done", "failed"}, timeout=timeout)
    assert job["state"] == "done" or job["reason"], job  # failed, then with a reason
    return job


def _delivery(job: dict, kind: str) -> dict:
    [delivery] = [d for d in job["deliveries"] if d["kind"] == kind]
    return delivery


def _failed_attempt(node: NodeServer, job_id: str, kind: str) -> dict:
    """The job once its ``kind`` delivery has failed at least once."""
    return cast(dict, wait_for(lambda: (job := node.job(job_id))["deliveries"]
                               and _delivery(job, kind)["attempts"] >= 1 and job, 120,
                               f"a failed {kind} delivery of job {job_id} (node log: {node.log_path})"))


def _assert_in_pacs_exactly_once(orthanc: OrthancServer, job: dict) -> None:
    """The study in Orthanc holds the job's outputs (SC, SR, report page, PDF), each once, and nothing else (the
    prior never went there: the modality sent it to the node only)."""
    outputs = sorted(output["sop_instance_uid"] for output in job["results"]["outputs"])
    assert sorted(output["kind"] for output in job["results"]["outputs"]) == ["pdf", "report_page", "sc", "sr"]
    assert sorted(study_sop_uids(orthanc, job["study_instance_uid"])) == outputs


def _sc_source(orthanc: OrthancServer, job: dict) -> str:
    """The SOP Instance UID of the prior the job's counterfactual SC was made from."""
    [sop] = [o["sop_instance_uid"] for o in job["results"]["outputs"] if o["kind"] == "sc"]
    data = orthanc.get(f"/instances/{orthanc.client.instances.lookup(sop)}/file").content
    return pydicom.dcmread(io.BytesIO(data)).SourceImageSequence[0].ReferencedSOPInstanceUID


def _pid(job: JobView) -> int:
    """The process that ran the job last (its worker is HOST:PID)."""
    assert job.worker is not None
    return int(job.worker.rsplit(":", 1)[1])


def _need_tmpfs(site: Deployment) -> None:
    if site.no_tmpfs:
        pytest.skip(f"no data disk that can fill up: {site.no_tmpfs}")


# --- 3. the PACS is down when the results are delivered ------------------------------------------------------


def test_pacs_down_at_delivery_gets_each_output_exactly_once_when_it_is_back(pacs: Pacs,
                                                                             embedded: Deployment) -> None:
    node = embedded.node
    [prior] = study_of(1)
    _push(node, [prior])
    pacs.orthanc.stop()
    try:
        job_id = _request(node, prior.StudyInstanceUID)
        failing = _failed_attempt(node, job_id, "dicom")
        assert failing["state"] == "delivering" and _delivery(failing, "dicom")["state"] == "pending"
        assert "association with ORTHANC" in _delivery(failing, "dicom")["last_error"]
    finally:
        pacs.orthanc.start()
    job = _finished(embedded, job_id)
    assert job["state"] == "done", node.log_tail()
    assert {d["kind"]: d["state"] for d in job["deliveries"]} == {"dicom": "done", "fhir": "done"}
    assert _delivery(job, "dicom")["attempts"] >= 2
    _assert_in_pacs_exactly_once(pacs.orthanc, job)


# --- 6. the FHIR server is down when the results are delivered ------------------------------------------------


def test_fhir_down_at_delivery_lands_exactly_once_when_it_is_back(pacs: Pacs, embedded: Deployment) -> None:
    node, fhir = embedded.node, pacs.fhir
    [prior] = study_of(1)
    _push(node, [prior])
    fhir.stop()
    try:
        job_id = _request(node, prior.StudyInstanceUID)
        failing = _failed_attempt(node, job_id, "fhir")
        assert failing["state"] == "delivering" and _delivery(failing, "fhir")["state"] == "pending"
        assert "FHIR server unreachable" in _delivery(failing, "fhir")["last_error"]
    finally:
        fhir.start()  # at the same address, empty: all it holds afterwards came from the retries
    job = _finished(embedded, job_id)
    assert job["state"] == "done", node.log_tail()
    assert _delivery(job, "fhir")["attempts"] >= 2
    [sr] = [o["sop_instance_uid"] for o in job["results"]["outputs"] if o["kind"] == "sr"]
    by_sr = {"identifier": f"urn:dicom:uid|urn:oid:{sr}"}
    assert fhir.count("Observation", **by_sr) == 1 and fhir.count("DiagnosticReport") == 1
    [observation] = httpx.get(f"{fhir.base_url}/Observation", params=by_sr, timeout=30).json()["entry"]
    history = httpx.get(f"{fhir.base_url}/Observation/{observation['resource']['id']}/_history", timeout=30).json()
    assert len(history["entry"]) == 1  # written once: no attempt after the one that landed
    _assert_in_pacs_exactly_once(pacs.orthanc, job)


# --- 4. the node is killed while a study is half received ------------------------------------------------------


def test_node_killed_mid_study_keeps_what_it_acknowledged_and_runs_once_on_the_whole_study(
        pacs: Pacs, embedded: Deployment) -> None:
    node = embedded.node
    study = study_of(5, views=["AP", "AP", "AP", "AP", "PA"], StudyDescription="Chest FAULT-ROUTE")
    study_uid = study[0].StudyInstanceUID
    killer = threading.Thread(target=sigkill, args=(node.process,))

    def kill_after_the_third(index: int, status: int | None) -> None:
        if index == 2:
            killer.start()  # while the fourth instance is on its way

    statuses = c_store_each(node.dicom_port, study, calling="MODALITY", after=kill_after_the_third)
    killer.join(15)
    assert node.process is not None and node.process.poll() == -signal.SIGKILL
    acknowledged = [ds for ds, status in zip(study, statuses, strict=True) if status == SUCCESS]
    assert 3 <= len(acknowledged) < 5 and statuses[-1] is None, statuses
    # every instance acknowledged is on disk, whole; nothing else is there but whole instances
    spooled = {path.stem: path for path in (embedded.data / "spool" / study_uid).rglob("*.dcm")}
    sent = {ds.SOPInstanceUID: ds for ds in study}
    assert {ds.SOPInstanceUID for ds in acknowledged} <= set(spooled) <= set(sent)
    for sop, path in spooled.items():
        assert pydicom.dcmread(path).PixelData == sent[sop].PixelData

    node.start()
    assert node.get_list(study_uid) == []  # the half study was never taken for a whole one
    _push(node, study)  # the modality sends the study again, as senders do after a failed association
    jobs = cast(list, wait_for(lambda: node.get_list(study_uid), 30, "the routed job"))
    job = _finished(embedded, jobs[0]["id"])
    assert job["state"] == "done", node.log_tail()
    assert [j["id"] for j in node.get_list(study_uid)] == [job["id"]]
    _assert_in_pacs_exactly_once(pacs.orthanc, job)
    assert _sc_source(pacs.orthanc, job) == study[-1].SOPInstanceUID  # the PA image, which only the re-send brought


# --- 5. the data disk is full: when an instance arrives, as a study completes, when results are written --------




@pytest.mark.parametrize("size", ["2 MB", "2 KB"])
def test_a_full_spool_disk_answers_out_of_resources_and_keeps_nothing_half_written(size: str,
                                                                                   broker: Deployment) -> None:
    _need_tmpfs(broker)
    if size == "2 MB":
        [instance] = study_of(1)
        filler = fill(broker.data, leave_bytes=2**20)  # less than the instance: its write starts, then finds no room
    else:
        instance = build_synthetic_image(chest_pixels(16, 16))
        filler = fill(broker.data)
    study = broker.data / "spool" / instance.StudyInstanceUID
    try:
        assert c_store_each(broker.node.dicom_port, [instance], calling="MODALITY") == [OUT_OF_RESOURCES]
        assert not list(study.rglob("*.dcm"))
        assert not list(study.rglob("*.part")) and not list(study.rglob(".*.part"))
    finally:
        filler.unlink()
    _push(broker.node, [instance])  # room again: the same instance is taken
    assert [p.stem for p in study.rglob("*.dcm")] == [instance.SOPInstanceUID]
    assert broker.node.get_list(instance.StudyInstanceUID) == []




@pytest.mark.parametrize("deployment", ["embedded", "broker"])
def test_no_room_for_the_results_is_retried_then_fails_the_job_with_a_reason_and_delivers_nothing(
        deployment: str, pacs: Pacs, request: pytest.FixtureRequest) -> None:
    site: Deployment = request.getfixturevalue(deployment)
    _need_tmpfs(site)
    [prior] = study_of(1)
    _push(site.node, [prior])
    wait_for(lambda: (site.data / "spool" / prior.StudyInstanceUID / "sender.json").exists(), 30,
             "the study to be complete")  # handed over while there was room (the test below fills it sooner)
    filler = fill(site.data)
    try:
        job_id = _request(site.node, prior.StudyInstanceUID)
        # PROGEMU_TASK_RETRIES=1: a second attempt 5 s after the first
        wait_for(lambda: site.store.require(job_id).attempts >= 2, 60, "the generation to be tried again")
        job = _finished(site, job_id)
    finally:
        filler.unlink()
    assert job["state"] == "failed" and "OSError" in job["reason"], job
    assert job["attempts"] == 2
    assert job["results"] is None and job["deliveries"] == []
    assert study_sop_uids(pacs.orthanc, prior.StudyInstanceUID) == []


def test_a_disk_that_fills_as_a_study_completes_does_not_lose_the_study(pacs: Pacs, broker: Deployment) -> None:
    """The study's origin is written with its first instance, so its hand-over writes nothing to the full disk
    (when the origin was written at completion, ENOSPC there dropped the study: no job, no error to anyone)."""
    _need_tmpfs(broker)
    node = broker.node
    [prior] = study_of(1, StudyDescription="Chest FAULT-ROUTE")
    _push(node, [prior])  # acknowledged: on disk
    filler = fill(broker.data)  # full before the study's quiet period (1 s) ends and it is handed over
    try:
        jobs = cast(list, wait_for(lambda: node.get_list(prior.StudyInstanceUID), 10, "the routed job"))
    finally:
        filler.unlink()
    job = _finished(broker, jobs[0]["id"])
    assert job["state"] == "done", node.log_tail()
    _assert_in_pacs_exactly_once(pacs.orthanc, job)


# --- 1 and 2. a worker process is killed; the broker is restarted ---------------------------------------------


def test_a_worker_process_killed_mid_job_is_redelivered_and_delivers_once(pacs: Pacs, broker: Deployment) -> None:
    """tests/test_worker_redis.py kills the worker's process under a bare orchestrator; here the whole node runs
    (API, listener and io queue in `progemu serve`, gpu queue in `progemu worker`) and the results reach the PACS."""
    assert broker.worker is not None
    [prior] = study_of(1)
    _push(broker.node, [prior])
    job_id = _request(broker.node, prior.StudyInstanceUID)
    running = cast(JobView, wait_for(
        lambda: (j := broker.store.require(job_id)).state == JobState.RUNNING and j.worker and j, 120,
        f"the worker to start the job (log: {broker.worker_log})", interval=0.02))
    victim = _pid(running)
    assert victim != broker.worker.pid  # the prefork child running the task, not the supervisor
    os.kill(victim, signal.SIGKILL)
    job = _finished(broker, job_id)
    assert job["state"] == "done", broker.node.log_tail()
    assert job["attempts"] == 2
    assert _pid(broker.store.require(job_id)) != victim
    assert _delivery(job, "dicom")["state"] == "done"
    _assert_in_pacs_exactly_once(pacs.orthanc, job)


def test_a_broker_restarted_mid_job_loses_neither_the_running_nor_the_queued_job(pacs: Pacs,
                                                                                 broker: Deployment) -> None:
    assert broker.redis is not None
    node, store = broker.node, broker.store
    [first], [second] = study_of(1), study_of(1)
    _push(node, [first, second])
    running_id = _request(node, first.StudyInstanceUID)
    wait_for(lambda: store.require(running_id).state == JobState.RUNNING, 120,
             f"the worker to start the first job (log: {broker.worker_log})", interval=0.02)
    queued_id = _request(node, second.StudyInstanceUID)
    queue = redis.Redis(port=broker.redis.port)
    wait_for(lambda: queue.llen("gpu") == 1, 30, "the second job's task to wait in Redis", interval=0.02)
    assert store.require(running_id).state == JobState.RUNNING
    broker.redis.kill()  # SIGKILL mid-generation, one task running and one queued
    broker.redis.start()
    for job_id in (running_id, queued_id):
        job = _finished(broker, job_id)
        assert job["state"] == "done", broker.node.log_tail()
        assert job["attempts"] == 1
        _assert_in_pacs_exactly_once(pacs.orthanc, job)




def test_a_study_completing_while_the_broker_is_down_is_processed_once_it_is_back(pacs: Pacs,
                                                                                  broker: Deployment) -> None:
    assert broker.redis is not None
    node = broker.node
    [prior] = study_of(1, StudyDescription="Chest FAULT-ROUTE")
    broker.redis.kill()
    try:
        _push(node, [prior])  # acknowledged: the listener needs no broker
        deadline = time.monotonic() + 10  # the hand-over, and Celery's publish retries (about a second), are over
        while time.monotonic() < deadline and "handling a complete study failed" not in node.log_tail(200):
            time.sleep(0.2)
    finally:
        broker.redis.start()
    jobs = cast(list, wait_for(lambda: node.get_list(prior.StudyInstanceUID), 10, "the routed job"))
    job = _finished(broker, jobs[0]["id"], timeout=90)  # a bound, not a speed: the CPU may be busy
    assert job["state"] == "done"
    _assert_in_pacs_exactly_once(pacs.orthanc, job)
