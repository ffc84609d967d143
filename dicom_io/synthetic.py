"""Valid synthetic grayscale radiographs (DX, CR, grayscale SC) built from an array.

Used for the demo's shipped prior and for tests. Every object says in its
header that it is a synthetic phantom, and passes dciodvfy.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import DSfloat

SOP_CLASSES: dict[tuple[str, str], UID] = {
    ("DX", "FOR PRESENTATION"): DigitalXRayImageStorageForPresentation,  # 1.2.840.10008.5.1.4.1.1.1.1
    ("DX", "FOR PROCESSING"): DigitalXRayImageStorageForProcessing,  # 1.2.840.10008.5.1.4.1.1.1.1.1
    ("CR", ""): ComputedRadiographyImageStorage,  # 1.2.840.10008.5.1.4.1.1.1
    ("OT", ""): SecondaryCaptureImageStorage,  # 1.2.840.10008.5.1.4.1.1.7
}
PHANTOM_COMMENT = "SYNTHETIC PHANTOM - not a patient acquisition"


def _code(value: str, scheme: str, meaning: str) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _ds(*values: float) -> list[DSfloat]:
    """Decimal strings that fit the DS 16-character limit whatever float the caller passed."""
    return [DSfloat(value, auto_format=True) for value in values]


def _stored(pixels: np.ndarray, bits_stored: int, rescale: tuple[float, float] | None) -> np.ndarray:
    """Output units to MONOCHROME2 stored values."""
    values = pixels.astype(np.float64)
    if rescale is not None:
        slope, intercept = rescale
        values = (values - intercept) / slope
    values = np.clip(np.round(values), 0, 2**bits_stored - 1)
    return values.astype(np.uint8 if bits_stored <= 8 else np.uint16)


def _mirrored_window(window: tuple[float, float], bits_stored: int,
                     rescale: tuple[float, float] | None) -> tuple[float, float]:
    """The window that shows MONOCHROME1's complemented values as the caller's window shows the original ones.

    Complementing stored values maps an output value v to top*slope + 2*intercept - v; the centre moves the same way,
    plus 1 because the LINEAR window function (PS3.3 C.11.2.1.2.1) centres on c - 1/2, not on c.
    """
    slope, intercept = rescale or (1.0, 0.0)
    center, width = window
    return (2**bits_stored - 1) * slope + 2 * intercept - center + 1, width


def build_synthetic_image(
    pixels: np.ndarray,
    *,
    modality: str = "DX",
    presentation_intent: str = "FOR PRESENTATION",
    photometric_interpretation: str = "MONOCHROME2",
    bits_stored: int = 12,
    pixel_spacing_mm: float = 0.2,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    patient_name: str = "PHANTOM^CHEST",
    patient_id: str = "PHANTOM-0001",
    patient_birth_date: str = "19700101",
    patient_sex: str = "O",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    accession_number: str = "",
    study_description: str = "Synthetic chest phantom",
) -> pydicom.Dataset:
    """A PA chest image of ``pixels`` (2-D, MONOCHROME2 sense, in output units after ``rescale``).

    ``window`` is given for those output values; with MONOCHROME1 the stored values and the window are both
    mirrored, so every variant displays the same picture. DX "for presentation" without a window gets one
    spanning the data, because that IOD requires a VOI LUT.
    """
    intent = presentation_intent if modality == "DX" else ""
    if (modality, intent) not in SOP_CLASSES:
        raise ValueError(f"unsupported modality/intent {modality}/{presentation_intent}: use DX, CR or OT")
    if pixels.ndim != 2:
        raise ValueError("pixels must be a 2-D grayscale array")
    if photometric_interpretation not in ("MONOCHROME1", "MONOCHROME2") or not 1 <= bits_stored <= 16:
        raise ValueError("only MONOCHROME1/MONOCHROME2 with 1 to 16 bits stored are supported")
    if modality == "DX" and rescale is not None:
        raise ValueError("the DX IOD fixes the Modality LUT to identity; use CR or OT for a rescale")
    sop_class = SOP_CLASSES[(modality, intent)]
    now = dt.datetime.now()
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        patient_name, patient_id, patient_birth_date, patient_sex)
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.StudyID, ds.AccessionNumber, ds.StudyDescription = "1", accession_number, study_description
    ds.ReferringPhysicianName = ""
    for prefix in ("Study", "Series", "Content", "Acquisition"):
        setattr(ds, f"{prefix}Date", now.strftime("%Y%m%d"))
        setattr(ds, f"{prefix}Time", now.strftime("%H%M%S"))
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.Modality = modality
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SeriesDescription = "PA chest (synthetic phantom)"
    ds.Manufacturer = "progemu-pacs phantom generator"
    ds.ImageComments = PHANTOM_COMMENT
    ds.BodyPartExamined = "CHEST"
    if modality != "OT":  # not in the SC IOD: dciodvfy would call the object a Standard Extended SOP Class
        ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if modality != "OT" else ["DERIVED", "SECONDARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric_interpretation
    stored = _stored(pixels, bits_stored, rescale)
    if window is None and modality == "DX" and presentation_intent == "FOR PRESENTATION":
        low, high = float(stored.min()), float(stored.max())  # DX has an identity Modality LUT
        window = (low + high) / 2, max(high - low, 1.0)
    if photometric_interpretation == "MONOCHROME1":
        stored = 2**bits_stored - 1 - stored  # the complement, so the display is unchanged
        if window is not None:
            window = _mirrored_window(window, bits_stored, rescale)
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    ds.PixelData = stored.tobytes()
    ds.PixelSpacing = _ds(pixel_spacing_mm, pixel_spacing_mm)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = _ds(*rescale)
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = _ds(*window)
    if modality == "DX":
        ds.PresentationIntentType = presentation_intent
        ds.ImagerPixelSpacing = _ds(pixel_spacing_mm, pixel_spacing_mm)
        ds.DetectorType = "DIRECT"
        ds.PositionerType = "NONE"
        ds.PresentationLUTShape = "IDENTITY" if photometric_interpretation == "MONOCHROME2" else "INVERSE"
        ds.AnatomicRegionSequence = Sequence([_code("51185008", "SCT", "Chest")])
        ds.ViewCodeSequence = Sequence([_code("399348003", "SCT", "postero-anterior")])
        ds.AcquisitionContextSequence = Sequence()
        ds.PatientPosition = ""
        ds.DetectorConfiguration = "AREA"
        ds.ExposureIndex = 500
        ds.KVP = 120
        ds.QualityControlImage = "NO"
        ds.PixelIntensityRelationship = "LIN"
        ds.PixelIntensityRelationshipSign = 1
        ds.LossyImageCompression = "00"
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "US"
    elif modality == "CR":
        ds.ImagerPixelSpacing = _ds(pixel_spacing_mm, pixel_spacing_mm)
    else:
        ds.ConversionType = "WSD"
    return ds
