"""Read a prior image: validate it, decode it, and bring it to displayed intensities in [0, 1].

Cheap header checks come before pixel decoding, so an oversized or unsuitable
object is refused without spending memory on it. Messages never contain PHI,
and parser exceptions are not chained into them: pydicom's messages can quote
element values such as names or dates.
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from dicom_io.errors import (
    DicomInputError,
    ImageTooLargeError,
    NoPixelDataError,
    NotDicomError,
    UnsupportedImageError,
)

log = logging.getLogger(__name__)

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
)
RADIOGRAPHY = (CR, DX_PRESENTATION, DX_PROCESSING)
AUTO_WINDOW_PERCENTILES = (0.5, 99.5)
"""Window for images without a VOI (DX for processing, some CR and SC), like a viewer's automatic window but robust
to collimator edges, markers and dead pixels. It depends on the data, not on the stored range: DCMTK's lossy JPEG
encoder, for one, shifts stored values and drops nothing else."""


@dataclass(frozen=True)
class SourceGeometry:
    """What the counterfactual needs to be shown like its prior: the one reading of it that every writer uses."""

    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    """PixelSpacing, else ImagerPixelSpacing, else None (row spacing, column spacing in mm)."""
    patient_orientation: tuple[str, str] | None
    laterality: str | None
    """ImageLaterality (the image's own, in DX and CR), else the series' Laterality: the image-level value wins."""
    body_part: str | None
    view_position: str | None = None
    """The projection (PA, AP, LL, ...): which way the beam went, so the gate can refuse laterals."""

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.columns

    @classmethod
    def from_dataset(cls, ds: pydicom.Dataset) -> SourceGeometry:
        spacing = _first_pair(ds, "PixelSpacing", "ImagerPixelSpacing")
        orientation = _first_pair(ds, "PatientOrientation")
        laterality = next((str(ds[k].value) for k in ("ImageLaterality", "Laterality") if _present(ds, k)), None)
        return cls(
            rows=int(ds.Rows), columns=int(ds.Columns),
            pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
            patient_orientation=(str(orientation[0]), str(orientation[1])) if orientation else None,
            laterality=laterality,
            body_part=str(ds.BodyPartExamined) if _present(ds, "BodyPartExamined") else None,
            view_position=str(ds.ViewPosition) if _present(ds, "ViewPosition") else None,
        )


def _first_pair(ds: pydicom.Dataset, *keywords: str) -> list | None:
    """The first of ``keywords`` holding exactly two values: a malformed one falls through to the next."""
    for keyword in keywords:
        if keyword in ds and ds[keyword].VM == 2:
            return list(ds[keyword].value)
    return None


@dataclass(frozen=True)
class PriorImage:
    pixels: np.ndarray
    """float32 [rows, columns] in [0, 1], 1 = brightest as displayed (MONOCHROME1 already inverted)."""
    dataset: pydicom.Dataset
    """The source header, usable as highdicom's ref_dataset."""
    geometry: SourceGeometry


def printable(value: object) -> str:
    """A header value safe for a one-line message: values from a malformed file could hold anything."""
    return re.sub(r"[^\x20-\x7e]", "?", str(value))[:64] or "unknown"


def _load(source: str | os.PathLike | bytes | pydicom.Dataset) -> pydicom.Dataset:
    if isinstance(source, pydicom.Dataset):
        return source
    try:
        return pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise  # the caller's path is wrong: not a property of the DICOM input
    except Exception as exc:  # any parser failure on untrusted bytes means the same thing to the user
        raise NotDicomError(f"not a readable DICOM file ({type(exc).__name__}): the file is not DICOM or is "
                            "truncated") from None


def _check_header(ds: pydicom.Dataset, max_pixels: int) -> None:
    """Every refusal that the header alone decides, cheapest and most telling first."""
    sop_class = str(ds.get("SOPClassUID") or "")
    if not sop_class:  # Type 1 in every IOD; pydicom stops quietly where a file ends, so this is mostly truncation
        raise NotDicomError("the header has no SOP Class UID: the file is truncated or not a DICOM image")
    if sop_class not in RADIOGRAPHY and sop_class not in SECONDARY_CAPTURE:
        raise UnsupportedImageError(f"modality {printable(ds.get('Modality', ''))} (SOP class "
                                    f"{printable(sop_class)}) is not supported: the prior must be CR, DX or a "
                                    "grayscale Secondary Capture")
    if "PixelData" not in ds:
        raise NoPixelDataError("the object has no pixel data: a truncated file, or not an image")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise UnsupportedImageError(f"multi-frame images ({frames} frames) are not supported: the prior must be "
                                    "a single radiograph")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel") or 1) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImageError(f"colour images ({printable(photometric)}) are not supported: the prior must "
                                    "be grayscale")
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows <= 0 or columns <= 0:
        raise NoPixelDataError("the object has no image size (Rows/Columns)")
    if rows * columns > max_pixels:
        raise ImageTooLargeError(f"the image is {rows}x{columns} = {rows * columns} pixels; the limit is {max_pixels}")


def _output_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """The stored range after the Modality LUT: also the range pydicom maps a window onto (PS3.3 C.11.2.1.2)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    low, high = (0, 2**bits - 1) if int(ds.PixelRepresentation) == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
    return low * slope + intercept, high * slope + intercept


def _decode(ds: pydicom.Dataset) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as exc:  # every decoder failure means the same thing to the user
        meta = getattr(ds, "file_meta", None)
        syntax = printable(meta.get("TransferSyntaxUID", "")) if meta else "unknown"
        raise NotDicomError(f"the pixel data cannot be decoded ({type(exc).__name__}): truncated or an unsupported "
                            f"transfer syntax ({syntax})") from None


def _apply_voi_lut_sequence(values: np.ndarray, item: pydicom.Dataset) -> tuple[np.ndarray, tuple[float, float]]:
    """The first VOI LUT, and the range of its entries.

    Not pydicom's apply_voi_lut: pydicom 3.0 computes 8-bit LUTs' indices in uint8, which wraps them. The range is
    the LUT's own, as Cornerstone and Horos use, because some CRs declare 16-bit entries that hold 12 bits.
    """
    entries, first_mapped, _ = (int(value) for value in item.LUTDescriptor)
    entries = entries or 2**16
    data = item.LUTData
    if isinstance(data, bytes):  # OW: 16-bit words, or one byte per entry in old 8-bit encodings
        lut = np.frombuffer(data, dtype=np.uint8 if len(data) == entries else np.dtype("<u2"))
    else:
        lut = np.atleast_1d(np.asarray(data))
    index = np.clip(np.rint(values).astype(np.int64) - first_mapped, 0, lut.size - 1)
    return lut[index].astype(np.float64), (float(lut.min()), float(lut.max()))


def _present(ds: pydicom.Dataset, keyword: str) -> bool:
    """Present with a value: Type 2 attributes may be there and empty."""
    return keyword in ds and not ds[keyword].is_empty


def _display_values(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    """Stored values to displayed brightness: Modality LUT, VOI (LUT or window), MONOCHROME1 inversion."""
    values = apply_modality_lut(stored, ds)
    if _present(ds, "VOILUTSequence"):
        values, (low, high) = _apply_voi_lut_sequence(values, ds.VOILUTSequence[0])
    elif _present(ds, "WindowCenter") and _present(ds, "WindowWidth"):
        values = apply_voi_lut(values, ds).astype(np.float64)
        low, high = _output_range(ds)
    else:
        values = values.astype(np.float64)
        low, high = (float(v) for v in np.percentile(values, AUTO_WINDOW_PERCENTILES))
    scaled = np.clip((values - low) / (high - low if high != low else 1.0), 0.0, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        scaled = 1.0 - scaled
    return scaled.astype(np.float32)


def read_prior(source: str | os.PathLike | bytes | pydicom.Dataset, *, max_pixels: int) -> PriorImage:
    """Read and normalise a CR, DX or grayscale SC prior; refuse anything else with a one-line reason.

    Raises a DicomInputError subclass for every input we refuse; FileNotFoundError and the like pass through.
    """
    ds = _load(source)
    try:
        _check_header(ds, max_pixels)
        geometry = SourceGeometry.from_dataset(ds)
        pixels = _display_values(ds, _decode(ds))
    except DicomInputError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise NotDicomError(f"the DICOM header is malformed ({type(exc).__name__}): a required image attribute is "
                            "missing or invalid") from None
    log.debug("read a %s prior of %dx%d", printable(ds.get("Modality", "")), geometry.rows, geometry.columns)
    return PriorImage(pixels, ds, geometry)
