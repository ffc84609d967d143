"""Observability: Prometheus metrics (the node's /metrics, a worker's own port), JSON log lines with the job and
request ids, and /readyz's dependencies (tests/test_api.py has the rest of /readyz).

The end-to-end test runs what IT would: `progemu serve` (io queue) and `progemu worker` (gpu queue) on a Redis broker,
a DCMTK storescp as the PACS that gets the results, and Debian's Prometheus scraping both every second; the values
are read back through Prometheus's HTTP API.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pydicom
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from plugin import logs
from plugin.api import create_app
from plugin.clients import ClientStore
from plugin.config import Settings
from plugin.jobs import NewJob
from plugin.metrics import node_registry
from plugin.orchestrator import Orchestrator
from plugin.tasks import GPU, IO, CeleryDispatcher, app, configure, use_node
from plugin.tasks import generate as generate_task
from tests.conftest import phi_forms
from tests.support.dicom_fixtures import TEST_PHI, phantom_prior
from tests.support.net import free_port, stop_process, wait_for
from tests.support.node_server import API_TOKEN, BIN, NodeServer
from tests.support.prometheus import Prometheus, Target
from tests.support.studies import fresh_prior

HYPOTHESIS = "The left pleural effusion worsens."


def _node(tmp_path: Path) -> Orchestrator:
    config = Settings(data_dir=tmp_path / "data")
    configure(config)  # the embedded (in-memory) broker: tasks wait in its queues, no worker takes them here
    return Orchestrator(config, CeleryDispatcher())


def _samples(text: str, name: str) -> dict[str, float]:
    """The samples of one metric family in Prometheus's text format, by their one label's value ('' if none)."""
    family = next(f for f in text_string_to_metric_families(text) if f.name == name)
    return {next(iter(s.labels.values()), ""): s.value for s in family.samples if s.name.startswith(name)}


def test_metrics_need_the_metrics_scope_and_count_jobs_and_queued_tasks(tmp_path: Path) -> None:
    node = _node(tmp_path)
    clients = ClientStore(node.config.resolved_database_url())
    scraper = {"Authorization": f"Bearer {clients.add('prometheus', ['metrics'])[1]}"}
    reader = {"Authorization": f"Bearer {clients.add('ris', ['submit', 'read'])[1]}"}
    api = TestClient(create_app(node, clients=clients, metrics=node_registry(
        node.store, node.spool, node.config.data_dir, broker=app, queues=(GPU, IO))))

    assert api.get("/metrics").status_code == 401
    refused = api.get("/metrics", headers=reader)
    assert refused.status_code == 403 and refused.json()["detail"] == "this client lacks the metrics scope"
    assert api.get("/v1/counterfactuals", headers=scraper).status_code == 403  # metrics, and nothing else

    before = _samples(api.get("/metrics", headers=scraper).text, "progemu_queue_depth")
    jobs = [node.submit(NewJob(request_id=f"r{i}", study_instance_uid=f"1.2.3.{i}", hypothesis=HYPOTHESIS,
                               sampler=node.default_sampler(), source="test"))[0] for i in range(3)]
    node.fail(jobs[0].id, "given up by the test")  # the other two wait for their study (retrieval queued on io)

    scraped = api.get("/metrics", headers=scraper)
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    assert _samples(scraped.text, "progemu_jobs") == {"queued": 0, "receiving": 2, "running": 0, "delivering": 0,
                                                      "done": 0, "failed": 1}
    depth = _samples(scraped.text, "progemu_queue_depth")
    assert depth[IO] == before[IO] + 3 and depth[GPU] == before[GPU]  # three retrievals (one job failed later)
    assert _samples(scraped.text, "progemu_spool_bytes")[""] == node.spool.used_bytes
    assert _samples(scraped.text, "progemu_data_disk_free_bytes")[""] > 0
    assert {"dicom", "fhir"} <= set(_samples(scraped.text, "progemu_delivery_attempts"))  # at 0 before any
    assert {"orthanc", "dicom"} <= set(_samples(scraped.text, "progemu_retrieval_failures"))


def test_json_log_lines_carry_the_request_id_and_the_job_id_and_no_patient_data(tmp_path: Path) -> None:
    node = _node(tmp_path)
    use_node(node)
    prior = phantom_prior(modality="OT")
    prior.SOPClassUID = prior.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # an SR: no image
    path = tmp_path / "sr.dcm"
    prior.save_as(path, enforce_file_format=True)
    node.spool.write(prior.StudyInstanceUID, prior.SeriesInstanceUID, prior.SOPInstanceUID, path.read_bytes())
    clients = ClientStore(node.config.resolved_database_url())
    auth = {"Authorization": f"Bearer {clients.add('ris', ['submit'])[1]}"}
    api = TestClient(create_app(node, clients=clients))
    stream = io.StringIO()
    handler = logs.handler("json", stream)
    logging.getLogger("plugin").addHandler(handler)
    try:
        created = api.post("/v1/counterfactuals", headers=auth | {"X-Request-ID": "ris-4711.1"},
                           json={"study_instance_uid": prior.StudyInstanceUID, "hypothesis": HYPOTHESIS})
        anonymous = api.get("/healthz", headers={"X-Request-ID": "not a plain token"})
        job_id = created.json()["id"]
        generate_task.apply(args=(job_id,))  # through Celery's tracer, which sends task_prerun and task_postrun
    finally:
        logging.getLogger("plugin").removeHandler(handler)
    assert created.status_code == 201 and created.headers["X-Request-ID"] == "ris-4711.1"
    assert len(anonymous.headers["X-Request-ID"]) == 32 and anonymous.headers["X-Request-ID"] != "not a plain token"
    assert logs.job_id.get() is None and logs.request_id.get() is None  # nothing left bound after the task

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    accepted = [line for line in lines if line["logger"] == "plugin.api"]
    assert accepted and all(line["request_id"] == "ris-4711.1" for line in accepted)
    failed = [line for line in lines if line.get("job_id") == job_id and "failed" in line["message"]]
    assert failed and failed[0]["level"] == "WARNING" and "request_id" not in failed[0]
    assert not [form for form in phi_forms(TEST_PHI) if form in stream.getvalue()]


def _json_lines(path: Path) -> list[dict]:
    """Every line of a log written with PROGEMU_LOG_FORMAT=json, each of which must be one JSON object."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.integration
def test_prometheus_scrapes_the_node_and_a_worker(redis_broker: str, tmp_path: Path) -> None:
    received, destination_port, worker_metrics = tmp_path / "received", free_port(), free_port()
    received.mkdir()
    common = {"PROGEMU_BROKER_URL": redis_broker, "PROGEMU_LOG_FORMAT": "json"}
    node = NodeServer(tmp_path / "node", env=common | {
        "PROGEMU_WORKER_QUEUES": IO, "PROGEMU_PEERS": "STORESCU@127.0.0.1:104",
        "PROGEMU_DESTINATION": f"STORESCP@127.0.0.1:{destination_port}"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROGEMU_")} | common | {
        "PROGEMU_DATA_DIR": node.env["PROGEMU_DATA_DIR"], "PROGEMU_METRICS_PORT": str(worker_metrics)}
    worker_log, worker_out = tmp_path / "worker.log", (tmp_path / "worker.out").open("wb")
    prometheus = Prometheus(tmp_path / "prometheus", [
        Target("node", f"127.0.0.1:{node.http_port}", bearer_token=API_TOKEN),
        Target("worker", f"127.0.0.1:{worker_metrics}")])
    storescp = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(received), str(destination_port)])
    worker = None
    try:
        node.start()
        with worker_log.open("wb") as stderr:  # stdout has Celery's banner; the log lines go to stderr
            worker = subprocess.Popen([str(BIN / "progemu"), "-v", "worker", "--queues", GPU], env=env,
                                      stdout=worker_out, stderr=stderr)
        prometheus.start()
        wait_for(lambda: prometheus.value('up{job="node"}') == 1 and prometheus.value('up{job="worker"}') == 1
                 and prometheus.value('progemu_queue_depth{queue="gpu"}') == 0, 90,
                 f"both targets scraped (worker log: {worker_log})")
        assert not prometheus.value("sum(progemu_generation_seconds_count)")  # none yet (0, or no child yet)

        jobs = []
        for name, body_part in (("chest", "CHEST"), ("knee", "KNEE")):  # the knee is refused before generation
            prior = fresh_prior(tmp_path / f"{name}.dcm", BodyPartExamined=body_part)
            pushed = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", "PROGEMU", "127.0.0.1",
                                     str(node.dicom_port), str(tmp_path / f"{name}.dcm")], capture_output=True,
                                    text=True, timeout=60)
            assert pushed.returncode == 0, pushed.stderr
            response = httpx.post(node.url + "/v1/counterfactuals", headers=node.headers | {"X-Request-ID": name},
                                  json={"study_instance_uid": prior.StudyInstanceUID, "hypothesis": HYPOTHESIS},
                                  timeout=30)
            assert response.status_code == 201, response.text
            jobs.append(node.wait_until(response.json()["id"], {"done", "failed"}))
        done, refused = jobs
        assert done["state"] == "done" and refused["state"] == "failed", (done["reason"], refused["reason"])

        wait_for(lambda: prometheus.value('progemu_jobs{state="done"}') == 1
                 and prometheus.value('progemu_jobs{state="failed"}') == 1
                 and prometheus.value("sum(progemu_generation_seconds_count)") == 1, 60,
                 "Prometheus to see both jobs finished and one generation")
        assert prometheus.value('sum(progemu_jobs{state=~"queued|receiving|running|delivering"})') == 0
        assert prometheus.value('sum(progemu_generated_tokens_total{job="worker"})') > 0
        assert prometheus.value('progemu_generation_tokens_per_second{job="worker"}') > 0
        loaded = prometheus.query('progemu_model_load_seconds{job="worker"}')
        assert [series["metric"]["checkpoint_sha256"] for series in loaded] == [
            done["results"]["algorithm"]["checkpoint_sha256"]]
        assert prometheus.value('progemu_delivery_attempts_total{job="node", kind="dicom"}') == 1
        assert prometheus.value('progemu_delivery_failures_total{job="node", kind="dicom"}') == 0
        assert prometheus.value('progemu_queue_depth{queue="gpu"}') == 0
        assert prometheus.value('progemu_spool_limit_bytes{job="node"}') > 0
        assert prometheus.value('progemu_data_disk_free_bytes{job="worker"}') > 0

        node_lines, worker_lines = _json_lines(node.log_path), _json_lines(worker_log)
        assert any(line.get("request_id") == "chest" and done["id"] in line["message"] for line in node_lines)
        assert any(line.get("job_id") == done["id"] for line in worker_lines)
        assert any(line.get("job_id") == refused["id"] and line["level"] == "WARNING" for line in worker_lines)
        logged = node.log_path.read_text() + worker_log.read_text()
        assert not [form for form in phi_forms(TEST_PHI) if form in logged]
        assert {pydicom.dcmread(p).SOPInstanceUID for p in received.iterdir()} == {
            output["sop_instance_uid"] for output in done["results"]["outputs"]}
    finally:
        prometheus.stop()
        stop_process(worker, timeout=30)
        worker_out.close()
        node.stop()
        storescp.terminate()
        storescp.wait(10)


def test_a_worker_metrics_port_in_use_stops_the_worker_with_one_line(redis_broker: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROGEMU_")} | {
            "PROGEMU_BROKER_URL": redis_broker, "PROGEMU_DATA_DIR": str(tmp_path), "PROGEMU_WORKER_QUEUES": IO,
            "PROGEMU_METRICS_PORT": str(taken.getsockname()[1])}
        result = subprocess.run([str(Path(sys.executable).parent / "progemu"), "worker"], env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("progemu: error: ") and "in use" in result.stderr
