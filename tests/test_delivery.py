"""Delivery: the registry of target handlers, the outbox's transient/permanent split, the retry schedule, and
transport security (FHIR only over https unless allowed, never the token in clear; C-STORE over TLS)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dicom_io.listener import Listener, ListenerConfig, tls_server_context
from dicom_io.peers import DicomPeer
from dicom_io.spool import Spool
from dicom_io.synthetic import build_synthetic_image
from plugin import delivery
from plugin.config import Settings
from plugin.delivery import DICOM, FHIR, check_settings, deliver, retry_delay
from plugin.errors import DeliveryError, PermanentError, UnknownDeliveryTarget
from plugin.jobs import DeliveryState, JobState, NewJob
from plugin.orchestrator import Orchestrator
from plugin.results import AlgorithmIdentity, DicomOutput, FileKind, JobResults, OutputKind
from plugin.tasks import CeleryDispatcher, configure
from tests.support.dicom_fixtures import chest_pixels
from tests.support.generation import generated
from tests.support.net import free_port
from tests.support.pki import TestCa


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
    generated(node.store, job.id, results or _results(tmp_path), targets)
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
    with pytest.raises(UnknownDeliveryTarget, match="'hl7v2'.*known: dicom, dicomweb, fhir"):
        deliver("hl7v2", "mllp://ris:2575", _results(tmp_path), node.config)
    assert issubclass(UnknownDeliveryTarget, PermanentError)
    job_id = _delivering_job(node, tmp_path, ("hl7v2", "mllp://ris:2575"))
    [delivery_id] = node.store.claim_due_deliveries(dt.timedelta(minutes=1), job_id=job_id)
    node.deliver(delivery_id)
    job = node.store.get(job_id)
    assert job.deliveries[0].state == DeliveryState.FAILED and "hl7v2" in job.deliveries[0].last_error
    assert job.state == JobState.FAILED and job.reason == "1 of 1 deliveries failed"
    node.store.release_delivery_claims()
    assert node.sweep_outbox() == 0  # nothing left pending: the sweeper never hands it out again


def _dicom_results(tmp_path: Path) -> JobResults:
    image = build_synthetic_image(chest_pixels())
    image.save_as(tmp_path / "counterfactual.dcm", enforce_file_format=True)
    return _results(tmp_path).model_copy(update={
        "outputs": (DicomOutput(kind=OutputKind.SC, series_instance_uid=image.SeriesInstanceUID,
                                sop_instance_uid=image.SOPInstanceUID, sop_class_uid=image.SOPClassUID),),
        "files": {FileKind.SC: str(tmp_path / "counterfactual.dcm")}})


def test_a_peer_that_is_down_is_retried_later(tmp_path: Path, node: Orchestrator) -> None:
    results = _dicom_results(tmp_path)
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


def _serve(context: ssl.SSLContext | None) -> Iterator[tuple[str, type[_FhirServer]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FhirServer)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)  # quick stop
    thread.start()
    _FhirServer.received, _FhirServer.status = [], 200
    try:
        yield f"{'https' if context else 'http'}://127.0.0.1:{server.server_port}/fhir", _FhirServer
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fhir_server() -> Iterator[tuple[str, type[_FhirServer]]]:
    """A FHIR server over plain http."""
    yield from _serve(None)


@pytest.fixture
def fhir_https_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, type[_FhirServer]]]:
    """A FHIR server over https, its certificate from a test CA that httpx trusts (SSL_CERT_FILE)."""
    ca = TestCa.create(tmp_path / "pki")
    issued = ca.issue("fhir", common_name="fhir.test")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert))
    yield from _serve(tls_server_context(issued.cert, issued.key, None))


def test_fhir_target_posts_a_transaction_with_the_token(tmp_path: Path, fhir_https_server) -> None:
    url, handler = fhir_https_server
    deliver(FHIR, url, _results(tmp_path), Settings(data_dir=tmp_path, fhir_token="secret-token"))
    [request] = handler.received
    assert request["body"]["type"] == "transaction" and request["auth"] == "Bearer secret-token"


def test_fhir_target_reports_the_servers_outcome(tmp_path: Path, fhir_https_server) -> None:
    url, handler = fhir_https_server
    handler.status = 400
    with pytest.raises(DeliveryError, match="answered 400: Bundle.entry is required"):
        deliver(FHIR, url, _results(tmp_path), Settings(data_dir=tmp_path))
    with pytest.raises(DeliveryError, match="unreachable"):
        deliver(FHIR, f"https://127.0.0.1:{free_port()}/fhir", _results(tmp_path), Settings(data_dir=tmp_path))


def test_plain_http_fhir_is_refused_and_nothing_is_sent(tmp_path: Path, fhir_server) -> None:
    url, handler = fhir_server
    with pytest.raises(PermanentError, match="plain http: the FHIR token and the results would travel in clear"):
        deliver(FHIR, url, _results(tmp_path), Settings(data_dir=tmp_path, fhir_token="secret-token"))
    assert handler.received == []


def test_plain_http_fhir_when_allowed_never_carries_the_token(tmp_path: Path, fhir_server,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    url, handler = fhir_server
    with caplog.at_level(logging.WARNING, logger="plugin.delivery"):
        deliver(FHIR, url, _results(tmp_path),
                Settings(data_dir=tmp_path, fhir_token="secret-token", fhir_allow_http=True))
    [request] = handler.received
    assert request["body"]["type"] == "transaction" and request["auth"] is None
    assert "without the FHIR token" in caplog.text and "secret-token" not in caplog.text


def test_a_plain_http_fhir_delivery_fails_at_once_not_retried(tmp_path: Path, node: Orchestrator,
                                                             fhir_server) -> None:
    url, handler = fhir_server
    job_id = _delivering_job(node, tmp_path, (FHIR, url))
    [delivery_id] = node.store.claim_due_deliveries(dt.timedelta(minutes=1), job_id=job_id)
    node.deliver(delivery_id)
    [item] = node.store.require(job_id).deliveries
    assert item.state == DeliveryState.FAILED and "plain http" in (item.last_error or "")
    assert handler.received == []


@pytest.mark.parametrize(("settings", "refusal"), [
    pytest.param({"fhir_url": "http://fhir.example/r5"}, "fhir_url is plain http", id="http"),
    pytest.param({"fhir_url": "HTTP://fhir.example/r5"}, "fhir_url is plain http", id="http-upper-case"),
    pytest.param({"fhir_url": "ftp://fhir.example/r5"}, "must be an https:// URL", id="another-scheme"),
    pytest.param({"fhir_url": "fhir.example/r5"}, "must be an https:// URL", id="no-scheme"),
    pytest.param({"fhir_url": "http://fhir.example/r5", "fhir_allow_http": True}, None, id="http-allowed"),
    pytest.param({"fhir_url": "https://fhir.example/r5"}, None, id="https"),
    pytest.param({}, None, id="no-fhir"),
    pytest.param({"outbound_tls": True, "tls_cert": "/nonexistent/node.pem", "tls_key": "/nonexistent/node.key"},
                 "outbound_tls: cannot load", id="tls-files-missing"),
    pytest.param({"outbound_tls": True, "tls_key": "/nonexistent/node.key"}, "needs both tls_cert and tls_key",
                 id="tls-key-without-cert"),
])
def test_check_settings_refuses_at_start_what_every_delivery_would_refuse(tmp_path: Path, settings: dict,
                                                                          refusal: str | None) -> None:
    config = Settings(data_dir=tmp_path, **settings)
    if refusal is None:
        check_settings(config)
        return
    with pytest.raises(PermanentError, match=refusal) as raised:
        check_settings(config)
    assert "\n" not in str(raised.value)


@pytest.mark.integration
def test_dicom_target_stores_over_tls_with_outbound_tls(tmp_path: Path) -> None:
    ca = TestCa.create(tmp_path / "pki")
    peer, ours = ca.issue("peer", common_name="PACS"), ca.issue("node", common_name="PROGEMU")
    listener_config = ListenerConfig(ae_title="PACS", host="127.0.0.1", port=free_port(),
                                     peers=(DicomPeer("PROGEMU", "127.0.0.1", 104),),
                                     tls_cert=peer.cert, tls_key=peer.key, tls_ca=ca.cert)
    listener = Listener(listener_config, Spool(tmp_path / "pacs", 10**8), on_complete=lambda arrival: None)
    config = Settings(data_dir=tmp_path, ae_title="PROGEMU", outbound_tls=True, tls_cert=ours.cert,
                      tls_key=ours.key, tls_ca=ca.cert)
    target = f"PACS@127.0.0.1:{listener_config.port}"
    listener.start()
    try:
        deliver(DICOM, target, _dicom_results(tmp_path), config)
        with pytest.raises(DeliveryError, match="failed"):  # the same peer without outbound_tls: refused
            deliver(DICOM, target, _dicom_results(tmp_path), config.model_copy(update={"outbound_tls": False}))
    finally:
        listener.stop()
    assert len(list((tmp_path / "pacs").rglob("*.dcm"))) == 1


def test_retry_delay_doubles_up_to_an_hour_then_gives_up(tmp_path: Path) -> None:
    config = Settings(data_dir=tmp_path, delivery_retry_seconds=30, delivery_give_up_hours=72)
    now = dt.datetime.now(dt.UTC)
    assert [retry_delay(config, n, now).total_seconds() for n in (1, 2, 3)] == [30, 60, 120]
    assert retry_delay(config, 20, now) == dt.timedelta(hours=1)
    assert retry_delay(config, 1, now - dt.timedelta(hours=73)) is None
