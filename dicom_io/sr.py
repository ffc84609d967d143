"""The counterfactual's provenance and text as an IHE AIR style Comprehensive 3D SR.

TID 1500 Measurement Report, observed by the algorithm as a DEVICE, with one
TID 1501 group holding the TID 4019 algorithm identification (name, version,
hypothesis, seed, sampler settings, checkpoint hash), the prior and the
counterfactual SC as the group's source images, the hypothesised finding as the
group's coded Finding with its side and direction as coded qualitative evaluations
(what a TID 1500 viewer lists), the result's checks (the input gate's score, limit and override, and the
consistency with the hypothesis) as NUM, CODE and TEXT items, the hypothesis and
interpretation as TEXT, and a reference to the counterfactual SC. Contributing
Equipment names the algorithm with the IHE "Processing Algorithm" purpose, which
highdicom's ContributingEquipment does not accept (it allows DCM codes only), so
that item is written by hand.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

import highdicom
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    ImageContentItem,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicom_io.output_common import (
    CONSISTENCY,
    INPUT_CHECK,
    OOD_LIMIT,
    OOD_SCORE,
    PRIVATE_SCHEME,
    RESEARCH_OVERRIDE,
    SCORE_UNIT,
    UTF8,
    Equipment,
    consistency_verdict,
    generation_settings,
    input_verdict,
    series_description,
    yes_no,
)
from dicom_io.records import SYNTHETIC_NOTICE, AlgorithmRecord, CounterfactualText, ResultChecks

log = logging.getLogger(__name__)

PROCEDURE_REPORTED = CodedConcept("36554-4", "LN", "XR Chest Single view")
"""The imaging procedure the report is about: one chest radiograph (the prior), not the algorithm."""
FINDING_TYPE = CodedConcept.from_code(codes.SCT.ImagingFinding)
"""SCT 365853002: the group's finding when the hypothesis names none the consistency check knows."""
FINDINGS = {
    "effusion": CodedConcept.from_code(codes.SCT.PleuralEffusion),
    "cardiomegaly": CodedConcept.from_code(codes.SCT.Cardiomegaly),
    "pneumothorax": CodedConcept.from_code(codes.SCT.Pneumothorax),
    "consolidation": CodedConcept("95436008", "SCT", "Lung consolidation"),
    "oedema": CodedConcept.from_code(codes.SCT.PulmonaryEdema),
}
"""The findings the consistency check reads from a hypothesis, as SNOMED CT (the DICOM standard's codes where
pydicom's dictionary has them)."""
SIDES = {"left": CodedConcept.from_code(codes.SCT.Left), "right": CodedConcept.from_code(codes.SCT.Right)}
DIRECTION = CodedConcept("PGM007", PRIVATE_SCHEME, "Hypothesised change")
DIRECTIONS = {
    "develops": CodedConcept("7147002", "SCT", "New"),
    "worsens": CodedConcept("35105006", "SCT", "Increased"),
    "improves": CodedConcept.from_code(codes.SCT.Decreased),
    "resolves": CodedConcept("PGM008", PRIVATE_SCHEME, "Resolves"),
    "unchanged": CodedConcept.from_code(codes.SCT.NoChange),
}
"""The hypothesis' direction: SNOMED CT qualifiers where one fits, the private scheme for "resolves"."""
HYPOTHESIS = CodedConcept("PGM001", PRIVATE_SCHEME, "Progression hypothesis")
COUNTERFACTUAL_IMAGE = CodedConcept("PGM002", PRIVATE_SCHEME, "Counterfactual image")
INTERPRETATION = CodedConcept.from_code(codes.DCM.Finding)
"""DCM 121071 as TEXT, the way TID 2000 reports carry a finding in words."""
NOTICE = CodedConcept.from_code(codes.DCM.Comment)
PROCESSING_ALGORITHM = CodedConcept("Newcode1", "99IHE", "Processing Algorithm")
"""IHE AIR's Purpose of Reference for the algorithm in Contributing Equipment."""

CODING_SCHEMES = (
    CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME, name="progemu-pacs private codes", responsible_organization="progemu-pacs"
    ),
    CodingSchemeIdentificationItem(
        designator="99IHE", name="IHE Radiology temporary codes", responsible_organization="IHE"
    ),
)


@dataclass(frozen=True)
class HypothesisFinding:
    """What the hypothesis names, in the consistency check's words (e.g. "effusion", "left", "worsens")."""

    finding: str
    side: str | None
    direction: str


def build_counterfactual_sr(
    prior: pydicom.Dataset,
    sc: pydicom.Dataset,
    *,
    algorithm: AlgorithmRecord,
    text: CounterfactualText,
    checks: ResultChecks,
    finding: HypothesisFinding | None = None,
    series_number: int = 9902,
) -> Comprehensive3DSR:
    """Build the SR describing how ``sc`` was generated from ``prior``; same patient and study, new series.

    ``finding`` (None: the hypothesis names none the consistency check knows) becomes coded items.
    """
    if sc.StudyInstanceUID != prior.StudyInstanceUID:
        raise ValueError("the counterfactual SC is not in the prior's study")
    equipment = Equipment.of(algorithm)
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=_device_observer(equipment)),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=[_counterfactual_group(prior, sc, algorithm, text, checks, finding)],
    )
    now = datetime.datetime.now()
    sr = Comprehensive3DSR(
        evidence=[prior, sc],
        content=report[0],
        series_instance_uid=highdicom.UID(),
        series_number=series_number,
        sop_instance_uid=highdicom.UID(),
        instance_number=1,
        **equipment.highdicom_arguments(),
        is_complete=True,
        is_final=False,  # unverified machine output: PRELIMINARY, never FINAL
        series_description=series_description(algorithm, "report"),
        series_date=now.date(),
        series_time=now.time(),
        content_date=now.date(),
        content_time=now.time(),
        coding_schemes=list(CODING_SCHEMES),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        specific_character_set=UTF8,
    )
    # through the element: highdicom types the attribute as its ContributingEquipment, which refuses IHE AIR's code
    sr["ContributingEquipmentSequence"].value.append(_algorithm_equipment(equipment, algorithm))
    log.debug("built counterfactual SR %s for SC %s", sr.SOPInstanceUID, sc.SOPInstanceUID)
    return sr


def _algorithm_parameters(algorithm: AlgorithmRecord, text: CounterfactualText) -> list[str]:
    """TID 4019 "Algorithm Parameters" rows as name=value: everything needed to rerun the exact generation."""
    settings = {"hypothesis": text.hypothesis, **generation_settings(algorithm)}
    return [f"{name}={value}" for name, value in settings.items()]


def _device_observer(equipment: Equipment) -> ObserverContext:
    return ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=equipment.device_uid,
            name=equipment.device_name,
            manufacturer_name=equipment.manufacturer,
            model_name=equipment.model_name,
        ),
    )


def _counterfactual_group(
    prior: pydicom.Dataset, sc: pydicom.Dataset, algorithm: AlgorithmRecord, text: CounterfactualText,
    checks: ResultChecks, finding: HypothesisFinding | None,
) -> MeasurementsAndQualitativeEvaluations:
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=highdicom.UID(), identifier="Counterfactual progression"),
        finding_type=FINDINGS.get(finding.finding, FINDING_TYPE) if finding else FINDING_TYPE,
        algorithm_id=AlgorithmIdentification(
            name=algorithm.name,
            version=algorithm.version,
            parameters=_algorithm_parameters(algorithm, text),
            manufacturer=algorithm.manufacturer,
        ),
        source_images=[SourceImageForMeasurementGroup.from_source_image(image) for image in (prior, sc)],
        measurements=_check_measurements(checks),
        qualitative_evaluations=_finding_evaluations(finding) + _check_evaluations(checks),
    )
    contains = RelationshipTypeValues.CONTAINS
    group[0].ContentSequence.extend([
        TextContentItem(name=INPUT_CHECK, value=checks.input.summary, relationship_type=contains),
        TextContentItem(name=CONSISTENCY, value=checks.consistency.summary, relationship_type=contains),
        TextContentItem(name=HYPOTHESIS, value=text.hypothesis, relationship_type=contains),
        TextContentItem(name=INTERPRETATION, value=text.interpretation, relationship_type=contains),
        TextContentItem(name=NOTICE, value=SYNTHETIC_NOTICE, relationship_type=contains),
        ImageContentItem(
            name=COUNTERFACTUAL_IMAGE,
            referenced_sop_class_uid=sc.SOPClassUID,
            referenced_sop_instance_uid=sc.SOPInstanceUID,
            relationship_type=contains,
        ),
    ])
    return group


def _check_measurements(checks: ResultChecks) -> list[Measurement]:
    """TID 300 NUM rows: the score and, when the checkpoint was calibrated, the limit it was held against."""
    values = [(OOD_SCORE, checks.input.score), (OOD_LIMIT, checks.input.limit)]
    return [Measurement(name=name, value=value, unit=SCORE_UNIT) for name, value in values if value is not None]


def _finding_evaluations(finding: HypothesisFinding | None) -> list[QualitativeEvaluation]:
    """The hypothesis' side (SCT Laterality) and direction, each when the hypothesis names one."""
    if finding is None:
        return []
    evaluations = []
    if finding.side in SIDES:
        evaluations.append(QualitativeEvaluation(name=codes.SCT.Laterality, value=SIDES[finding.side]))
    if finding.direction in DIRECTIONS:
        evaluations.append(QualitativeEvaluation(name=DIRECTION, value=DIRECTIONS[finding.direction]))
    return evaluations


def _check_evaluations(checks: ResultChecks) -> list[QualitativeEvaluation]:
    """The checks' verdicts as standard values, so software can find a flagged result without reading text."""
    return [
        QualitativeEvaluation(name=INPUT_CHECK, value=input_verdict(checks.input)),
        QualitativeEvaluation(name=RESEARCH_OVERRIDE, value=yes_no(checks.input.overridden)),
        QualitativeEvaluation(name=CONSISTENCY, value=consistency_verdict(checks.consistency)),
    ]


def _algorithm_equipment(equipment: Equipment, algorithm: AlgorithmRecord) -> pydicom.Dataset:
    """IHE AIR Contributing Equipment item: who processed the images, down to the exact weights."""
    item = pydicom.Dataset()
    item.Manufacturer = equipment.manufacturer
    item.ManufacturerModelName = equipment.model_name
    item.SoftwareVersions = list(equipment.software_versions)
    item.DeviceUID = equipment.device_uid
    item.ContributionDescription = f"Counterfactual generation, checkpoint sha256 {algorithm.checkpoint_sha256}"
    item.PurposeOfReferenceCodeSequence = [PROCESSING_ALGORITHM]
    return item
