"""Delivery: the registry of target handlers, the outbox's transient/permanent split, the retry schedule."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dicom_io.synthetic import build_synthetic_image
from plugin import delivery
from plugin.config import Settings
from plugin.delivery import FHIR, deliver, retry_delay
from plugin.errors import DeliveryError, PermanentError, UnknownDeliveryTarget
from plugin.jobs import DeliveryState, JobState, NewJob
from plugin.orchestrator import Orchestrator
from plugin.results import AlgorithmIdentity, DicomOutput, FileKind, JobResults, OutputKind
from plugin.tasks import CeleryDispatcher, configure
from tests.support.dicom_fixtures import chest_pixels
from tests.support.net import free_port


def _results(tmp_path: Path) -> JobResults:
    bundle = tmp_path / "fhir.json"
    bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": []}))
    return JobResults(outputs=(), interpretation="The effusion has worsened.", settings={"seed": "0"},
                      algorithm=AlgorithmIdentity(name="ProgEmu", version="t", checkpoint_sha256="0" * 64),
                      files={"fhir": str(bundle)})


def _delivering_job(node: Orchestrator, tmp_path: Path, *targets: tuple[str, str],
                    results: JobResults | None = None) -> str:
    job, _ = node.store.submit(NewJob(request_id="r", study_instance_uid="1.2.3", hypothesis="h", sampler={},
                                      source="test"))
    node.store.transition(job.id, JobState.DELIVERING, expect=[JobState.QUEUED])
    node.store.record_results(job.id, results or _results(tmp_path), list(targets))
    return job.id


@pytest.fixture
def node(tmp_path: Path) -> Orchestrator:
    config = Settings(data_dir=tmp_path, delivery_retry_seconds=30)
    configure(config)
    return Orchestrator(config, CeleryDispatcher())


class _Recorder:
    kind = "recorder"

    def __init__(self) -> None:
        self.sent: list[tuple[str, JobResults]] = []

    def send(self, target: str, results: JobResults, config: Settings) -> None:
        self.sent.append((target, results))


def test_a_registered_handler_receives_the_typed_results(tmp_path: Path, node: Orchestrator,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _Recorder()
    monkeypatch.setitem(delivery._TARGETS, recorder.kind, recorder)
    job_id = _delivering_job(node, tmp_path, ("recorder", "somewhere"))
    node.sweep_outbox(job_id)
    [item] = node.store.get(job_id).deliveries
    node.deliver(item.id)
    assert recorder.sent == [("somewhere", _results(tmp_path))]
    assert node.store.get(job_id).state == JobState.DONE


def test_an_unknown_kind_fails_at_once_with_a_reason_and_is_never_redispatched(tmp_path: Path,
                                                                              node: Orchestrator) -> None:
    with pytest.raises(UnknownDeliveryTarget, match="'dicomweb'.*known: dicom, fhir"):
        deliver("dicomweb", "https://pacs/wado", _results(tmp_path), node.config)
    assert issubclass(UnknownDeliveryTarget, PermanentError)
    job_id = _delivering_job(node, tmp_path, ("dicomweb", "https://pacs/wado"))
    [delivery_id] = node.store.claim_due_deliveries(dt.timedelta(minutes=1), job_id=job_id)
    node.deliver(delivery_id)
    job = node.store.get(job_id)
    assert job.deliveries[0].state == DeliveryState.FAILED and "dicomweb" in job.deliveries[0].last_error
    assert job.state == JobState.FAILED and job.reason == "1 of 1 deliveries failed"
    node.store.release_delivery_claims()
    assert node.sweep_outbox() == 0  # nothing left pending: the sweeper never hands it out again


def test_a_peer_that_is_down_is_retried_later(tmp_path: Path, node: Orchestrator) -> None:
    image = build_synthetic_image(chest_pixels())
    image.save_as(tmp_path / "counterfactual.dcm", enforce_file_format=True)
    results = _results(tmp_path).model_copy(update={
        "outputs": (DicomOutput(kind=OutputKind.SC, series_instance_uid=image.SeriesInstanceUID,
                                sop_instance_uid=image.SOPInstanceUID, sop_class_uid=image.SOPClassUID),),
        "files": {FileKind.SC: str(tmp_path / "counterfactual.dcm")}})
    job_id = _delivering_job(node, tmp_path, ("dicom", f"NOBODY@127.0.0.1:{free_port()}"), results=results)
    [delivery_id] = node.store.claim_due_deliveries(dt.timedelta(minutes=1), job_id=job_id)
    node.deliver(delivery_id)
    [item] = node.store.get(job_id).deliveries
    assert item.state == DeliveryState.PENDING and item.attempts == 1 and item.last_error
    assert node.store.get(job_id).state == JobState.DELIVERING


class _FhirServer(BaseHTTPRequestHandler):
    status = 200
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FhirServer.received.append({"body": body, "auth": self.headers.get("Authorization")})
        outcome = {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "Bundle.entry is required"}]}
        payload = json.dumps(outcome if self.status >= 300 else {"resourceType": "Bundle"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def fhir_server() -> Iterator[tuple[str, type[_FhirServer]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FhirServer)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)  # quick stop
    thread.start()
    _FhirServer.received, _FhirServer.status = [], 200
    try:
        yield f"http://127.0.0.1:{server.server_port}/fhir", _FhirServer
    finally:
        server.shutdown()
        server.server_close()


def test_fhir_target_posts_a_transaction_with_the_token(tmp_path: Path, fhir_server) -> None:
    url, handler = fhir_server
    deliver(FHIR, url, _results(tmp_path), Settings(data_dir=tmp_path, fhir_token="secret-token"))
    [request] = handler.received
    assert request["body"]["type"] == "transaction" and request["auth"] == "Bearer secret-token"


def test_fhir_target_reports_the_servers_outcome(tmp_path: Path, fhir_server) -> None:
    url, handler = fhir_server
    handler.status = 400
    with pytest.raises(DeliveryError, match="answered 400: Bundle.entry is required"):
        deliver(FHIR, url, _results(tmp_path), Settings(data_dir=tmp_path))
    with pytest.raises(DeliveryError, match="unreachable"):
        deliver(FHIR, f"http://127.0.0.1:{free_port()}/fhir", _results(tmp_path), Settings(data_dir=tmp_path))


def test_retry_delay_doubles_up_to_an_hour_then_gives_up(tmp_path: Path) -> None:
    config = Settings(data_dir=tmp_path, delivery_retry_seconds=30, delivery_give_up_hours=72)
    now = dt.datetime.now(dt.UTC)
    assert [retry_delay(config, n, now).total_seconds() for n in (1, 2, 3)] == [30, 60, 120]
    assert retry_delay(config, 20, now) == dt.timedelta(hours=1)
    assert retry_delay(config, 1, now - dt.timedelta(hours=73)) is None
