"""Read a prior image: validate it, decode it, and bring it to displayed intensities in [0, 1].

Cheap header checks come before pixel decoding, so an oversized or unsuitable
object is refused without spending memory on it. Messages never contain PHI,
and parser exceptions are not chained into them: pydicom's messages can quote
element values such as names or dates. For the same reason pydicom's own warnings
and log records about a file are held back (counted at debug level, never shown).

Every way untrusted bytes can fail ends in one DicomInputError subclass, including
a Rust decoder's panic, which Python raises as a BaseException.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR
from pydicom.encaps import get_frame
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import _get_jpg_parameters
from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes, RLELossless
from pydicom.valuerep import validate_value

from dicom_io.errors import (
    DicomInputError,
    ImageTooLargeError,
    NoPixelDataError,
    NotDicomError,
    PatientRecordError,
    PixelDataError,
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
RECORD_TYPE_1 = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality")
"""Every output names the prior's study and references the prior (the SR its series too, as evidence)."""
RECORD_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                     "StudyID", "AccessionNumber")
"""Type 2 Patient and General Study attributes: every output copies them (highdicom requires them present)."""
PATIENT_SEX = ("", "M", "F", "O")
MALFORMED_HEADER = (ValueError, TypeError, LookupError, AttributeError, NotImplementedError, OverflowError, OSError,
                    struct.error, BytesLengthException, InvalidDicomError)
"""What pydicom raises for an element it cannot convert once the file is in memory: an unknown VR, a value whose
length does not fit its VR, an unknown character set (LookupError), a sequence cut short (OSError)."""
JPEG_FAMILY = frozenset((*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes))
"""Syntaxes whose codestreams declare their own image size (a decoder allocates what they declare)."""
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


class _ParserQuiet:
    """Holds back pydicom's warnings and log records while untrusted files are parsed and decoded.

    They can quote element values (names, dates), and on a terminal they would break a refusal's one line; a debug
    line counts them. Warning filters and logger levels are process-wide, so concurrent reads (the embedded
    worker's threads) share one quiet period, opened by the first and closed by the last; pydicom's records from
    other threads are held back during it too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._level = logging.NOTSET
        self._warnings = warnings.catch_warnings(record=True)
        self._caught: list[warnings.WarningMessage] = []

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                parser_log = logging.getLogger("pydicom")  # its modules log to it and to children of it
                self._level = parser_log.level
                parser_log.setLevel(logging.CRITICAL + 1)
                self._warnings = warnings.catch_warnings(record=True)
                caught = self._warnings.__enter__()
                self._caught = caught if caught is not None else []  # the list it records into, even when empty
                warnings.simplefilter("always")
            self._depth += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth:
                return
            logging.getLogger("pydicom").setLevel(self._level)
            self._warnings.__exit__(None, None, None)
            count = len(self._caught)
        if count:
            log.debug("pydicom reported %d problem(s) with the file (not shown: they can quote patient data)", count)


_parser_quiet = _ParserQuiet()


def _is_decoder_panic(exc: BaseException) -> bool:
    """A panic in a Rust decoder (pylibjpeg-rle), raised by pyo3 as a BaseException from an unimportable module."""
    return any(kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime" for kind in type(exc).__mro__)


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


def _transfer_syntax(ds: pydicom.Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta else ""


def _declared_shape(frame: bytes, syntax: str) -> tuple[int, int] | None:
    """(rows, columns) as a JPEG, JPEG-LS or JPEG 2000 codestream (``syntax``) declares them; None if it does not
    say."""
    if syntax in JPEG2000TransferSyntaxes:  # HTJ2K included
        at = frame.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC, then SIZ (ISO/IEC 15444-1 A.5.1)
        if at < 0 or len(frame) < at + 24:
            return None
        width, height, left, top = struct.unpack_from(">4L", frame, at + 8)
        return height - top, width - left
    info = _get_jpg_parameters(frame)  # pydicom's own SOF parser, for JPEG and JPEG-LS
    return (info["height"], info["width"]) if info.get("height") else None  # 0: given later, by DNL


def _check_encoded_size(ds: pydicom.Dataset, syntax: str) -> None:
    """Refuse compressed data that would decode to more than the header's image, before any decoder sees it.

    A codec allocates what its stream declares: a 4 KB JPEG 2000 file declaring 5 million rows took seconds and
    a gigabyte before the mismatch showed. RLE never encodes an image to much more than its raw size; pydicom's
    RLE decoder would expand a larger stream up to 64-fold before noticing.
    """
    rows, columns = int(ds.Rows), int(ds.Columns)
    if syntax == RLELossless:
        raw = rows * columns * max(1, int(ds.get("BitsAllocated") or 8) // 8)
        if len(ds.PixelData) > 2 * raw + 65_536:
            raise PixelDataError(f"the pixel data could not be decoded: {len(ds.PixelData)} bytes of RLE data is "
                                 f"more than any encoding of a {rows}x{columns} image (corrupt)")
    elif syntax in JPEG_FAMILY:
        declared = _declared_shape(get_frame(ds.PixelData, 0, number_of_frames=1), syntax)
        if declared is not None and declared != (rows, columns):
            raise PixelDataError(f"the pixel data could not be decoded: its stream declares a {declared[0]}x"
                                 f"{declared[1]} image, the header a {rows}x{columns} one (corrupt)")


def _decode(ds: pydicom.Dataset) -> np.ndarray:
    """The stored pixel values; every decoder failure, a Rust panic included, is a PixelDataError.

    RLE is decoded by pydicom's own decoder, not pylibjpeg-rle's: corrupt segments make the Rust one panic,
    which prints a report on stderr that no exception handler can hold back.
    """
    syntax = _transfer_syntax(ds)
    try:
        _check_encoded_size(ds, syntax)
        if syntax == RLELossless:
            ds.pixel_array_options(decoding_plugin="pydicom")
        return ds.pixel_array
    except PixelDataError:
        raise
    except BaseException as exc:  # every decoder failure means the same thing to the user
        if not isinstance(exc, Exception) and not _is_decoder_panic(exc):
            raise  # KeyboardInterrupt, SystemExit and the like
        raise PixelDataError(f"the pixel data could not be decoded ({type(exc).__name__}): it is corrupt or "
                             f"truncated, or its transfer syntax ({printable(syntax)}) is not supported") from None


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


def display_values(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
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
    with _parser_quiet:
        ds = _load(source)
        try:
            _check_header(ds, max_pixels)
            geometry = SourceGeometry.from_dataset(ds)
            pixels = display_values(ds, _decode(ds))
            log.debug("read a %s prior of %dx%d", printable(ds.get("Modality", "")), geometry.rows, geometry.columns)
        except DicomInputError:
            raise
        except MALFORMED_HEADER as exc:
            raise NotDicomError(f"the DICOM header is malformed ({type(exc).__name__}): a required image attribute "
                                "is missing or invalid") from None
    return PriorImage(pixels, ds, geometry)


def _copyable(ds: pydicom.Dataset, keyword: str) -> bool:
    """Present with the VR and multiplicity the standard gives it, and a value that VR allows."""
    try:
        element = ds[keyword]
        validate_value(element.VR, element.value, pydicom_config.RAISE)
    except MALFORMED_HEADER:
        return False
    return (element.VR == dictionary_VR(keyword) and element.VM <= 1
            and (keyword != "PatientSex" or element.value in PATIENT_SEX))


def check_patient_record(ds: pydicom.Dataset) -> None:
    """Refuse a prior whose patient and study attributes cannot be carried into the outputs.

    Every output copies them into the patient's record, so a missing one or a value its VR forbids would fail
    there, after generation, or corrupt the record in the PACS. The message names the attribute, never its value.
    """
    with _parser_quiet:
        try:
            for _ in ds.iterall():  # parsed now, so that no element fails later, in a writer that copies it
                pass
        except MALFORMED_HEADER as exc:
            raise PatientRecordError(f"the header holds an element that cannot be parsed ({type(exc).__name__}): "
                                     "it is malformed") from None
        for keyword in (*RECORD_TYPE_1, *RECORD_ATTRIBUTES):
            required = "Type 1" if keyword in RECORD_TYPE_1 else "Type 2"
            if keyword not in ds:
                raise PatientRecordError(f"the header has no {keyword} ({required}): the outputs copy or refer to "
                                         "it, so the prior must carry it")
            if not _copyable(ds, keyword):
                raise PatientRecordError(f"the header's {keyword} is malformed: not a valid {dictionary_VR(keyword)} "
                                         "value that the outputs could copy")
            if required == "Type 1" and not ds[keyword].value:
                raise PatientRecordError(f"the header's {keyword} is empty ({required}): the outputs copy or refer "
                                         "to it")
