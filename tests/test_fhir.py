"""FHIR Bundle: valid R5 and R4B, round-trips, and references the DICOM objects by their UIDs."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from fhir.resources.bundle import Bundle as BundleR5
from fhir.resources.R4B.bundle import Bundle as BundleR4B

from dicom_io.fhir import FHIR_VERSIONS, build_fhir_bundle
from dicom_io.output_common import OUTSIDE_TRAINING_DATA
from dicom_io.records import INCONSISTENT, SYNTHETIC_NOTICE, AlgorithmRecord, CounterfactualText, ResultChecks
from dicom_io.sc import build_counterfactual_sc
from dicom_io.sr import build_counterfactual_sr
from dicom_io.synthetic import build_synthetic_image
from tests.test_sr import FLAGGED, NORMAL, UNCHECKED

BUNDLES = {"R5": BundleR5, "R4B": BundleR4B}
TEXT = CounterfactualText(hypothesis="the left pleural effusion worsens",
                          interpretation="Larger left pleural effusion.")
ALGORITHM = AlgorithmRecord(name="ProgEmu", version="test-0", checkpoint_sha256="cd" * 32, software_version="0.1.0",
                            device_uid="2.25.161803", parameters={"seed": "7", "top_k": "2048"})


def oid(uid: str) -> dict[str, str]:
    return {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}


@pytest.fixture(scope="module")
def dicom() -> tuple[pydicom.Dataset, pydicom.Dataset, pydicom.Dataset]:
    prior = build_synthetic_image(np.full((64, 48), 1000, np.uint16), patient_id="FHIR-TEST-1")
    sc = build_counterfactual_sc(prior, np.full((64, 48), 0.5, np.float32), algorithm=ALGORITHM, text=TEXT,
                                 checks=NORMAL)
    return prior, build_counterfactual_sr(prior, sc, algorithm=ALGORITHM, text=TEXT, checks=NORMAL), sc


def build(dicom, version: str, checks: ResultChecks = NORMAL) -> dict:
    prior, sr, sc = dicom
    return build_fhir_bundle(prior, sr, sc, algorithm=ALGORITHM, text=TEXT, checks=checks, fhir_version=version)


def by_type(bundle: dict) -> dict[str, tuple[str, dict]]:
    return {e["resource"]["resourceType"]: (e["fullUrl"], e["resource"]) for e in bundle["entry"]}


@pytest.mark.parametrize("version", FHIR_VERSIONS)
def test_round_trips_and_is_json(dicom, version) -> None:
    bundle = build(dicom, version)
    assert BUNDLES[version].model_validate(bundle).model_dump(mode="json") == bundle
    assert json.loads(json.dumps(bundle)) == bundle
    assert bundle["type"] == "collection"
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])
    assert sorted(by_type(bundle)) == ["Device", "DiagnosticReport", "Observation"]


@pytest.mark.parametrize("version", FHIR_VERSIONS)
def test_references_carry_the_dicom_uids(dicom, version) -> None:
    prior, sr, sc = dicom
    resources = by_type(build(dicom, version))
    device_url, device = resources["Device"]
    observation_url, observation = resources["Observation"]
    _, report = resources["DiagnosticReport"]

    assert oid(ALGORITHM.device_uid) in device["identifier"]
    assert device["manufacturer"] == ALGORITHM.manufacturer
    assert {v["value"] for v in device["version"]} >= {ALGORITHM.version, ALGORITHM.checkpoint_sha256}

    assert observation["status"] == "final"
    assert observation["identifier"] == [oid(sr.SOPInstanceUID)]
    assert observation["valueString"] == TEXT.interpretation
    assert observation["device"] == {"reference": device_url}
    assert [r["identifier"] for r in observation["derivedFrom"]] == [oid(sr.SOPInstanceUID), oid(sc.SOPInstanceUID)]
    components = {c["code"]["text"]: c["valueString"] for c in observation["component"] if "valueString" in c}
    assert components["Progression hypothesis"] == TEXT.hypothesis
    assert components["seed"] == "7" and components["checkpoint_sha256"] == ALGORITHM.checkpoint_sha256

    study_key = "study" if version == "R5" else "imagingStudy"
    assert [r["identifier"] for r in report[study_key]] == [oid(prior.StudyInstanceUID)]
    assert report["status"] == "final"
    assert report["result"] == [{"reference": observation_url}]
    assert SYNTHETIC_NOTICE in report["conclusion"] and TEXT.interpretation in report["conclusion"]
    for resource in (observation, report):
        assert resource["subject"]["identifier"]["value"] == "FHIR-TEST-1"


def test_versions_differ_where_fhir_does(dicom) -> None:
    r5, r4b = (by_type(build(dicom, v)) for v in ("R5", "R4B"))
    assert "name" in r5["Device"][1] and "deviceName" in r4b["Device"][1]
    assert "imagingStudy" not in r5["DiagnosticReport"][1] and "study" not in r4b["DiagnosticReport"][1]


def test_same_sr_same_entry_urls(dicom) -> None:
    assert [e["fullUrl"] for e in build(dicom, "R5")["entry"]] == [e["fullUrl"] for e in build(dicom, "R5")["entry"]]


def test_rejects_unknown_version(dicom) -> None:
    with pytest.raises(ValueError, match="R4"):
        build(dicom, "R4")


def components(bundle: dict) -> dict[str, dict]:
    return {c["code"]["text"]: c for c in by_type(bundle)["Observation"][1]["component"]}


def coding(concept: dict) -> tuple[str, str]:
    (code,) = concept["coding"]
    return code["system"], code["code"]


SCT, DCM = "http://snomed.info/sct", "http://dicom.nema.org/resources/ontology/DCM"


@pytest.mark.parametrize("version", FHIR_VERSIONS)
def test_a_flagged_result_records_its_checks_and_leads_the_conclusion_with_the_marking(dicom, version) -> None:
    bundle = build(dicom, version, FLAGGED)
    assert BUNDLES[version].model_validate(bundle).model_dump(mode="json") == bundle
    checks = components(bundle)
    score, limit = checks["Out-of-distribution score"], checks["Out-of-distribution limit"]
    assert score["valueQuantity"] == {"value": 3.75, "unit": "score", "system": "http://unitsofmeasure.org",
                                      "code": "{score}"}
    assert limit["valueQuantity"]["value"] == 2.5 and coding(limit["code"]) == (DCM, "122411")
    assert checks["Research override"]["valueBoolean"] is True
    gate = checks["Input check"]["valueCodeableConcept"]
    assert coding(gate) == (DCM, "128619") and gate["text"] == FLAGGED.input.summary
    consistency = checks["Consistent with the hypothesis"]["valueCodeableConcept"]
    assert coding(consistency) == (SCT, "373067005") and consistency["text"] == FLAGGED.consistency.summary
    _, report = by_type(bundle)["DiagnosticReport"]
    assert report["conclusion"].startswith(f"{INCONSISTENT}: {FLAGGED.consistency.reason}")
    assert OUTSIDE_TRAINING_DATA in report["conclusion"] and SYNTHETIC_NOTICE in report["conclusion"]
    _, observation = by_type(bundle)["Observation"]
    assert observation["note"][0]["text"].startswith(INCONSISTENT)


@pytest.mark.parametrize("version", FHIR_VERSIONS)
def test_normal_and_unchecked_results_record_their_checks_unmarked(dicom, version) -> None:
    normal = components(build(dicom, version))
    assert coding(normal["Input check"]["valueCodeableConcept"]) == (DCM, "128607")
    assert coding(normal["Consistent with the hypothesis"]["valueCodeableConcept"]) == (SCT, "373066001")
    assert normal["Research override"]["valueBoolean"] is False
    assert by_type(build(dicom, version))["DiagnosticReport"][1]["conclusion"].startswith(SYNTHETIC_NOTICE)
    unchecked = build(dicom, version, UNCHECKED)
    assert "Out-of-distribution limit" not in components(unchecked)  # never calibrated: no limit to state
    assert coding(components(unchecked)["Input check"]["valueCodeableConcept"]) == (SCT, "373068000")
    assert by_type(unchecked)["DiagnosticReport"][1]["conclusion"].startswith(SYNTHETIC_NOTICE)
