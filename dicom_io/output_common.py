"""What every output we write shares: text that fits its VR, who made it, its pixels, and what it was made from.

One home for these, so the SC, the report page, the SR and the FHIR Bundle cannot drift
apart in how they name the algorithm or cut the hypothesis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import highdicom
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_io.records import SYNTHETIC_NOTICE, AlgorithmRecord, ConsistencyCheck, InputCheck, ResultChecks

UTF8 = "ISO_IR 192"
"""Always UTF-8: the hypothesis is free text in any language, and the prior's names re-encode losslessly."""

TextVR = Literal["LO", "ST", "LT"]
MAX_BYTES: dict[TextVR, int] = {"LO": 64, "ST": 1024, "LT": 10240}
"""PS3.5 6.2 length limits; with UTF-8 they count bytes, not characters (as dciodvfy does)."""
_TRUNCATED = "..."

SOURCE_IMAGE_PURPOSE = highdicom.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
"""CID 7202 (DCM 121322): the source is the input we processed, not a predecessor version of it."""


def fit_text(value: str, vr: TextVR) -> str:
    """Truncate free text to the VR's limit in UTF-8 bytes, never splitting a character, marked with "..."."""
    limit = MAX_BYTES[vr]
    encoded = value.encode("utf-8")
    if len(encoded) <= limit:
        return value
    return encoded[: limit - len(_TRUNCATED)].decode("utf-8", errors="ignore") + _TRUNCATED


@dataclass(frozen=True)
class Equipment:
    """The algorithm as the equipment of an object we write, every value fitted to LO."""

    manufacturer: str
    model_name: str
    software_versions: tuple[str, str]
    """The model's version, then the version of progemu-pacs that ran it."""
    device_name: str
    """Name and version, for places that hold one name (the SR's device observer)."""
    device_uid: str

    @classmethod
    def of(cls, algorithm: AlgorithmRecord) -> Equipment:
        return cls(
            manufacturer=fit_text(algorithm.manufacturer, "LO"),
            model_name=fit_text(algorithm.name, "LO"),
            software_versions=(fit_text(algorithm.version, "LO"), fit_text(algorithm.software_version, "LO")),
            device_name=fit_text(f"{algorithm.name} {algorithm.version}", "LO"),
            device_uid=algorithm.device_uid,
        )

    def highdicom_arguments(self) -> dict[str, Any]:
        """The General Equipment arguments that highdicom's SC and SR constructors share."""
        return {"manufacturer": self.manufacturer, "manufacturer_model_name": self.model_name,
                "software_versions": list(self.software_versions)}


def series_description(algorithm: AlgorithmRecord, label: str) -> str:
    """Every series we create leads with the notice, so a study browser shows it is synthetic."""
    return fit_text(f"{SYNTHETIC_NOTICE} - {algorithm.name} {label}", "LO")


def provenance(algorithm: AlgorithmRecord) -> str:
    """The algorithm down to its exact weights, as the free-text descriptions name it."""
    return f"{algorithm.name} {algorithm.version} (checkpoint sha256 {algorithm.checkpoint_sha256})"


def generation_settings(algorithm: AlgorithmRecord) -> dict[str, str]:
    """Checkpoint hash, then the sampler settings by name: what reruns the exact generation (SR and FHIR alike)."""
    return {"checkpoint_sha256": algorithm.checkpoint_sha256, **dict(sorted(algorithm.parameters.items()))}


OUTSIDE_TRAINING_DATA = "OUTSIDE THE TRAINING DATA (research override)"
"""How a result from a prior the input gate would have refused is marked wherever it is shown."""


def marking_parts(checks: ResultChecks) -> list[str]:
    """What a flagged result is marked with on every output, one part per failed check; none for a normal one."""
    parts = []
    if checks.consistency.consistent is False:
        parts.append(checks.consistency.summary)
    if checks.input.overridden:
        parts.append(OUTSIDE_TRAINING_DATA)
    return parts


def result_marking(checks: ResultChecks) -> str:
    """The marking as one line ("" for a normal result)."""
    return " \u2014 ".join(marking_parts(checks))


def marked(value: str, checks: ResultChecks) -> str:
    """``value`` led by the marking of a flagged result: first, so no cut of a long text behind it can lose it."""
    marking = result_marking(checks)
    return f"{marking.rstrip('.')}. {value}" if marking else value


def check_rows(checks: ResultChecks) -> list[tuple[str, str]]:
    """(label, text) of the checks, as the report page and the preview both list them."""
    return [("Input check", checks.input.summary), ("Consistency", checks.consistency.summary)]


PRIVATE_SCHEME = "99PROGEMU"
"""Private coding scheme for the concepts no standard terminology has; the SR declares it."""
INPUT_CHECK = Code("PGM003", PRIVATE_SCHEME, "Input check")
OOD_SCORE = Code("PGM004", PRIVATE_SCHEME, "Out-of-distribution score")
OOD_LIMIT = codes.DCM.ThresholdValue
"""DCM 122411: the calibrated limit the score is held against."""
RESEARCH_OVERRIDE = Code("PGM005", PRIVATE_SCHEME, "Research override")
CONSISTENCY = Code("PGM006", PRIVATE_SCHEME, "Consistent with the hypothesis")
SCORE_UNIT = Code("{score}", "UCUM", "score")
"""A dimensionless score (a UCUM annotation, i.e. unity)."""


def input_verdict(check: InputCheck) -> Code:
    """Inside or outside the algorithm's operational limits (CID 800), or Undetermined without a calibrated limit."""
    if check.limit is None:
        return codes.SCT.Undetermined
    if check.within_limit:
        return codes.DCM.InsideOperationalLimitsOfTheDevice
    return codes.DCM.OutsideOperationalLimitsOfTheDevice


def consistency_verdict(check: ConsistencyCheck) -> Code:
    """Yes, No or Undetermined (CID 230 Yes-No): the SR's and FHIR's coded answer to "consistent?"."""
    return {True: codes.SCT.Yes, False: codes.SCT.No, None: codes.SCT.Undetermined}[check.consistent]


def yes_no(value: bool) -> Code:
    """CID 231 Yes-No Only."""
    return codes.SCT.Yes if value else codes.SCT.No


def quantize(values: np.ndarray) -> np.ndarray:
    """[0, 1] to 8 bits, rounding to nearest, so 0.5 ("no change" in a difference) is exactly 128."""
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_uint8(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Quantize an output image after checking it: a wrong shape would silently break SpatialLocationsPreserved."""
    if pixels.ndim != 2 or pixels.shape != shape:
        raise ValueError(f"counterfactual pixels have shape {pixels.shape}, the prior is {shape}")
    if not np.issubdtype(pixels.dtype, np.floating):
        raise ValueError(f"counterfactual pixels must be floating point in [0, 1], got {pixels.dtype}")
    if not np.isfinite(pixels).all():
        raise ValueError("counterfactual pixels contain NaN or infinity")
    return quantize(pixels)


def source_image_item(sop_class_uid: str, sop_instance_uid: str, *,
                      spatial_locations_preserved: bool) -> pydicom.Dataset:
    """A SourceImageSequence item for an image we processed."""
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    item.PurposeOfReferenceCodeSequence = [SOURCE_IMAGE_PURPOSE]
    item.SpatialLocationsPreserved = "YES" if spatial_locations_preserved else "NO"
    return item
