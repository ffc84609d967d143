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

from dicom_io.records import SYNTHETIC_NOTICE, AlgorithmRecord

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
