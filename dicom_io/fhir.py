"""The counterfactual's result as a FHIR Bundle (Device, Observation, DiagnosticReport), R5 or R4B.

DICOM objects are referenced logically, by identifier (system ``urn:dicom:uid``,
value ``urn:oid:<UID>``), because the SR, the SC and the study live in the PACS,
not on the FHIR server. The patient is referenced by identifier (PatientID) the
same way. The result's checks are Observation components, coded with the SR's
concepts where FHIR knows the scheme (DICOM, SNOMED CT, UCUM); a flagged result
leads the Observation's note and the DiagnosticReport's conclusion with its
marking. The bundle is validated with ``fhir.resources`` before it is returned.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping
from typing import Any

import pydicom
from fhir.resources.bundle import Bundle as BundleR5
from fhir.resources.R4B.bundle import Bundle as BundleR4B
from pydantic import BaseModel
from pydicom.sr.coding import Code

from dicom_io.output_common import (
    CONSISTENCY,
    INPUT_CHECK,
    OOD_LIMIT,
    OOD_SCORE,
    RESEARCH_OVERRIDE,
    SCORE_UNIT,
    consistency_verdict,
    generation_settings,
    input_verdict,
    marked,
)
from dicom_io.records import SYNTHETIC_NOTICE, AlgorithmRecord, CounterfactualText, ResultChecks

FHIR_VERSIONS = ("R5", "R4B")
DICOM_UID_SYSTEM = "urn:dicom:uid"
OBSERVATION_TEXT = "Counterfactual progression interpretation"
REPORT_TEXT = "Counterfactual chest X-ray progression report"

_BUNDLES: dict[str, type[BaseModel]] = {"R5": BundleR5, "R4B": BundleR4B}
_IMAGING_CATEGORY = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging",
                "display": "Imaging"}]
}
_RADIOLOGY_CATEGORY = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}]
}
_SYSTEMS = {"DCM": "http://dicom.nema.org/resources/ontology/DCM", "SCT": "http://snomed.info/sct",
            "UCUM": "http://unitsofmeasure.org"}
"""FHIR systems of the DICOM coding schemes we use; our private scheme has none, so its concepts go as text."""


def build_fhir_bundle(
    prior: pydicom.Dataset,
    sr: pydicom.Dataset,
    sc: pydicom.Dataset,
    *,
    algorithm: AlgorithmRecord,
    text: CounterfactualText,
    checks: ResultChecks,
    fhir_version: str = "R5",
) -> dict[str, Any]:
    """Build a ``collection`` Bundle for one counterfactual and return it as validated, JSON-ready data.

    Entry URLs are UUIDs derived from the SR's SOP Instance UID, so the same SR always yields the same
    bundle entries (a resend updates rather than duplicates on servers that key on them).
    """
    if fhir_version not in _BUNDLES:
        raise ValueError(f"unknown FHIR version {fhir_version!r}, expected one of {FHIR_VERSIONS}")
    issued = _now()
    device_url, observation_url, report_url = (_full_url(sr.SOPInstanceUID, kind)
                                               for kind in ("Device", "Observation", "DiagnosticReport"))
    subject = _patient_reference(prior)
    resources = [
        (device_url, _device(algorithm, fhir_version)),
        (observation_url, _observation(sr, sc, algorithm, text, checks, subject, device_url, issued)),
        (report_url, _diagnostic_report(prior, text, checks, subject, observation_url, issued, fhir_version)),
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": issued,
        "entry": [{"fullUrl": url, "resource": {**resource, "id": url.removeprefix("urn:uuid:")}}
                  for url, resource in resources],
    }
    return _BUNDLES[fhir_version].model_validate(bundle).model_dump(mode="json")


def dicom_identifier(uid: str) -> dict[str, str]:
    """A DICOM UID as a FHIR Identifier (the convention of the FHIR ImagingStudy resource)."""
    return {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}


def _device(algorithm: AlgorithmRecord, fhir_version: str) -> dict[str, Any]:
    versions = [
        {"type": {"text": "model"}, "value": algorithm.version},
        {"type": {"text": "software"}, "value": algorithm.software_version},
        {"type": {"text": "checkpoint-sha256"}, "value": algorithm.checkpoint_sha256},
    ]
    if fhir_version == "R5":
        names = {"name": [{"value": algorithm.name, "type": "user-friendly-name"}]}
    else:
        names = {"deviceName": [{"name": algorithm.name, "type": "user-friendly-name"}]}
    return {
        "resourceType": "Device",
        "identifier": [dicom_identifier(algorithm.device_uid)],
        "status": "active",
        "manufacturer": algorithm.manufacturer,
        **names,
        "version": versions,
    }


def _observation(
    sr: pydicom.Dataset,
    sc: pydicom.Dataset,
    algorithm: AlgorithmRecord,
    text: CounterfactualText,
    checks: ResultChecks,
    subject: Mapping[str, Any] | None,
    device_url: str,
    issued: str,
) -> dict[str, Any]:
    components = [_component("Progression hypothesis", text.hypothesis)]
    components += [_component(name, value) for name, value in generation_settings(algorithm).items()]
    components += _check_components(checks)
    return {
        "resourceType": "Observation",
        "identifier": [dicom_identifier(sr.SOPInstanceUID)],
        "status": "final",
        "category": [_IMAGING_CATEGORY],
        "code": {"text": OBSERVATION_TEXT},
        **({"subject": subject} if subject else {}),
        "issued": issued,
        "valueString": text.interpretation,
        "note": [{"text": marked(f"{SYNTHETIC_NOTICE}: generated by {algorithm.name} {algorithm.version} "
                                 f"for the hypothesis: {text.hypothesis}", checks)}],
        "device": {"reference": device_url},
        "derivedFrom": [
            {"identifier": dicom_identifier(sr.SOPInstanceUID), "display": "DICOM SR: counterfactual report"},
            {"identifier": dicom_identifier(sc.SOPInstanceUID),
             "display": f"DICOM Secondary Capture: counterfactual image ({SYNTHETIC_NOTICE})"},
        ],
        "component": components,
    }


def _diagnostic_report(
    prior: pydicom.Dataset,
    text: CounterfactualText,
    checks: ResultChecks,
    subject: Mapping[str, Any] | None,
    observation_url: str,
    issued: str,
    fhir_version: str,
) -> dict[str, Any]:
    study = [{"type": "ImagingStudy", "identifier": dicom_identifier(prior.StudyInstanceUID)}]
    return {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "category": [_RADIOLOGY_CATEGORY],
        "code": {"text": REPORT_TEXT},
        **({"subject": subject} if subject else {}),
        "issued": issued,
        ("study" if fhir_version == "R5" else "imagingStudy"): study,
        "result": [{"reference": observation_url}],
        "conclusion": marked(f"{SYNTHETIC_NOTICE}. The image is synthetic (a model's counterfactual for the "
                             f"hypothesis: {text.hypothesis}). {text.interpretation}", checks),
    }


def _component(name: str, value: str) -> dict[str, Any]:
    return {"code": {"text": name}, "valueString": value}


def _check_components(checks: ResultChecks) -> list[dict[str, Any]]:
    """The input gate's score, limit (when calibrated) and override, and the consistency, as the SR codes them."""
    gate, consistency = checks.input, checks.consistency
    scores = [(_concept(OOD_SCORE), gate.score), (_concept(OOD_LIMIT, "Out-of-distribution limit"), gate.limit)]
    components = [{"code": code, "valueQuantity": _score(value)} for code, value in scores if value is not None]
    return [
        *components,
        {"code": _concept(INPUT_CHECK), "valueCodeableConcept": _concept(input_verdict(gate), gate.summary)},
        {"code": _concept(RESEARCH_OVERRIDE), "valueBoolean": gate.overridden},
        {"code": _concept(CONSISTENCY),
         "valueCodeableConcept": _concept(consistency_verdict(consistency), consistency.summary)},
    ]


def _concept(code: Code, text: str | None = None) -> dict[str, Any]:
    """A DICOM code as a CodeableConcept: coded where FHIR knows its scheme, always with a text."""
    concept: dict[str, Any] = {"text": text or code.meaning}
    if code.scheme_designator in _SYSTEMS:
        concept["coding"] = [{"system": _SYSTEMS[code.scheme_designator], "code": code.value,
                              "display": code.meaning}]
    return concept


def _score(value: float) -> dict[str, Any]:
    return {"value": value, "unit": SCORE_UNIT.meaning, "system": _SYSTEMS["UCUM"], "code": SCORE_UNIT.value}


def _patient_reference(prior: pydicom.Dataset) -> dict[str, Any] | None:
    """Reference the patient by PatientID; None when the prior has none (Type 2, may be empty)."""
    patient_id = str(prior.get("PatientID") or "")
    if not patient_id:
        return None
    identifier: dict[str, Any] = {"value": patient_id}
    issuer = str(prior.get("IssuerOfPatientID") or "")
    if issuer:
        identifier["assigner"] = {"display": issuer}
    return {"type": "Patient", "identifier": identifier}


def _full_url(sop_instance_uid: str, kind: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, f'{sop_instance_uid}/{kind}')}"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def as_transaction(bundle: dict[str, Any]) -> dict[str, Any]:
    """The results Bundle as a FHIR ``transaction`` of PUTs on the entries' own ids.

    PUT with the ids derived from the SR makes a resend (after a timeout, from the outbox)
    update the same resources instead of creating duplicates.
    """
    entries = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        entries.append({**entry, "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}})
    return {**bundle, "type": "transaction", "entry": entries}
