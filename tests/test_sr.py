"""Counterfactual SR: IHE AIR style TID 1500, dciodvfy-clean, readable by dsrdump, traceable to the exact weights."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pydicom
import pytest

from dicom_io.records import (
    INCONSISTENT,
    AlgorithmRecord,
    ConsistencyCheck,
    CounterfactualText,
    InputCheck,
    ResultChecks,
)
from dicom_io.sc import build_counterfactual_sc
from dicom_io.sr import HypothesisFinding, build_counterfactual_sr
from dicom_io.synthetic import build_synthetic_image
from tests.support.dicom_validators import assert_dciodvfy_clean, dsrdump_text

HYPOTHESIS = "the left pleural effusion worsens"
INTERPRETATION = "Larger left pleural effusion with blunting of the left costophrenic angle."
CHECKPOINT = "0123456789abcdef" * 4
NORMAL = ResultChecks(InputCheck(score=0.42, limit=2.5), ConsistencyCheck(True, "finding, side and direction agree"))
FLAGGED = ResultChecks(InputCheck(score=3.75, limit=2.5, overridden=True),
                       ConsistencyCheck(False, "the interpretation names the right side, the hypothesis the left"))
UNCHECKED = ResultChecks(InputCheck(score=1.5, limit=None), ConsistencyCheck(None, "no finding the check knows"))


@pytest.fixture
def algorithm() -> AlgorithmRecord:
    return AlgorithmRecord(name="ProgEmu", version="test-0", checkpoint_sha256=CHECKPOINT, software_version="0.1.0",
                           device_uid="2.25.271828",
                           parameters={"seed": "42", "top_k": "2048", "temperature": "1.0", "cfg_scale": "3.0"})


@pytest.fixture
def text() -> CounterfactualText:
    return CounterfactualText(hypothesis=HYPOTHESIS, interpretation=INTERPRETATION)


@pytest.fixture
def prior() -> pydicom.Dataset:
    return build_synthetic_image(np.full((128, 96), 2000, np.uint16), patient_id="SR-TEST-1")


@pytest.fixture
def sc(prior, algorithm, text) -> pydicom.Dataset:
    pixels = np.full((prior.Rows, prior.Columns), 0.5, np.float32)
    return build_counterfactual_sc(prior, pixels, algorithm=algorithm, text=text, checks=NORMAL)


@pytest.fixture
def sr(prior, sc, algorithm, text) -> pydicom.Dataset:
    return build_counterfactual_sr(prior, sc, algorithm=algorithm, text=text, checks=NORMAL)


def walk(items) -> Iterator[pydicom.Dataset]:
    for item in items:
        yield item
        yield from walk(item.get("ContentSequence", []))


def named(sr: pydicom.Dataset, code_value: str, value_type: str | None = None) -> list[pydicom.Dataset]:
    return [item for item in walk(sr.ContentSequence)
            if item.ConceptNameCodeSequence[0].CodeValue == code_value
            and (value_type is None or item.ValueType == value_type)]


def referenced_uids(items) -> set[str]:
    return {ref.ReferencedSOPInstanceUID for item in items for ref in item.ReferencedSOPSequence}


def test_passes_dciodvfy_and_dsrdump(sr, tmp_path) -> None:
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    dump = dsrdump_text(path)
    assert HYPOTHESIS in dump and CHECKPOINT in dump and INTERPRETATION in dump
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_non_ascii_hypothesis_is_kept(prior, sc, algorithm, tmp_path) -> None:
    text = CounterfactualText(hypothesis="Pleuraerguss links verstärkt → größer", interpretation="Größerer Erguss.")
    path = tmp_path / "sr.dcm"
    build_counterfactual_sr(prior, sc, algorithm=algorithm, text=text, checks=NORMAL).save_as(
        path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    assert text.hypothesis in dsrdump_text(path)
    assert pydicom.dcmread(path).SpecificCharacterSet == "ISO_IR 192"


def test_long_multibyte_texts_fit_their_vrs_in_bytes(prior, sc, tmp_path) -> None:
    """LO (64), ST (1024) and LT (10240) limits count UTF-8 bytes: a character cut leaves "größer" too long."""
    algorithm = AlgorithmRecord(name="Größer" * 10, version="größer-" * 10, checkpoint_sha256=CHECKPOINT,
                                software_version="0.1.0", device_uid="2.25.271828", manufacturer="Größer" * 11)
    text = CounterfactualText(hypothesis="größer " * 40, interpretation="größer " * 40)
    sr = build_counterfactual_sr(prior, sc, algorithm=algorithm, text=text, checks=NORMAL)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    limits = {"LO": 64, "ST": 1024, "LT": 10240}
    texts = [(element.VR, value) for element in pydicom.dcmread(path).iterall() if element.VR in limits
             for value in (element.value if element.VM > 1 else [element.value])]
    assert {"LO", "ST"} <= {vr for vr, _ in texts}
    assert all(len(value.encode()) <= limits[vr] for vr, value in texts)
    assert text.hypothesis.strip() in dsrdump_text(path)  # TEXT (UT) items keep it whole


def test_same_patient_and_study_new_series(sr, sc, prior) -> None:
    assert sr.PatientID == prior.PatientID == "SR-TEST-1"
    assert sr.StudyInstanceUID == prior.StudyInstanceUID
    assert sr.SeriesInstanceUID not in (prior.SeriesInstanceUID, sc.SeriesInstanceUID)
    assert (sr.Modality, sr.SeriesNumber) == ("SR", 9902)
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.SeriesDate and sr.SeriesTime


def test_tid_1500_root_with_device_observer_and_procedure(sr, algorithm) -> None:
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report
    (observer,) = named(sr, "121012", "UIDREF")
    assert observer.UID == algorithm.device_uid
    (procedure,) = named(sr, "121058", "CODE")
    assert procedure.ConceptCodeSequence[0].CodeValue == "36554-4"


def test_tid_4019_algorithm_identification(sr, algorithm) -> None:
    assert [i.TextValue for i in named(sr, "111001")] == [algorithm.name]
    assert [i.TextValue for i in named(sr, "111003")] == [algorithm.version]
    parameters = {i.TextValue for i in named(sr, "111002")}
    assert {f"hypothesis={HYPOTHESIS}", f"checkpoint_sha256={CHECKPOINT}", "seed=42", "top_k=2048",
            "temperature=1.0", "cfg_scale=3.0"} <= parameters


def test_text_items_hold_hypothesis_and_interpretation(sr) -> None:
    assert [i.TextValue for i in named(sr, "PGM001", "TEXT")] == [HYPOTHESIS]
    assert [i.TextValue for i in named(sr, "121071", "TEXT")] == [INTERPRETATION]
    schemes = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert {"99PROGEMU", "99IHE"} <= schemes


def test_references_prior_and_counterfactual(sr, sc, prior) -> None:
    assert referenced_uids(named(sr, "PGM002", "IMAGE")) == {sc.SOPInstanceUID}
    sources = [i for i in walk(sr.ContentSequence) if i.ValueType == "IMAGE" and i.RelationshipType == "CONTAINS"]
    assert referenced_uids(sources) == {sc.SOPInstanceUID, prior.SOPInstanceUID}
    evidence = {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert evidence == {sc.SOPInstanceUID, prior.SOPInstanceUID}


def test_contributing_equipment_names_the_algorithm(sr, algorithm) -> None:
    (item,) = [i for i in sr.ContributingEquipmentSequence
               if i.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"]
    assert item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
    assert item.DeviceUID == algorithm.device_uid
    assert (item.Manufacturer, item.ManufacturerModelName) == (algorithm.manufacturer, algorithm.name)
    assert list(item.SoftwareVersions) == [algorithm.version, algorithm.software_version]


def test_rejects_sc_from_another_study(prior, sc, algorithm, text) -> None:
    sc.StudyInstanceUID = pydicom.uid.generate_uid()
    with pytest.raises(ValueError):
        build_counterfactual_sr(prior, sc, algorithm=algorithm, text=text, checks=NORMAL)


def coded(sr: pydicom.Dataset, code_value: str) -> tuple[str, str]:
    (item,) = named(sr, code_value, "CODE")
    value = item.ConceptCodeSequence[0]
    return value.CodeValue, value.CodingSchemeDesignator


def numbers(sr: pydicom.Dataset) -> dict[str, tuple[float, str]]:
    return {item.ConceptNameCodeSequence[0].CodeValue: (float(item.MeasuredValueSequence[0].NumericValue),
                                                        item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
                                                        .CodeValue)
            for item in walk(sr.ContentSequence) if item.ValueType == "NUM"}


@pytest.mark.parametrize("checks", [NORMAL, FLAGGED, UNCHECKED], ids=["normal", "flagged", "unchecked"])
def test_checks_are_recorded_dciodvfy_clean_and_dsrdump_shows_them(prior, sc, algorithm, text, checks,
                                                                    tmp_path) -> None:
    path = tmp_path / "sr.dcm"
    build_counterfactual_sr(prior, sc, algorithm=algorithm, text=text, checks=checks).save_as(
        path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    dump = dsrdump_text(path)
    for shown in ('"Input check"', '"Out-of-distribution score"', '"Research override"',
                  '"Consistent with the hypothesis"', checks.input.summary, checks.consistency.summary):
        assert shown in dump
    assert ('"Threshold Value"' in dump) == (checks.input.limit is not None)


def test_flagged_result_is_coded_as_outside_the_limits_overridden_and_inconsistent(prior, sc, algorithm,
                                                                                     text) -> None:
    sr = build_counterfactual_sr(prior, sc, algorithm=algorithm, text=text, checks=FLAGGED)
    assert coded(sr, "PGM003") == ("128619", "DCM")  # Outside operational limits of the device
    assert coded(sr, "PGM005") == ("373066001", "SCT")  # Yes: overridden
    assert coded(sr, "PGM006") == ("373067005", "SCT")  # No: not consistent
    assert numbers(sr) == {"PGM004": (3.75, "{score}"), "122411": (2.5, "{score}")}
    (consistency,) = named(sr, "PGM006", "TEXT")
    assert consistency.TextValue.startswith(INCONSISTENT) and FLAGGED.consistency.reason in consistency.TextValue
    (gate,) = named(sr, "PGM003", "TEXT")
    assert gate.TextValue == FLAGGED.input.summary


def test_normal_and_unchecked_results_are_coded_as_such(prior, sc, algorithm, text, sr) -> None:
    assert coded(sr, "PGM003") == ("128607", "DCM")  # Inside operational limits of the device
    assert coded(sr, "PGM005") == ("373067005", "SCT")  # No override
    assert coded(sr, "PGM006") == ("373066001", "SCT")  # Yes: consistent
    unchecked = build_counterfactual_sr(prior, sc, algorithm=algorithm, text=text, checks=UNCHECKED)
    assert coded(unchecked, "PGM003") == coded(unchecked, "PGM006") == ("373068000", "SCT")  # Undetermined
    assert numbers(unchecked) == {"PGM004": (1.5, "{score}")}  # no limit without calibration
    (group,) = named(sr, "125007")  # the TID 1501 Measurement Group holds the checks, as TID 1500 viewers expect
    assert {"PGM003", "PGM004", "PGM005", "PGM006", "122411"} <= {
        item.ConceptNameCodeSequence[0].CodeValue for item in group.ContentSequence}


def test_hypothesised_finding_side_and_direction_are_coded(prior, sc, algorithm, text, tmp_path) -> None:
    sr = build_counterfactual_sr(prior, sc, algorithm=algorithm, text=text, checks=NORMAL,
                                 finding=HypothesisFinding(finding="effusion", side="left", direction="worsens"))
    assert coded(sr, "121071") == ("60046008", "SCT")  # TID 1501's Finding: pleural effusion
    assert coded(sr, "272741003") == ("7771000", "SCT")  # Laterality: left
    assert coded(sr, "PGM007") == ("35105006", "SCT")  # hypothesised change: increased
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    dump = dsrdump_text(path)
    for line in ('CODE:(,,"Finding")=(60046008,SCT,"Pleural effusion")', 'CODE:(,,"Laterality")=(7771000,SCT,"Left")',
                 'CODE:(,,"Hypothesised change")=(35105006,SCT,"Increased")'):
        assert line in dump, line


@pytest.mark.parametrize(("finding", "expected"), [
    (HypothesisFinding("oedema", None, "develops"), {"121071": ("19242006", "SCT"), "PGM007": ("7147002", "SCT")}),
    (HypothesisFinding("pneumothorax", "right", "resolves"),
     {"121071": ("36118008", "SCT"), "272741003": ("24028007", "SCT"), "PGM007": ("PGM008", "99PROGEMU")}),
    (HypothesisFinding("consolidation", "right", "unchanged"),
     {"121071": ("95436008", "SCT"), "PGM007": ("260388006", "SCT")}),
])
def test_every_finding_and_direction_has_a_code(prior, sc, algorithm, text, finding, expected) -> None:
    sr = build_counterfactual_sr(prior, sc, algorithm=algorithm, text=text, checks=NORMAL, finding=finding)
    assert {name: coded(sr, name) for name in expected} == expected
    assert bool(named(sr, "272741003")) == (finding.side is not None)


def test_without_a_known_finding_the_group_is_an_imaging_finding(sr) -> None:
    assert coded(sr, "121071") == ("365853002", "SCT")
    assert not named(sr, "272741003") and not named(sr, "PGM007")


def test_prior_and_counterfactual_are_the_groups_source_images(sr, sc, prior) -> None:
    sources = [item for item in walk(sr.ContentSequence)
               if item.ValueType == "IMAGE" and item.ConceptNameCodeSequence[0].CodeValue == "121112"]
    assert [ref.ReferencedSOPInstanceUID for item in sources for ref in item.ReferencedSOPSequence] == [
        prior.SOPInstanceUID, sc.SOPInstanceUID]
