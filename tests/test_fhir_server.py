"""Our FHIR output against a real FHIR R4 server (Medplum's router and validator), sent the way a delivery sends it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from dicom_io.fhir import build_fhir_bundle
from tests.support.fhir_server import FhirServer, fhir_server  # noqa: F401 - the session fixture
from tests.test_fhir import ALGORITHM, TEXT, dicom  # noqa: F401 - the DICOM objects the bundle describes
from tests.test_sr import FLAGGED

pytestmark = pytest.mark.integration


def as_put_transaction(bundle: dict[str, Any]) -> dict[str, Any]:
    """A delivery's form: a transaction of PUTs on the resources' own (SR-derived) ids, so a resend updates."""
    entries = [{**entry, "request": {"method": "PUT", "url": f"{entry['resource']['resourceType']}/"
                                                             f"{entry['resource']['id']}"}}
               for entry in bundle["entry"]]
    return {**bundle, "type": "transaction", "entry": entries}


@pytest.fixture(scope="module")
def transaction(dicom) -> dict[str, Any]:  # noqa: F811
    prior, sr, sc = dicom
    # flagged: every check component (score, limit, override, verdicts) goes to the server
    return as_put_transaction(build_fhir_bundle(prior, sr, sc, algorithm=ALGORITHM, text=TEXT, checks=FLAGGED,
                                                fhir_version="R4B"))


def by_type(transaction: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["resource"]["resourceType"]: entry["resource"] for entry in transaction["entry"]}


def send(server: FhirServer, transaction: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(server.base_url, json=transaction, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["type"] == "transaction-response"
    # Medplum answers "200" for a PUT that creates, where the FHIR spec says 201: accept either
    assert all(entry["response"]["status"] in ("200", "201") for entry in answer["entry"]), answer
    return answer


def count(server: FhirServer, query: str) -> int:
    response = httpx.get(f"{server.base_url}/{query}", params={"_summary": "count"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["total"]


def read(server: FhirServer, resource_type: str, resource_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}/{resource_type}/{resource_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_r4b_results_are_accepted_and_read_back(fhir_server: FhirServer, transaction) -> None:  # noqa: F811
    send(fhir_server, transaction)
    resources = by_type(transaction)
    stored = {kind: read(fhir_server, kind, resource["id"]) for kind, resource in resources.items()}
    for kind, resource in resources.items():
        assert stored[kind]["id"] == resource["id"] and stored[kind]["meta"]["versionId"]
    assert stored["DiagnosticReport"]["conclusion"] == resources["DiagnosticReport"]["conclusion"]
    assert stored["Observation"]["valueString"] == TEXT.interpretation
    assert stored["Observation"]["component"] == resources["Observation"]["component"]  # the checks included
    # the transaction resolved the bundle's urn:uuid references to the resources it stored
    assert stored["Observation"]["device"] == {"reference": f"Device/{resources['Device']['id']}"}
    assert stored["DiagnosticReport"]["result"] == [{"reference": f"Observation/{resources['Observation']['id']}"}]


def test_a_resend_updates_and_does_not_duplicate(fhir_server: FhirServer, transaction, dicom) -> None:  # noqa: F811
    identifier = f"urn:dicom:uid|urn:oid:{dicom[1].SOPInstanceUID}"  # the SR's, which the Observation carries
    send(fhir_server, transaction)
    observations, reports = count(fhir_server, "Observation"), count(fhir_server, "DiagnosticReport")
    version = read(fhir_server, "Observation", by_type(transaction)["Observation"]["id"])["meta"]["versionId"]
    send(fhir_server, transaction)  # as the outbox would after a lost answer
    assert count(fhir_server, "Observation") == observations and count(fhir_server, "DiagnosticReport") == reports
    assert count(fhir_server, f"Observation?identifier={identifier}") == 1
    assert read(fhir_server, "Observation", by_type(transaction)["Observation"]["id"])["meta"]["versionId"] != version


@pytest.mark.parametrize(("observation", "expression"), [
    ({}, "Observation.status"),  # and code: both required
    ({"status": "final", "code": {"text": "x"}, "colour": "red"}, "Observation.colour"),  # not an R4 element
    ({"status": "done", "code": {"text": "x"}}, "Observation.status"),  # outside its required value set
    ({"status": "final", "code": {"text": "x"}, "issued": "yesterday"}, "Observation.issued"),  # not an instant
], ids=["missing-required", "unknown-element", "code-outside-value-set", "bad-instant"])
def test_an_invalid_resource_is_refused_with_an_operation_outcome(fhir_server: FhirServer, observation,  # noqa: F811
                                                                  expression) -> None:
    response = httpx.post(f"{fhir_server.base_url}/Observation", json={"resourceType": "Observation", **observation},
                          timeout=30)
    assert 400 <= response.status_code < 500, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(issue["severity"] == "error" and expression in issue.get("expression", []) for issue in outcome["issue"])


def test_a_transaction_with_an_invalid_entry_stores_nothing(fhir_server: FhirServer) -> None:  # noqa: F811
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Device", "id": "refused-device", "status": "active"},
         "request": {"method": "PUT", "url": "Device/refused-device"}},
        {"resource": {"resourceType": "Observation", "id": "refused-observation", "status": "final"},
         "request": {"method": "PUT", "url": "Observation/refused-observation"}},
    ]}
    response = httpx.post(fhir_server.base_url, json=transaction, timeout=30)
    assert response.status_code == 400, response.text
    issues = response.json()["issue"]
    assert [issue["expression"] for issue in issues] == [["Bundle.entry[1].resource.code"]]
    assert httpx.get(f"{fhir_server.base_url}/Device/refused-device", timeout=30).status_code == 404
