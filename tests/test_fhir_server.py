"""Our FHIR output against a real FHIR R4 implementation (Medplum's router and validator), as delivery sends it."""

from __future__ import annotations

import httpx

from dicom_io.fhir import as_transaction
from tests.fhir_server import FhirServer, fhir_server  # noqa: F401 - the session fixture
from tests.test_fhir import build, dicom  # noqa: F401 - the DICOM objects the bundle describes


def _count(server: FhirServer, resource_type: str) -> int:
    return len(httpx.get(f"{server.base_url}/{resource_type}").json().get("entry", []))


def test_r4b_results_are_accepted_once_however_often_they_are_sent(fhir_server: FhirServer, dicom) -> None:  # noqa: F811
    transaction = as_transaction(build(dicom, "R4B"))
    before = _count(fhir_server, "Observation")
    for _ in range(2):  # a resend from the outbox must update, not duplicate
        response = httpx.post(fhir_server.base_url, json=transaction, timeout=30)
        assert response.status_code == 200, response.text
        statuses = [entry["response"]["status"] for entry in response.json()["entry"]]
        assert all(status.startswith(("200", "201")) for status in statuses), statuses
    assert _count(fhir_server, "Observation") == before + 1
    for entry in transaction["entry"]:
        resource = entry["resource"]
        stored = httpx.get(f"{fhir_server.base_url}/{resource['resourceType']}/{resource['id']}").json()
        assert stored["id"] == resource["id"]
    report = next(e["resource"] for e in transaction["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    stored = httpx.get(f"{fhir_server.base_url}/DiagnosticReport/{report['id']}").json()
    assert stored["status"] == report["status"] and stored["conclusion"] == report["conclusion"]


def test_an_invalid_resource_is_refused_with_an_operation_outcome(fhir_server: FhirServer) -> None:  # noqa: F811
    response = httpx.post(f"{fhir_server.base_url}/Observation", json={"resourceType": "Observation"}, timeout=30)
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert {"Observation.status", "Observation.code"} <= {e for i in outcome["issue"] for e in i["expression"]}
