"""The REST API in process (FastAPI's TestClient), with a real node: job store, spool and Celery's queue."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from plugin.api import create_app
from plugin.config import DEMO_PRIOR, Settings
from plugin.jobs import JobState
from plugin.orchestrator import Orchestrator
from plugin.server import readiness
from plugin.tasks import CeleryDispatcher, configure
from tests.support.net import skip_retry_backoff

TOKEN = "api-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def node(tmp_path: Path) -> Orchestrator:
    config = Settings(data_dir=tmp_path, api_token=TOKEN, max_hypothesis_chars=80)
    configure(config)  # the embedded (in-memory) broker: tasks are queued, no worker runs them here
    return Orchestrator(config, CeleryDispatcher())


@pytest.fixture
def client(node: Orchestrator) -> TestClient:
    return TestClient(create_app(node, readiness=lambda: readiness(node)))


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
                     client.get("/v1/counterfactuals/abc", headers={"Authorization": "Bearer wrong"})):
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
    ({"hypothesis": "x" * 81}, "the hypothesis has 81 characters; the limit is 80"),
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


def test_an_unknown_study_without_a_pacs_is_a_404(client: TestClient) -> None:
    response = client.post("/v1/counterfactuals", json=_body("1.2.3.4"), headers=AUTH)
    assert response.status_code == 404
    assert "no PACS is configured" in response.json()["detail"]


def test_an_unreachable_pacs_is_a_502(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    skip_retry_backoff(monkeypatch)
    config = Settings(data_dir=tmp_path, api_token=TOKEN, pacs_url="http://127.0.0.1:9")
    node = Orchestrator(config, CeleryDispatcher())
    response = TestClient(create_app(node)).post("/v1/counterfactuals", json=_body("1.2.3.4"), headers=AUTH)
    assert response.status_code == 502
    assert "did not answer" in response.json()["detail"]


def test_unknown_job_is_a_404(client: TestClient) -> None:
    response = client.get("/v1/counterfactuals/0123456789abcdef", headers=AUTH)
    assert response.status_code == 404 and response.json()["detail"] == "no counterfactual request with this id"


def test_health_readiness_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["problems"] == ["DICOM listener not running"]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/counterfactuals", "/v1/counterfactuals/{job_id}", "/healthz", "/readyz"} <= set(paths)


def test_the_api_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bearer token"):
        create_app(Orchestrator(Settings(data_dir=tmp_path), CeleryDispatcher()))
