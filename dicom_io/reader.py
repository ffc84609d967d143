"""Read a prior image: validate it, decode it, and bring it to displayed intensities in [0, 1].

Cheap header checks come before pixel decoding, so an oversized or unsuitable
object is refused without spending memory on it. Messages never contain PHI.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from dicom_io.errors import ImageTooLargeError, NoPixelDataError, NotDicomError, UnsupportedImageError

log = logging.getLogger(__name__)

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3")
RADIOGRAPHY = (CR, DX_PRESENTATION, DX_PROCESSING)
PROCESSING_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class SourceGeometry:
    """What the counterfactual needs to be shown like its prior."""

    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    patient_orientation: tuple[str, str] | None
    laterality: str | None


@dataclass(frozen=True)
class PriorImage:
    pixels: np.ndarray
    """float32 [rows, columns] in [0, 1], 1 = brightest as displayed (MONOCHROME1 already inverted)."""
    dataset: pydicom.Dataset
    geometry: SourceGeometry


def _load(source: str | os.PathLike | bytes | pydicom.Dataset) -> pydicom.Dataset:
    if isinstance(source, pydicom.Dataset):
        return source
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        return pydicom.dcmread(handle)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            raise
        raise NotDicomError(f"not a readable DICOM file ({type(exc).__name__}): the file is not DICOM or is "
                            "truncated") from None


def _check_header(ds: pydicom.Dataset, max_pixels: int) -> None:
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "") or "")
    if sop_class not in RADIOGRAPHY and sop_class not in SECONDARY_CAPTURE:
        raise UnsupportedImageError(f"modality {modality or 'unknown'} (SOP class {sop_class or 'unknown'}) is not "
                                    "supported: the prior must be CR, DX or a grayscale Secondary Capture")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise NoPixelDataError("the object has no pixel data")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise UnsupportedImageError(f"multi-frame images ({ds.NumberOfFrames} frames) are not supported")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1)) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImageError(f"colour images ({photometric or 'unknown photometric interpretation'}) "
                                    "are not supported: the prior must be grayscale")
    rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows <= 0 or columns <= 0:
        raise NoPixelDataError("the object has no image size (Rows/Columns)")
    if rows * columns > max_pixels:
        raise ImageTooLargeError(f"the image is {rows}x{columns} = {rows * columns} pixels; the limit is {max_pixels}")


def _display_values(ds: pydicom.Dataset) -> np.ndarray:
    try:
        stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - every decoder failure means the same thing to the user
        raise NotDicomError(f"the pixel data cannot be decoded ({type(exc).__name__}): truncated or an unsupported "
                            f"transfer syntax ({ds.file_meta.get('TransferSyntaxUID', 'unknown')})") from None
    values = apply_modality_lut(stored, ds).astype(np.float64)
    has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
    if has_voi:
        values = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
        low, high = _voi_range(ds, values)
    else:
        low, high = np.percentile(values, PROCESSING_PERCENTILES)
    scaled = np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        scaled = 1.0 - scaled
    return scaled.astype(np.float32)


def _voi_range(ds: pydicom.Dataset, values: np.ndarray) -> tuple[float, float]:
    """The output range of the VOI transform: a window maps to its own range, a LUT to its entries."""
    if "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    return float(values.min()), float(values.max())


def _geometry(ds: pydicom.Dataset) -> SourceGeometry:
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    orientation = ds.get("PatientOrientation")
    laterality = ds.get("ImageLaterality") or ds.get("Laterality") or None
    return SourceGeometry(
        rows=int(ds.Rows), columns=int(ds.Columns),
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
        patient_orientation=(str(orientation[0]), str(orientation[1])) if orientation and len(orientation) == 2
        else None,
        laterality=str(laterality) if laterality else None,
    )


def read_prior(source: str | os.PathLike | bytes | pydicom.Dataset, *, max_pixels: int) -> PriorImage:
    """Read and normalise a CR, DX or grayscale SC prior; refuse anything else with a one-line reason."""
    ds = _load(source)
    _check_header(ds, max_pixels)
    pixels = _display_values(ds)
    log.debug("read a %s prior of %dx%d", ds.get("Modality", "?"), ds.Rows, ds.Columns)
    return PriorImage(pixels, ds, _geometry(ds))
