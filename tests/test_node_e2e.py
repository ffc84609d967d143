"""End to end against real parts: Orthanc (the PACS), `progemu serve`, a FHIR server, DCMTK, and the outbox.

Orthanc holds the study; a request to the node makes Orthanc send it, the embedded worker
generates, and the SR and SC come back into the same study in Orthanc.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.support.dicom_validators import assert_dciodvfy_clean
from tests.support.fhir_server import FhirServer, fhir_server  # noqa: F401 - the session fixture
from tests.support.net import free_port, wait_for
from tests.support.node_server import NodeServer
from tests.support.orthanc_server import PASSWORD, USER, OrthancServer
from tests.support.studies import fresh_prior

pytestmark = pytest.mark.integration

ROUTE = {"name": "push-chest", "hypothesis": "A small right pleural effusion develops.",
         "attribute": "StudyDescription", "pattern": "*ROUTE-ME*"}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, fhir_server: FhirServer):  # noqa: F811
    workdir = tmp_path_factory.mktemp("e2e")
    node_port, move_node_port = free_port(), free_port()
    orthanc = OrthancServer(workdir / "orthanc", modalities={
        "PROGEMU": ["PROGEMU", "127.0.0.1", node_port],
        "PROGEMUMOVE": ["PROGEMU2", "127.0.0.1", move_node_port]}).start()
    orthanc.move_node_port = move_node_port
    node = NodeServer(workdir / "node", dicom_port=node_port, env={
        "PROGEMU_PACS_URL": orthanc.url, "PROGEMU_PACS_USERNAME": USER, "PROGEMU_PACS_PASSWORD": PASSWORD,
        "PROGEMU_PEERS": f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", "PROGEMU_ROUTES": json.dumps([ROUTE]),
        "PROGEMU_FHIR_URL": fhir_server.base_url, "PROGEMU_FHIR_ALLOW_HTTP": "true",  # the test server: http
        "PROGEMU_FHIR_VERSION": "R4B"})
    orthanc.fhir = fhir_server
    try:
        node.start()
        yield orthanc, node, workdir
    finally:
        node.stop()
        orthanc.stop()


def _modalities(orthanc: OrthancServer, study_uid: str) -> list[str]:
    return sorted(series["MainDicomTags"].get("Modality", "") for series in orthanc.series_of(study_uid))


def test_request_brings_sr_and_sc_back_into_the_same_study(pacs, tmp_path: Path) -> None:
    orthanc, node, _ = pacs
    prior = fresh_prior(tmp_path / "prior.dcm")
    orthanc.upload(tmp_path / "prior.dcm")
    response = node.post({"study_instance_uid": prior.StudyInstanceUID, "request_id": "e2e-1", "seed": 11,
                          "hypothesis": "The left pleural effusion worsens."})
    assert response.status_code == 201, response.text
    job = node.wait_until(response.json()["id"], {"done", "failed"})
    assert job["state"] == "done", (job, node.log_tail())
    assert [(d["kind"], d["state"]) for d in job["deliveries"]] == [("dicom", "done"), ("fhir", "done")]
    assert job["deliveries"][0]["target"] == "ORTHANC"  # the API shows no addresses
    wait_for(lambda: _modalities(orthanc, prior.StudyInstanceUID) == ["DOC", "DX", "OT", "OT", "SR"], 30,
             "SC, report page and SR in Orthanc")
    assert set(job["results"]) == {"outputs", "interpretation", "algorithm", "settings", "checks"}  # the allow-list
    for output in job["results"]["outputs"]:
        kind, sop = output["kind"], output["sop_instance_uid"]
        instance_id = orthanc.client.instances.lookup(sop)
        data = orthanc.get(f"/instances/{instance_id}/file").content
        (tmp_path / f"{kind}.dcm").write_bytes(data)
        ds = pydicom.dcmread(tmp_path / f"{kind}.dcm")
        assert ds.StudyInstanceUID == prior.StudyInstanceUID and ds.PatientID == prior.PatientID
        assert_dciodvfy_clean(tmp_path / f"{kind}.dcm")
    assert job["results"]["settings"]["seed"] == "11"
    # the FHIR Bundle reached a real FHIR server (R4B output, checked there against the R4 definitions)
    reports = httpx.get(f"{orthanc.fhir.base_url}/DiagnosticReport").json()["entry"]
    assert any(job["results"]["interpretation"] in r["resource"].get("conclusion", "") for r in reports)
    again = node.post({"study_instance_uid": prior.StudyInstanceUID, "request_id": "e2e-1",
                       "hypothesis": "The left pleural effusion worsens."})
    assert again.status_code == 200 and again.json()["id"] == job["id"]


def test_a_second_request_never_receives_or_processes_our_own_outputs(pacs, tmp_path: Path) -> None:
    orthanc, node, workdir = pacs
    prior = fresh_prior(tmp_path / "prior.dcm")
    orthanc.upload(tmp_path / "prior.dcm")
    first = node.wait_until(node.post({"study_instance_uid": prior.StudyInstanceUID,
                                       "hypothesis": "The cardiomegaly worsens."}).json()["id"], {"done", "failed"})
    assert first["state"] == "done"
    wait_for(lambda: len(orthanc.series_of(prior.StudyInstanceUID)) == 5, 30, "the first results in Orthanc")
    second = node.wait_until(node.post({"study_instance_uid": prior.StudyInstanceUID,
                                        "hypothesis": "The cardiomegaly improves."}).json()["id"], {"done", "failed"})
    assert second["state"] == "done"
    spooled_series = {p.parent.name for p in (workdir / "node" / "data" / "spool" / prior.StudyInstanceUID).rglob(
        "*.dcm")}
    assert spooled_series <= {prior.SeriesInstanceUID}  # only the requested series; gone once its jobs ended
    assert len(orthanc.series_of(prior.StudyInstanceUID)) == 9


def test_a_pacs_without_orthancs_api_is_asked_with_c_move(pacs, tmp_path: Path) -> None:
    orthanc, _, _ = pacs
    node = NodeServer(tmp_path / "move-node", dicom_port=orthanc.move_node_port, env={
        "PROGEMU_AE_TITLE": "PROGEMU2", "PROGEMU_PACS_DICOM": f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
        "PROGEMU_PEERS": f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"})
    prior = fresh_prior(tmp_path / "prior.dcm")
    orthanc.upload(tmp_path / "prior.dcm")
    try:
        node.start()
        response = node.post({"study_instance_uid": prior.StudyInstanceUID, "hypothesis": "The effusion worsens.",
                              "series_instance_uids": [prior.SeriesInstanceUID]})
        assert response.status_code == 201, response.text
        job = node.wait_until(response.json()["id"], {"done", "failed"})
    finally:
        node.stop()
    assert job["state"] == "done", job
    wait_for(lambda: _modalities(orthanc, prior.StudyInstanceUID) == ["DOC", "DX", "OT", "OT", "SR"], 30,
             "results via C-MOVE")


def test_a_study_the_pacs_does_not_hold_is_a_404(pacs) -> None:
    _, node, _ = pacs
    response = node.post({"study_instance_uid": "1.2.826.0.1.3680043.99.1", "hypothesis": "The effusion resolves."})
    assert response.status_code == 404
    assert response.json()["detail"] == "the study is not in the PACS"


def test_a_pushed_study_matching_a_routing_rule_gets_its_preset_hypothesis(pacs, tmp_path: Path) -> None:
    orthanc, node, _ = pacs
    prior = fresh_prior(tmp_path / "prior.dcm", StudyDescription="Chest PA ROUTE-ME")
    [instance] = orthanc.upload(tmp_path / "prior.dcm")
    orthanc.client.modalities.send("PROGEMU", instance)  # a PACS that can only push
    jobs = wait_for(lambda: node.get_list(prior.StudyInstanceUID), 30, "a routed job")
    job = node.wait_until(jobs[0]["id"], {"done", "failed"})
    assert job["state"] == "done", job
    assert job["source"] == "route:push-chest" and job["hypothesis"] == ROUTE["hypothesis"]
    wait_for(lambda: _modalities(orthanc, prior.StudyInstanceUID) == ["DOC", "DX", "OT", "OT", "SR"], 30,
             "routed results")


def test_storescu_from_an_unknown_ae_is_refused(pacs, tmp_path: Path) -> None:
    _, node, _ = pacs
    fresh_prior(tmp_path / "prior.dcm")
    result = subprocess.run(["storescu", "-aet", "UNKNOWN", "-aec", "PROGEMU", "127.0.0.1", str(node.dicom_port),
                             str(tmp_path / "prior.dcm")], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr


def test_results_reach_a_destination_that_was_down_once_it_is_back(tmp_path: Path) -> None:
    destination_port = free_port()
    node = NodeServer(tmp_path / "node", env={"PROGEMU_PEERS": "STORESCU@127.0.0.1:104",
                                              "PROGEMU_DESTINATION": f"STORESCP@127.0.0.1:{destination_port}"})
    received = tmp_path / "received"
    received.mkdir()
    storescp = None
    try:
        node.start()
        prior = fresh_prior(tmp_path / "prior.dcm")
        pushed = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", "PROGEMU", "127.0.0.1",
                                 str(node.dicom_port), str(tmp_path / "prior.dcm")], capture_output=True, text=True)
        assert pushed.returncode == 0, pushed.stderr
        job_id = node.post({"study_instance_uid": prior.StudyInstanceUID, "hypothesis": "The effusion worsens."}
                           ).json()["id"]
        failing = wait_for(lambda: (job := node.job(job_id))["deliveries"] and job["deliveries"][0]["attempts"] >= 2
                           and job, 120, "two failed delivery attempts")
        assert failing["state"] == "delivering" and failing["deliveries"][0]["state"] == "pending"
        assert "association with STORESCP" in failing["deliveries"][0]["last_error"]
        storescp = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(received), str(destination_port)])
        job = node.wait_until(job_id, {"done", "failed"}, timeout=120)
        assert job["state"] == "done" and job["deliveries"][0]["state"] == "done"
        stored = {pydicom.dcmread(path).SOPInstanceUID for path in received.iterdir()}
        assert stored == {output["sop_instance_uid"] for output in job["results"]["outputs"]}
    finally:
        node.stop()
        if storescp:
            storescp.terminate()
            storescp.wait(10)
