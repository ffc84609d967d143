"""The synthetic radiographs the demo and the tests use are valid DICOM (dciodvfy) and say they are phantoms."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from dicom_io.synthetic import PHANTOM_COMMENT, SOP_CLASSES, build_synthetic_image
from plugin.config import DEMO_PRIOR
from tests.support.dicom_fixtures import chest_pixels, write
from tests.support.dicom_validators import assert_dciodvfy_clean


@pytest.mark.parametrize("kwargs, bits, iod", [
    ({}, 12, "DXImageForPresentation"),
    ({"presentation_intent": "FOR PROCESSING"}, 12, "DXImageForProcessing"),
    ({"modality": "CR"}, 12, "CRImage"),
    ({"modality": "OT"}, 12, "SCImage"),
    ({"photometric_interpretation": "MONOCHROME1"}, 12, "DXImageForPresentation"),
    ({"presentation_intent": "FOR PROCESSING", "photometric_interpretation": "MONOCHROME1"}, 12,
     "DXImageForProcessing"),
    ({"modality": "CR", "photometric_interpretation": "MONOCHROME1", "rescale": (2.0, -100.0),
      "window": (1500.0, 3000.0)}, 12, "CRImage"),
    ({"bits_stored": 8}, 8, "DXImageForPresentation"),
    ({"modality": "CR", "bits_stored": 8}, 8, "CRImage"),
    ({"modality": "OT", "bits_stored": 8}, 8, "SCImage"),
])
def test_dciodvfy_clean(kwargs: dict, bits: int, iod: str, tmp_path: Path) -> None:
    ds = build_synthetic_image(chest_pixels(bits=bits), **kwargs)
    output = assert_dciodvfy_clean(write(ds, tmp_path / "s.dcm"))
    assert output.splitlines()[0] == iod  # dciodvfy names the IOD it checked against
    assert "Standard Extended" not in output
    assert ds.BitsAllocated == (8 if bits == 8 else 16)


def test_awkward_floats_still_fit_decimal_strings(tmp_path: Path) -> None:
    ds = build_synthetic_image(chest_pixels(), modality="CR", rescale=(1 / 3, -0.123456789123),
                               window=(1000 / 3, 2000 / 7), pixel_spacing_mm=0.1234567891234)
    assert_dciodvfy_clean(write(ds, tmp_path / "s.dcm"))
    assert float(ds.RescaleSlope) == pytest.approx(1 / 3, rel=1e-9)


def test_header_says_phantom_and_keeps_given_identifiers(tmp_path: Path) -> None:
    ds = build_synthetic_image(chest_pixels(), patient_name="PHANTOM^X", patient_id="P-9", study_instance_uid="1.2.3.4",
                               series_instance_uid="1.2.3.4.5", accession_number="ACC1")
    read = pydicom.dcmread(write(ds, tmp_path / "s.dcm"))
    assert read.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert read.SOPClassUID == read.file_meta.MediaStorageSOPClassUID == SOP_CLASSES[("DX", "FOR PRESENTATION")]
    assert (read.StudyInstanceUID, read.SeriesInstanceUID, read.AccessionNumber) == ("1.2.3.4", "1.2.3.4.5", "ACC1")
    assert (read.PatientName, read.PatientID) == ("PHANTOM^X", "P-9")
    assert read.ImageComments == PHANTOM_COMMENT and read.BurnedInAnnotation == "NO"
    assert (read.BodyPartExamined, read.ViewPosition, list(read.PatientOrientation)) == ("CHEST", "PA", ["L", "F"])
    assert read.StudyDate and read.SeriesTime and read.ContentDate and read.Manufacturer
    assert np.array_equal(read.pixel_array, chest_pixels())


def test_new_uids_each_time() -> None:
    first, second = build_synthetic_image(chest_pixels()), build_synthetic_image(chest_pixels())
    assert first.SOPInstanceUID != second.SOPInstanceUID and first.StudyInstanceUID != second.StudyInstanceUID


def test_monochrome1_stores_the_complement() -> None:
    plain = build_synthetic_image(chest_pixels(), modality="CR", window=(1000.0, 800.0))
    inverted = build_synthetic_image(chest_pixels(), modality="CR", window=(1000.0, 800.0),
                                     photometric_interpretation="MONOCHROME1")
    assert np.array_equal(inverted.pixel_array, 4095 - plain.pixel_array)
    assert (float(inverted.WindowCenter), float(inverted.WindowWidth)) == (3096.0, 800.0)  # mirrored with the data


@pytest.mark.parametrize("kwargs, message", [
    ({"rescale": (2.0, 0.0)}, "identity"),
    ({"modality": "CT"}, "unsupported modality"),
    ({"presentation_intent": "FOR SOMETHING"}, "unsupported modality"),
    ({"photometric_interpretation": "RGB"}, "MONOCHROME"),
    ({"bits_stored": 17}, "bits stored"),
])
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_synthetic_image(chest_pixels(), **kwargs)


def test_shipped_demo_prior_is_a_valid_dx_phantom() -> None:
    assert_dciodvfy_clean(DEMO_PRIOR)
    ds = pydicom.dcmread(DEMO_PRIOR)
    assert ds.Modality == "DX" and ds.ImageComments == PHANTOM_COMMENT and ds.PatientName == "PHANTOM^DEMO"
