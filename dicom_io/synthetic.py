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
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

SOP_CLASSES = {
    ("DX", "FOR PRESENTATION"): "1.2.840.10008.5.1.4.1.1.1.1",
    ("DX", "FOR PROCESSING"): "1.2.840.10008.5.1.4.1.1.1.1.1",
    ("CR", ""): "1.2.840.10008.5.1.4.1.1.1",
    ("OT", ""): "1.2.840.10008.5.1.4.1.1.7",
}
PHANTOM_COMMENT = "SYNTHETIC PHANTOM - not a patient acquisition"


def _code(value: str, scheme: str, meaning: str) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _stored(pixels: np.ndarray, bits_stored: int, photometric: str,
            rescale: tuple[float, float] | None) -> np.ndarray:
    values = pixels.astype(np.float64)
    if rescale is not None:
        slope, intercept = rescale
        values = (values - intercept) / slope
    top = 2**bits_stored - 1
    values = np.clip(np.round(values), 0, top)
    if photometric == "MONOCHROME1":
        values = top - values
    return values.astype(np.uint8 if bits_stored <= 8 else np.uint16)


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
    """A PA chest image of ``pixels`` (2-D, MONOCHROME2 sense, in output units after ``rescale``)."""
    if pixels.ndim != 2:
        raise ValueError("pixels must be a 2-D grayscale array")
    if modality == "DX" and rescale is not None:
        raise ValueError("the DX IOD fixes the Modality LUT to identity; use CR or OT for a rescale")
    intent = presentation_intent if modality == "DX" else ""
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
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if modality != "OT" else ["DERIVED", "SECONDARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric_interpretation
    stored = _stored(pixels, bits_stored, photometric_interpretation, rescale)
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    ds.PixelData = stored.tobytes()
    ds.PixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if modality == "DX":
        ds.PresentationIntentType = presentation_intent
        ds.ImagerPixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
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
        if window is None and presentation_intent == "FOR PRESENTATION":
            low, high = float(stored.min()), float(stored.max())
            ds.WindowCenter, ds.WindowWidth = (low + high) / 2, max(high - low, 1.0)
        if rescale is None:
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "US"
    elif modality == "CR":
        ds.ImagerPixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    else:
        ds.ConversionType = "WSD"
    return ds
