"""Counterfactual Secondary Capture: dciodvfy-clean, in the prior's study, traceable to the prior, visibly synthetic."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from dicom_io.output_common import OUTSIDE_TRAINING_DATA
from dicom_io.reader import read_prior
from dicom_io.records import INCONSISTENT, SYNTHETIC_NOTICE, AlgorithmRecord, CounterfactualText
from dicom_io.report_page import build_report_page
from dicom_io.sc import build_counterfactual_sc
from dicom_io.synthetic import build_synthetic_image
from tests.support.dicom_validators import assert_dciodvfy_clean
from tests.test_sr import FLAGGED, NORMAL

ROWS, COLS = 300, 240


@pytest.fixture
def prior() -> pydicom.Dataset:
    ramp = np.linspace(200, 3800, ROWS * COLS).reshape(ROWS, COLS)
    return build_synthetic_image(ramp.astype(np.uint16), patient_id="SC-TEST-1")


@pytest.fixture
def algorithm() -> AlgorithmRecord:
    return AlgorithmRecord(name="ProgEmu", version="test-0", checkpoint_sha256="ab" * 32, software_version="0.1.0",
                           device_uid="2.25.314159", parameters={"seed": "42", "top_k": "2048"})


@pytest.fixture
def text() -> CounterfactualText:
    return CounterfactualText(hypothesis="the left pleural effusion worsens",
                              interpretation="Larger left pleural effusion.")


@pytest.fixture
def pixels() -> np.ndarray:
    """Mid-gray ramp: both the black box and the white text of the label must differ from it."""
    return np.tile(np.linspace(0.3, 0.7, COLS, dtype=np.float32), (ROWS, 1))


@pytest.fixture
def sc(prior, pixels, algorithm, text) -> pydicom.Dataset:
    return build_counterfactual_sc(prior, pixels, algorithm=algorithm, text=text, checks=NORMAL)


@pytest.mark.parametrize("modality", ["DX", "CR", "OT"])
def test_passes_dciodvfy(modality, pixels, algorithm, text, tmp_path) -> None:
    prior = build_synthetic_image(np.full((ROWS, COLS), 1000, np.uint16), modality=modality)
    path = tmp_path / "sc.dcm"
    build_counterfactual_sc(prior, pixels, algorithm=algorithm, text=text, checks=NORMAL).save_as(
        path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_passes_dciodvfy_without_body_part(prior, pixels, algorithm, text, tmp_path) -> None:
    """Laterality (Type 2C) must then be present and empty, where with a chest body part it must be absent."""
    del prior.BodyPartExamined
    sc = build_counterfactual_sc(prior, pixels, algorithm=algorithm, text=text, checks=NORMAL)
    sc.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    assert_dciodvfy_clean(tmp_path / "sc.dcm")
    assert "Laterality" in sc and not sc.Laterality


def test_same_patient_and_study_new_series(sc, prior) -> None:
    assert sc.PatientID == prior.PatientID == "SC-TEST-1"
    assert sc.PatientName == prior.PatientName
    assert sc.StudyInstanceUID == prior.StudyInstanceUID
    assert sc.SeriesInstanceUID != prior.SeriesInstanceUID
    assert sc.SOPInstanceUID != prior.SOPInstanceUID
    assert sc.SeriesNumber == 9901
    assert sc.SeriesDate and sc.SeriesTime and sc.ContentDate and sc.ContentTime


def test_series_uid_can_be_given(prior, pixels, algorithm, text) -> None:
    uid = pydicom.uid.generate_uid()
    sc = build_counterfactual_sc(prior, pixels, algorithm=algorithm, text=text, checks=NORMAL,
                                 series_instance_uid=uid, series_number=7)
    assert sc.SeriesInstanceUID == uid and sc.SeriesNumber == 7


def test_marked_derived_research_synthetic(sc, algorithm) -> None:
    assert list(sc.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert sc.ContentQualification == "RESEARCH"
    assert sc.ConversionType == "SYN"
    assert sc.BurnedInAnnotation == "YES"
    for keyword in ("SeriesDescription", "ImageComments", "DerivationDescription"):
        assert SYNTHETIC_NOTICE in sc.get(keyword)
    assert "the left pleural effusion worsens" in sc.DerivationDescription
    assert (sc.Manufacturer, sc.ManufacturerModelName) == (algorithm.manufacturer, algorithm.name)
    assert list(sc.SoftwareVersions) == [algorithm.version, algorithm.software_version]


def test_source_image_is_the_prior(sc, prior) -> None:
    (item,) = sc.SourceImageSequence
    assert item.ReferencedSOPClassUID == prior.SOPClassUID
    assert item.ReferencedSOPInstanceUID == prior.SOPInstanceUID
    (purpose,) = item.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")


def test_geometry_of_the_prior(sc, prior) -> None:
    assert (sc.Rows, sc.Columns) == (prior.Rows, prior.Columns)
    assert (sc.PhotometricInterpretation, sc.BitsAllocated) == ("MONOCHROME2", 8)
    spacing = prior.get("PixelSpacing") or prior.get("ImagerPixelSpacing")
    assert [float(v) for v in sc.PixelSpacing] == [float(v) for v in spacing]
    assert [float(v) for v in sc.NominalScannedPixelSpacing] == [float(v) for v in spacing]
    if prior.get("PatientOrientation"):
        assert list(sc.PatientOrientation) == list(prior.PatientOrientation)


@pytest.mark.parametrize(("image_laterality", "series_laterality", "written"), [
    ("L", "R", "L"),  # the image's own laterality wins over the series'
    (None, "R", "R"),
    ("U", "R", None),  # the image says unpaired: no side, whatever the series says
])
def test_writers_restate_the_readers_laterality(prior, pixels, algorithm, text, image_laterality, series_laterality,
                                                written) -> None:
    prior.ImageLaterality, prior.Laterality = image_laterality, series_laterality
    if image_laterality is None:
        del prior.ImageLaterality
    geometry = read_prior(prior, max_pixels=10**7).geometry
    assert geometry.laterality == (image_laterality or series_laterality)
    for output in (build_counterfactual_sc(prior, pixels, algorithm=algorithm, text=text, checks=NORMAL),
                   build_report_page(prior, pixels, pixels, algorithm=algorithm, text=text, checks=NORMAL)):
        assert output.get("Laterality") == written
        assert output.BodyPartExamined == geometry.body_part == "CHEST"


def test_malformed_pixel_spacing_falls_back_to_the_imager_spacing_as_the_reader_does(prior, pixels, algorithm,
                                                                                        text) -> None:
    prior.PixelSpacing = [0.1]
    prior.ImagerPixelSpacing = [0.25, 0.3]
    sc = build_counterfactual_sc(prior, pixels, algorithm=algorithm, text=text, checks=NORMAL)
    assert read_prior(prior, max_pixels=10**7).geometry.pixel_spacing == (0.25, 0.3)
    assert [float(v) for v in sc.PixelSpacing] == [0.25, 0.3]


def test_multibyte_algorithm_name_fits_lo(prior, pixels, text, tmp_path) -> None:
    """LO counts bytes: 30 "Ö" are 30 characters but 60 bytes, and with the notice far more than 64."""
    algorithm = AlgorithmRecord(name="Ö" * 30, version="ä" * 40, checkpoint_sha256="ab" * 32,
                                software_version="0.1.0", device_uid="2.25.314159")
    sc = build_counterfactual_sc(prior, pixels, algorithm=algorithm, text=text, checks=NORMAL)
    for keyword in ("SeriesDescription", "ManufacturerModelName", "SecondaryCaptureDeviceManufacturerModelName"):
        assert len(sc.get(keyword).encode()) <= 64
    assert all(len(version.encode()) <= 64 for version in sc.SoftwareVersions)
    sc.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    assert_dciodvfy_clean(tmp_path / "sc.dcm")


def test_label_is_burned_into_the_pixels(sc, pixels) -> None:
    written = sc.pixel_array
    expected = np.rint(pixels * 255).astype(np.uint8)
    band = (slice(0, ROWS // 40), slice(0, COLS // 2))
    changed = written[band] != expected[band]
    assert changed.mean() > 0.9
    assert written[band].min() == 0 and written[band].max() == 255
    below = (slice(ROWS // 4, None), slice(None))
    assert np.array_equal(written[below], expected[below])


@pytest.mark.parametrize("phrase", ["the effusion worsens ", "Pleuraerguss links größer "])
def test_long_hypothesis_fits_the_header(prior, pixels, algorithm, tmp_path, phrase) -> None:
    text = CounterfactualText(hypothesis=phrase * 600, interpretation="x")
    sc = build_counterfactual_sc(prior, pixels, algorithm=algorithm, text=text, checks=NORMAL)
    assert len(sc.DerivationDescription.encode()) <= 1024 and len(sc.ImageComments.encode()) <= 10240
    sc.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    assert_dciodvfy_clean(tmp_path / "sc.dcm")


@pytest.mark.parametrize("bad", [np.zeros((ROWS, COLS + 1), np.float32), np.zeros((ROWS, COLS), np.uint16),
                                 np.full((ROWS, COLS), np.nan, np.float32)])
def test_rejects_pixels_that_do_not_fit(prior, algorithm, text, bad) -> None:
    with pytest.raises(ValueError):
        build_counterfactual_sc(prior, bad, algorithm=algorithm, text=text, checks=NORMAL)


def test_image_comments_are_marked_only_for_a_flagged_result(prior, pixels, algorithm, text, sc, tmp_path) -> None:
    assert sc.ImageComments.startswith(SYNTHETIC_NOTICE)
    assert INCONSISTENT not in sc.ImageComments and OUTSIDE_TRAINING_DATA not in sc.ImageComments
    flagged = build_counterfactual_sc(prior, pixels, algorithm=algorithm, text=text, checks=FLAGGED)
    assert flagged.ImageComments.startswith(f"{INCONSISTENT}: {FLAGGED.consistency.reason}")
    assert OUTSIDE_TRAINING_DATA in flagged.ImageComments and sc.ImageComments in flagged.ImageComments
    assert np.array_equal(flagged.pixel_array, sc.pixel_array)  # the burned-in notice stays as it is
    flagged.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    assert_dciodvfy_clean(tmp_path / "sc.dcm")


def test_the_marking_survives_a_hypothesis_cut_to_fit_lt(prior, pixels, algorithm) -> None:
    text = CounterfactualText(hypothesis="Pleuraerguss links größer " * 600, interpretation="x")
    sc = build_counterfactual_sc(prior, pixels, algorithm=algorithm, text=text, checks=FLAGGED)
    assert len(sc.ImageComments.encode()) <= 10240 and sc.ImageComments.endswith("...")
    assert sc.ImageComments.startswith(f"{INCONSISTENT}: {FLAGGED.consistency.reason}")
    assert OUTSIDE_TRAINING_DATA in sc.ImageComments
