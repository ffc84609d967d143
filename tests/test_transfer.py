"""A generation worker's channel to the node (plugin/transfer.py, plugin/internal_api.py), through a real uvicorn on
a loopback port: the prior streams down and the results stream up, only for a client with the worker scope, only
for the attempt that runs, written whole or not at all; the node, not the worker, decides where results go; and a
worker that cannot serve its queue refuses to start."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from plugin.api import create_app
from plugin.cli.node import worker_problem
from plugin.clients import ClientStore, Scope
from plugin.config import Settings
from plugin.jobs import JobState, NewJob
from plugin.orchestrator import Orchestrator
from plugin.results import FileKind
from plugin.transfer import HttpTransfer, LocalTransfer, Superseded
from tests.support.dicom_fixtures import phantom_prior
from tests.support.dispatchers import RecordingDispatcher
from tests.support.generation import StandInOutputs, StandInUseCase, write_outputs
from tests.support.net import free_port, wait_for
from tests.support.node_server import BIN

BIG = 3 * 2**20 + 17
"""A result file larger than one streamed chunk (1 MiB)."""


@dataclass
class NodeApi:
    node: Orchestrator
    url: str
    worker_token: str
    reader_token: str


@pytest.fixture
def node_api(tmp_path: Path) -> Iterator[NodeApi]:
    config = Settings(data_dir=tmp_path / "node", destination="PACS@127.0.0.1:104", fhir_url="https://fhir.test/r4")
    node = Orchestrator(config, RecordingDispatcher())
    clients = ClientStore(config.resolved_database_url())
    _, worker_token = clients.add("gpu-host", [Scope.WORKER])
    _, reader_token = clients.add("ris", [Scope.SUBMIT, Scope.READ])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(node, clients=clients), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 10, "uvicorn to start")
        yield NodeApi(node, f"http://127.0.0.1:{port}", worker_token, reader_token)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        clients.dispose()


def _spooled_job(node: Orchestrator, tmp_path: Path) -> tuple[str, Path]:
    ds = phantom_prior()
    path = tmp_path / "prior.dcm"
    ds.save_as(path, enforce_file_format=True)
    node.spool.write(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, path.read_bytes())
    job, _ = node.submit(NewJob(request_id="r", study_instance_uid=ds.StudyInstanceUID, source="test",
                                hypothesis="The effusion worsens.", sampler={}))
    return job.id, path


def _running(node: Orchestrator, job_id: str) -> int:
    node.store.transition(job_id, JobState.RUNNING, expect=[JobState.QUEUED])
    return node.store.count_attempt(job_id, "test:1")


def test_a_worker_on_another_host_gets_the_prior_and_returns_results_that_go_where_the_node_decided(
        node_api: NodeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: dict[str, bytes] = {}

    def write_and_keep(outputs: StandInOutputs, out_dir: Path) -> dict[FileKind, Path]:
        files = write_outputs(outputs, out_dir, sc=os.urandom(BIG))
        written.update({path.name: path.read_bytes() for path in files.values()})
        return files

    monkeypatch.setattr("plugin.orchestrator.write_outputs", write_and_keep)
    node = node_api.node
    job_id, prior = _spooled_job(node, tmp_path)
    # the worker's own configuration names other targets: they must not matter
    worker = Orchestrator(Settings(data_dir=tmp_path / "worker", database_url=node.config.resolved_database_url(),
                                   node_url=node_api.url, node_token=node_api.worker_token,
                                   destination="ELSEWHERE@127.0.0.9:104", fhir_url="https://other.test/fhir"),
                          RecordingDispatcher())
    assert isinstance(worker.transfer, HttpTransfer) and isinstance(node.transfer, LocalTransfer)
    use_case = StandInUseCase()
    worker.use_case = lambda: use_case  # type: ignore[method-assign]
    worker.generate(job_id, worker="gpu-host:1")
    assert use_case.prior == prior.read_bytes()  # streamed from the node's spool
    job = node.store.require(job_id)
    assert job.state == JobState.DELIVERING
    assert [(d.kind, d.target) for d in job.deliveries] == [("dicom", "PACS@127.0.0.1:104"),
                                                          ("fhir", "https://fhir.test/r4")]
    results = node.results_dir / job_id
    assert {path.name: path.read_bytes() for path in results.iterdir()} == written  # whole, and nothing else
    assert job.results.located(results).path(FileKind.SC) == results / "counterfactual.dcm"
    assert not node.spool.has_study(job.study_instance_uid)  # released by the node once generated
    assert not any((tmp_path / "worker" / "work").iterdir())  # the worker's scratch is gone
    assert not any((tmp_path / "worker" / "spool").iterdir())  # and it never spooled anything


def test_only_a_client_with_the_worker_scope_may_use_the_internal_api(node_api: NodeApi, tmp_path: Path) -> None:
    job_id, prior = _spooled_job(node_api.node, tmp_path)
    url = f"{node_api.url}/internal/v1/jobs/{job_id}/prior"
    assert httpx.get(url).status_code == 401
    refused = httpx.get(url, headers={"Authorization": f"Bearer {node_api.reader_token}"})
    assert refused.status_code == 403 and refused.json()["detail"] == "this client lacks the worker scope"
    worker = httpx.get(url, headers={"Authorization": f"Bearer {node_api.worker_token}"})
    assert worker.status_code == 200 and worker.content == prior.read_bytes()
    schema = httpx.get(f"{node_api.url}/openapi.json", headers={"Authorization": f"Bearer {node_api.reader_token}"})
    assert not any(path.startswith("/internal") for path in schema.json()["paths"])


def _finished_in_audit(node: Orchestrator) -> list[tuple[str | None, str | None, str | None]]:
    return [(r.fields.get("job_id"), r.fields.get("state"), r.fields.get("reason")) for r in node.audit.records()
            if r.event == "job-finished"]


def test_a_job_failed_on_the_worker_is_failed_and_audited_by_the_node(node_api: NodeApi, tmp_path: Path) -> None:
    """The node's audit trail is the one record of how jobs ended: a worker on another host hands its failure over."""
    node = node_api.node
    job_id, _ = _spooled_job(node, tmp_path)
    _running(node, job_id)
    worker = Orchestrator(Settings(data_dir=tmp_path / "worker", database_url=node.config.resolved_database_url(),
                                   node_url=node_api.url, node_token=node_api.worker_token), RecordingDispatcher())
    worker.fail(job_id, "the prior cannot be used")
    job = node.store.require(job_id)
    assert job.state == JobState.FAILED and job.reason == "the prior cannot be used"
    assert not node.spool.has_study(job.study_instance_uid)  # released on the node
    assert _finished_in_audit(node) == [(job_id, "failed", "the prior cannot be used")]
    assert not (tmp_path / "worker" / "audit.log").exists()  # nothing of it on the worker's host
    assert node.audit.verify().broken is None
    reader = httpx.post(f"{node_api.url}/internal/v1/jobs/{job_id}/failure", json={"reason": "r"},
                        headers={"Authorization": f"Bearer {node_api.reader_token}"})
    assert reader.status_code == 403


def test_a_failure_the_node_cannot_be_told_of_is_recorded_by_the_worker(node_api: NodeApi, tmp_path: Path) -> None:
    """Rather than leave the job running for ever: the worker fails it in the job store, and its own log says so."""
    node = node_api.node
    job_id, _ = _spooled_job(node, tmp_path)
    _running(node, job_id)
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    worker = Orchestrator(Settings(data_dir=tmp_path / "worker", database_url=node.config.resolved_database_url(),
                                   node_url=unreachable, node_token=node_api.worker_token), RecordingDispatcher())
    worker.fail(job_id, "generation failed after 4 attempts: TransientError")
    assert node.store.require(job_id).state == JobState.FAILED
    assert _finished_in_audit(worker) == [(job_id, "failed", "generation failed after 4 attempts: TransientError")]
    assert _finished_in_audit(node) == []


def test_an_upload_is_written_whole_or_not_at_all_and_a_repeat_overwrites_it(node_api: NodeApi,
                                                                              tmp_path: Path) -> None:
    node = node_api.node
    job_id, _ = _spooled_job(node, tmp_path)
    attempt = _running(node, job_id)
    headers = {"Authorization": f"Bearer {node_api.worker_token}"}
    url = f"{node_api.url}/internal/v1/jobs/{job_id}/results/counterfactual.dcm"
    target = node.results_dir / job_id / "counterfactual.dcm"

    def broken_body() -> Iterator[bytes]:
        yield b"x" * 2**20
        raise ConnectionAbortedError("the worker died")

    with pytest.raises(ConnectionAbortedError):
        httpx.put(url, params={"attempt": attempt}, headers=headers, content=broken_body())
    wait_for(lambda: not any((node.results_dir / job_id).glob("*.part")), 10, "the part file to go")
    assert not target.exists()
    for content in (b"first" * 100_000, b"second"):
        answer = httpx.put(url, params={"attempt": attempt}, headers=headers, content=content)
        assert answer.status_code == 204, answer.text
        assert target.read_bytes() == content
    stale = httpx.put(url, params={"attempt": attempt - 1 or 99}, headers=headers, content=b"old")
    assert stale.status_code == 409 and target.read_bytes() == b"second"
    for name, status in (("jobs.sqlite", 422), ("..%2Fjobs.sqlite", 404)):
        other = httpx.put(url.replace("counterfactual.dcm", name), params={"attempt": attempt}, headers=headers,
                          content=b"x")
        assert other.status_code == status
    assert sorted(path.name for path in (node.results_dir / job_id).iterdir()) == ["counterfactual.dcm"]


def test_a_handover_of_results_never_uploaded_is_refused_and_a_repeat_is_a_no_op(node_api: NodeApi,
                                                                                tmp_path: Path) -> None:
    node = node_api.node
    job_id, _ = _spooled_job(node, tmp_path)
    attempt = _running(node, job_id)
    results = StandInOutputs().job_results({FileKind.SC: Path("counterfactual.dcm")})
    transfer = HttpTransfer(node_api.url, node_api.worker_token)
    handover = {"attempt": attempt, "results": results.model_dump(mode="json")}
    missing = transfer.client.post(f"/{job_id}/results", json=handover)
    assert missing.status_code == 422 and "counterfactual.dcm" in missing.json()["detail"]
    sc = tmp_path / "counterfactual.dcm"
    sc.write_bytes(b"sc")
    transfer.publish(job_id, attempt, {FileKind.SC: sc}, results)
    assert node.store.require(job_id).state == JobState.DELIVERING
    again = transfer.client.post(f"/{job_id}/results", json=handover)  # its answer was lost: the worker asks again
    assert again.status_code == 204 and len(node.store.require(job_id).deliveries) == 2  # the same two, not four
    with pytest.raises(Superseded):  # the job has moved on: no file of it is replaced any more
        transfer.publish(job_id, attempt, {FileKind.SC: sc}, results)


def test_a_job_is_done_only_once_every_delivery_succeeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    monkeypatch.setattr("plugin.orchestrator.write_outputs", write_outputs)
    monkeypatch.setattr("plugin.orchestrator.deliver", lambda kind, target, results, config: sent.append(kind))
    recorder = RecordingDispatcher()
    node = Orchestrator(Settings(data_dir=tmp_path / "node", destination="PACS@127.0.0.1:104",
                                 fhir_url="https://fhir.test/r4"), recorder)
    node.use_case = StandInUseCase  # type: ignore[method-assign]
    job_id, _ = _spooled_job(node, tmp_path)
    node.generate(job_id, worker="test:1")
    dicom, fhir = [ident for step, ident in recorder.steps if step == "deliver"]
    node.deliver(dicom)
    assert node.store.require(job_id).state == JobState.DELIVERING  # FHIR still pending
    node.deliver(fhir)
    assert sent == ["dicom", "fhir"] and node.store.require(job_id).state == JobState.DONE


# --- a worker that cannot serve its queue --------------------------------------------------------------------------

@pytest.mark.parametrize(("settings", "expected"), [
    ({"broker_url": None}, "needs a broker"),
    ({"model_path": "/nonexistent/model"}, "no model at /nonexistent/model"),
    ({"node_url": "http://node:8080"}, "without PROGEMU_NODE_TOKEN"),
    ({"node_url": "http://node:8080", "node_token": "t"}, "needs the node's job store"),
    ({"node_url": "http://node:8080", "node_token": "t", "database_url": "postgresql://db/p",
      "worker_queues": "gpu,io"}, "serves --queues gpu only"),
    ({}, "no node's spool in"),
])
def test_a_worker_that_cannot_serve_its_queue_says_why(tmp_path: Path, settings: dict, expected: str) -> None:
    config = Settings(**{"data_dir": tmp_path / "empty", "broker_url": "redis://127.0.0.1:6379/0",
                         "worker_queues": "gpu", **settings})
    assert expected in (worker_problem(config) or "")


def test_a_worker_that_can_serve_its_queue_starts(tmp_path: Path) -> None:
    remote = Settings(data_dir=tmp_path / "empty", broker_url="redis://127.0.0.1:6379/0", worker_queues="gpu",
                      node_url="http://node:8080", node_token="t", database_url="postgresql://db/p")
    (tmp_path / "node" / "spool").mkdir(parents=True)
    local = Settings(data_dir=tmp_path / "node", broker_url="redis://127.0.0.1:6379/0")
    assert worker_problem(remote) is None and worker_problem(local) is None


def test_progemu_worker_without_a_model_exits_2_with_one_line(tmp_path: Path) -> None:
    damaged = tmp_path / "model"
    damaged.mkdir()
    (damaged / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")  # header runs past the end
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROGEMU_")} | {
        "PROGEMU_BROKER_URL": "redis://127.0.0.1:6379/0", "PROGEMU_MODEL_PATH": str(damaged),
        "PROGEMU_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run([str(BIN / "progemu"), "worker", "--queues", "gpu"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "model.safetensors is truncated" in result.stderr, result.stderr
