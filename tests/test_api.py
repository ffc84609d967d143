"""The REST API in process (FastAPI's TestClient), with a real node: job store, spool and Celery's queue.

The body limit and the order of the checks are also tested at the ASGI level (what a server hands the app, chunk by
chunk) and through a real uvicorn on a loopback port, to see how much of a body is read before the answer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import socket
import threading
from collections.abc import Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pydicom
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from plugin.api import create_app, public_text
from plugin.config import DEMO_PRIOR, Settings
from plugin.errors import UsageError
from plugin.jobs import JobState, NewJob
from plugin.orchestrator import Orchestrator
from plugin.results import AlgorithmIdentity, JobResults
from plugin.server import readiness
from plugin.tasks import CeleryDispatcher, configure
from tests.support.generation import generated
from tests.support.net import free_port, skip_retry_backoff, wait_for

TOKEN = "api-test-token-0123456789abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY_LIMIT = 4096
FIFTY_MIB = 50 * 2**20


@pytest.fixture
def node(tmp_path: Path) -> Orchestrator:
    config = Settings(data_dir=tmp_path, api_token=TOKEN, max_hypothesis_chars=80, api_max_body_bytes=BODY_LIMIT)
    configure(config)  # the embedded (in-memory) broker: tasks are queued, no worker runs them here
    return Orchestrator(config, CeleryDispatcher())


@pytest.fixture
def app(node: Orchestrator) -> FastAPI:
    return create_app(node, readiness=lambda: readiness(node))


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app)


@pytest.fixture
def study(node: Orchestrator) -> str:
    ds = pydicom.dcmread(DEMO_PRIOR)
    node.spool.write(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, DEMO_PRIOR.read_bytes())
    return ds.StudyInstanceUID


def _body(study: str, **overrides) -> dict:
    return {"study_instance_uid": study, "hypothesis": "The left pleural effusion worsens.", **overrides}


def test_every_v1_route_needs_the_bearer_token(client: TestClient, study: str) -> None:
    for response in (client.post("/v1/counterfactuals", json=_body(study)),
                     client.get("/v1/counterfactuals"),
                     client.get("/v1/counterfactuals/abc", headers={"Authorization": "Bearer wrong"}),
                     client.get("/v1/counterfactuals", headers={"Authorization": f"Basic {TOKEN}"})):
        assert response.status_code == 401
        assert response.json()["detail"] == "missing or wrong bearer token"
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_request_for_a_spooled_study_is_queued_and_idempotent(client: TestClient, study: str,
                                                                node: Orchestrator) -> None:
    first = client.post("/v1/counterfactuals", json=_body(study, request_id="ris-42", seed=5, requester="dr-x"),
                        headers=AUTH)
    assert first.status_code == 201, first.text
    job = first.json()
    assert job["state"] == JobState.QUEUED and job["sampler"]["seed"] == 5 and job["sampler"]["cfg_scale"] == 1.5
    assert job["requester"] == "default:dr-x"  # the deprecated token is the client "default", with on-behalf
    again = client.post("/v1/counterfactuals", json=_body(study, request_id="ris-42", seed=6), headers=AUTH)
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    assert len(node.store.list()) == 1
    read = client.get(f"/v1/counterfactuals/{job['id']}", headers=AUTH)
    assert read.status_code == 200 and read.json()["hypothesis"] == "The left pleural effusion worsens."
    listed = client.get("/v1/counterfactuals", params={"study_instance_uid": study, "state": "queued"},
                        headers=AUTH).json()["items"]
    assert [item["id"] for item in listed] == [job["id"]]
    assert client.get("/v1/counterfactuals", params={"state": "done"}, headers=AUTH).json()["items"] == []


@pytest.mark.parametrize(("overrides", "message"), [
    ({"hypothesis": "   "}, "the hypothesis is empty"),
    ({"hypothesis": "x" * 81}, "hypothesis: String should have at most 80 characters"),
    ({"requester": "u" * 65}, "requester: String should have at most 64 characters"),
    ({"requester": "dr\nx"}, "requester: String should match pattern"),
    ({"seed": -1}, "seed must be an integer from 0 to 2**63-1"),
    ({"seed": "abc"}, "seed: Input should be a valid integer"),
    ({"cfg_scale": 99}, "cfg-scale must be between 0 and 30"),
    ({"top_p": 0}, "top-p must be in (0, 1]"),
    ({"temperature": -1}, "temperature must be between 0 (greedy) and 10"),
    ({"study_instance_uid": "1.2.abc"}, "study_instance_uid: String should match pattern"),
    ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
])
def test_bad_input_gets_a_422_with_a_clear_message(client: TestClient, study: str, overrides: dict,
                                                   message: str, node: Orchestrator) -> None:
    response = client.post("/v1/counterfactuals", json=_body(study, **overrides), headers=AUTH)
    assert response.status_code == 422
    assert message in response.json()["detail"]
    assert node.store.list() == []


def test_the_schema_bounds_the_hypothesis_by_the_configured_limit(client: TestClient) -> None:
    schema = client.get("/openapi.json", headers=AUTH).json()["components"]["schemas"]["CounterfactualRequest"]
    assert schema["properties"]["hypothesis"]["maxLength"] == 80
    assert schema["properties"]["requester"]["anyOf"][0]["maxLength"] == 64


def test_an_unknown_study_without_a_pacs_is_a_404(client: TestClient) -> None:
    response = client.post("/v1/counterfactuals", json=_body("1.2.3.4"), headers=AUTH)
    assert response.status_code == 404
    assert "no PACS is configured" in response.json()["detail"]


def test_an_unreachable_pacs_is_a_502_without_its_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    skip_retry_backoff(monkeypatch)
    config = Settings(data_dir=tmp_path, api_token=TOKEN, pacs_url="http://127.0.0.1:9")
    node = Orchestrator(config, CeleryDispatcher())
    response = TestClient(create_app(node)).post("/v1/counterfactuals", json=_body("1.2.3.4"), headers=AUTH)
    assert response.status_code == 502
    assert response.json()["detail"] == "the PACS could not be reached; try again later"
    assert "127.0.0.1:9" in caplog.text  # the operator has the address in the log
    assert "1.2.3.4" not in caplog.text


def test_unknown_job_is_a_404(client: TestClient) -> None:
    response = client.get("/v1/counterfactuals/0123456789abcdef", headers=AUTH)
    assert response.status_code == 404 and response.json()["detail"] == "no counterfactual request with this id"


def test_health_and_readiness_are_open_the_schema_is_behind_the_token_and_the_docs_are_off(
        client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["problems"] == ["listener: not running"]
    dependencies = ready.json()["dependencies"]
    assert dependencies["listener"] == {"ok": False, "state": "not running", "required": True, "details": {}}
    assert dependencies["job_store"]["ok"] and dependencies["broker"]["state"] == "embedded"
    assert dependencies["spool"]["state"] == "writable" and dependencies["spool"]["details"]["disk_free_bytes"] > 0
    assert dependencies["pacs"] == {"ok": True, "state": "not configured", "required": False, "details": {}}
    assert not dependencies["model"]["required"]
    assert client.get("/openapi.json").status_code == 401
    paths = client.get("/openapi.json", headers=AUTH).json()["paths"]
    assert {"/v1/counterfactuals", "/v1/counterfactuals/{job_id}", "/healthz", "/readyz"} <= set(paths)
    for docs in ("/docs", "/redoc", "/docs/oauth2-redirect"):  # pages that load their scripts from a CDN
        assert client.get(docs, headers=AUTH).status_code == 404


def test_the_api_refuses_to_start_without_a_token_or_a_client(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no client"):
        create_app(Orchestrator(Settings(data_dir=tmp_path), CeleryDispatcher()))


@pytest.mark.parametrize("weak", ["x", "api-test-token", "0123456789abcdef0123456789abcde"])
def test_the_api_refuses_a_weak_token(tmp_path: Path, weak: str) -> None:
    with pytest.raises(UsageError, match=f"PROGEMU_API_TOKEN has {len(weak)} characters; use at least 32"):
        create_app(Orchestrator(Settings(data_dir=tmp_path, api_token=weak), CeleryDispatcher()))


# --- the order of the checks: body limit, token, then the body -----------------------------------------------------

def test_malformed_json_without_a_token_is_a_401_not_a_422(client: TestClient) -> None:
    response = client.post("/v1/counterfactuals", content=b'{"study_instance_uid": ',
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 401
    with_token = client.post("/v1/counterfactuals", content=b'{"study_instance_uid": ',
                             headers={"Content-Type": "application/json", **AUTH})
    assert with_token.status_code == 422


def _asgi_post(app: FastAPI, chunks: Iterable[bytes], headers: dict[str, str]) -> tuple[int, int]:
    """POST a body to the app as a server would, chunk by chunk; return the status and the bytes the app pulled."""
    pulled = 0
    body = iter(chunks)
    messages: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        chunk = next(body, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(dict(message))

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/counterfactuals", "raw_path": b"/v1/counterfactuals", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080),
             "headers": [(k.lower().encode(), v.encode()) for k, v in
                         {"content-type": "application/json", **headers}.items()]}
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in messages if m["type"] == "http.response.start"), pulled


def _fifty_mib() -> Iterator[bytes]:
    return itertools.repeat(b" " * 65536, FIFTY_MIB // 65536)


@pytest.mark.parametrize("auth", [{}, AUTH], ids=["without token", "with token"])
def test_a_body_declared_too_large_is_a_413_before_anything_reads_it(app: FastAPI, auth: dict) -> None:
    assert _asgi_post(app, _fifty_mib(), {"content-length": str(FIFTY_MIB), **auth}) == (413, 0)


def test_a_chunked_body_without_a_token_is_a_401_unread(app: FastAPI) -> None:
    assert _asgi_post(app, _fifty_mib(), {"transfer-encoding": "chunked"}) == (401, 0)


def test_a_chunked_body_past_the_limit_is_a_413_as_it_streams(app: FastAPI, node: Orchestrator) -> None:
    status, pulled = _asgi_post(app, _fifty_mib(), {"transfer-encoding": "chunked", **AUTH})
    assert status == 413
    assert pulled <= BODY_LIMIT + 65536  # the chunk that crossed the limit, and no more
    assert node.store.list() == []


def test_a_real_server_answers_a_declared_50_mib_body_without_reading_it(app: FastAPI) -> None:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 10, "uvicorn to start")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(f"POST /v1/counterfactuals HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               f"Content-Length: {FIFTY_MIB}\r\n\r\n".encode() + b"{" * 1024)
            answer = connection.recv(4096).decode("latin-1")  # arrives while 50 MiB minus 1 KiB were never sent
        assert answer.startswith("HTTP/1.1 413 ")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- what callers see of errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("stored", "shown"), [
    ("the PACS did not send the study: association with PACS@10.1.2.3:104 failed (rejected)",
     "the PACS did not send the study: association with PACS failed (rejected)"),
    ("the PACS at http://user@pacs.internal:8042/orthanc did not answer (ConnectError)",
     "the PACS at [address] did not answer (ConnectError)"),
    ("C-MOVE from MY PACS@[fd00::5]:11112 ended with status 0xA701", "C-MOVE from MY PACS ended with status 0xA701"),
    ("cannot reach pacs.example.org:4242 or [fd00::1]:80", "cannot reach [address] or [address]"),
    ("[Errno 2] No such file or directory: '/var/lib/progemu/results/abc/fhir.json'",
     "[Errno 2] No such file or directory: '[path]'"),
    ("generation failed after 3 attempts: TimeoutError", "generation failed after 3 attempts: TimeoutError"),
    ("3 of 3 deliveries failed; the CR/DX/SC prior at 12:30", "3 of 3 deliveries failed; the CR/DX/SC prior at 12:30"),
])
def test_public_text_keeps_the_sentence_and_drops_addresses_and_paths(stored: str, shown: str) -> None:
    assert public_text(stored) == shown


def test_job_reasons_and_deliveries_reach_callers_without_addresses(client: TestClient, node: Orchestrator,
                                                                    tmp_path: Path) -> None:
    job, _ = node.store.submit(NewJob(request_id="r", study_instance_uid="1.2.3", hypothesis="h", sampler={},
                                      source="test"))
    results = JobResults(outputs=(), interpretation="i", settings={}, files={},
                         algorithm=AlgorithmIdentity(name="ProgEmu", version="t", checkpoint_sha256="0" * 64))
    generated(node.store, job.id, results, [("dicom", "ORTHANC@10.0.0.5:4242"),
                                            ("fhir", "https://fhir.internal:8443/fhir")])
    delivery = node.store.require(job.id).deliveries[0].id
    node.store.delivery_attempt(delivery, error="association with ORTHANC@10.0.0.5:4242 failed (rejected)",
                                retry_in=dt.timedelta(minutes=1))
    node.store.transition(job.id, JobState.FAILED, expect=[JobState.DELIVERING],
                          reason="the PACS at http://10.0.0.5:8042 did not answer (ConnectError)")
    shown = client.get(f"/v1/counterfactuals/{job.id}", headers=AUTH).json()
    assert shown["reason"] == "the PACS at [address] did not answer (ConnectError)"
    assert [(d["kind"], d["target"]) for d in shown["deliveries"]] == [("dicom", "ORTHANC"), ("fhir", "[address]")]
    assert shown["deliveries"][0]["last_error"] == "association with ORTHANC failed (rejected)"
    assert "10.0.0.5" not in json.dumps(client.get("/v1/counterfactuals", headers=AUTH).json())


def test_an_internal_failure_is_a_generic_500(app: FastAPI, node: Orchestrator, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    def broken(job_id: str) -> None:
        raise RuntimeError("could not open /var/lib/progemu/jobs.sqlite at db.internal:5432")

    monkeypatch.setattr(node.store, "get", broken)
    response = TestClient(app, raise_server_exceptions=False).get("/v1/counterfactuals/abc", headers=AUTH)
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error; the node's log has the details"}
    assert "GET /v1/counterfactuals/{job_id} failed: RuntimeError" in caplog.text
