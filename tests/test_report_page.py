"""Report page SC: dciodvfy-clean, in the prior's study, three readable panels, text that never leaves the page."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from dicom_io.records import SYNTHETIC_NOTICE, AlgorithmRecord, CounterfactualText
from dicom_io.report_page import (
    BACKGROUND,
    MARGIN,
    MID_GREY,
    NOT_AN_ACQUISITION,
    PAGE_WIDTH,
    build_report_page,
    render_report_page,
)
from dicom_io.synthetic import build_synthetic_image
from tests.dicom_validators import assert_dciodvfy_clean

ROWS, COLS = 300, 240
LONG = "Pleuraerguss links größer, the left pleural effusion worsens " * 400 + "x" * 5000


def ramp(rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """A vertical ramp: a panel showing it is far from uniform."""
    return np.tile(np.linspace(0.1, 0.9, rows, dtype=np.float32)[:, None], (1, cols))


def prior_for(pixels: np.ndarray, modality: str = "DX") -> pydicom.Dataset:
    return build_synthetic_image(np.rint(pixels * 4000).astype(np.uint16), modality=modality, patient_id="RP-TEST-1")


@pytest.fixture
def prior() -> pydicom.Dataset:
    return prior_for(ramp())


@pytest.fixture
def algorithm() -> AlgorithmRecord:
    return AlgorithmRecord(name="ProgEmu", version="test-0", checkpoint_sha256="ab" * 32, software_version="0.1.0",
                           device_uid="2.25.314159", parameters={"seed": "42", "cfg": "3.0", "top_k": "2048"})


@pytest.fixture
def text() -> CounterfactualText:
    return CounterfactualText(hypothesis="Pleuraerguss links größer", interpretation="Larger left pleural effusion.")


@pytest.fixture
def changed() -> np.ndarray:
    """Brighter in the lower half, darker in the upper left quarter."""
    image = ramp()
    image[ROWS // 2:, :] += 0.1
    image[: ROWS // 4, : COLS // 2] -= 0.1
    return np.clip(image, 0, 1)


def save_and_validate(page: pydicom.Dataset, tmp_path) -> pydicom.Dataset:
    path = tmp_path / "page.dcm"
    page.save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    return pydicom.dcmread(path)


def region(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    left, top, right, bottom = box
    return pixels[top:bottom, left:right]


@pytest.mark.parametrize("modality", ["DX", "CR", "OT"])
def test_passes_dciodvfy(modality, changed, algorithm, text, tmp_path) -> None:
    prior = prior_for(ramp(), modality)
    page = build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text,
                             counterfactual_sop_instance_uid=pydicom.uid.generate_uid())
    written = save_and_validate(page, tmp_path)
    assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_same_patient_and_study_new_series(prior, changed, algorithm, text) -> None:
    page = build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text)
    assert page.PatientID == prior.PatientID == "RP-TEST-1"
    assert page.PatientName == prior.PatientName
    assert page.StudyInstanceUID == prior.StudyInstanceUID
    assert page.SeriesInstanceUID != prior.SeriesInstanceUID
    assert page.SOPInstanceUID != prior.SOPInstanceUID
    assert page.SeriesNumber == 9903
    assert page.SeriesDate and page.SeriesTime and page.ContentDate and page.ContentTime
    uid = pydicom.uid.generate_uid()
    given = build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text, series_instance_uid=uid,
                              series_number=7)
    assert given.SeriesInstanceUID == uid and given.SeriesNumber == 7


def test_marked_derived_research_synthetic(prior, changed, algorithm, text) -> None:
    page = build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text)
    assert page.SOPClassUID == SecondaryCaptureImageStorage
    assert list(page.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert page.ContentQualification == "RESEARCH"
    assert page.ConversionType in ("SYN", "WSD")
    assert page.BurnedInAnnotation == "YES"
    assert SYNTHETIC_NOTICE in page.SeriesDescription and "report page" in page.SeriesDescription
    assert len(page.SeriesDescription) <= 64
    assert SYNTHETIC_NOTICE in page.ImageComments and NOT_AN_ACQUISITION in page.ImageComments
    assert algorithm.checkpoint_sha256 in page.DerivationDescription
    assert (page.Manufacturer, page.ManufacturerModelName) == (algorithm.manufacturer, algorithm.name)
    assert (page.PhotometricInterpretation, page.BitsAllocated, page.SamplesPerPixel) == ("MONOCHROME2", 8, 1)
    assert page.Columns == PAGE_WIDTH and page.Columns > page.Rows  # landscape


def test_source_images_are_the_prior_and_the_counterfactual(prior, changed, algorithm, text) -> None:
    counterfactual_uid = pydicom.uid.generate_uid()
    page = build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text,
                             counterfactual_sop_instance_uid=counterfactual_uid)
    references = [(item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) for item in page.SourceImageSequence]
    assert references == [(prior.SOPClassUID, prior.SOPInstanceUID),
                          (SecondaryCaptureImageStorage, counterfactual_uid)]
    for item in page.SourceImageSequence:
        (purpose,) = item.PurposeOfReferenceCodeSequence
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")
        assert item.SpatialLocationsPreserved == "NO"  # the page rescales and places the images
    alone = build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text)
    assert [item.ReferencedSOPInstanceUID for item in alone.SourceImageSequence] == [prior.SOPInstanceUID]


def test_no_change_gives_a_mid_grey_difference_panel(prior, algorithm, text) -> None:
    page = render_report_page(prior, ramp(), ramp(), algorithm=algorithm, text=text)
    prior_panel, counterfactual_panel, difference = (region(page.pixels, box) for box in page.panels)
    assert np.all(difference == MID_GREY)
    assert np.array_equal(prior_panel, counterfactual_panel)
    # the prior panel shows the ramp: dark at the top, bright at the bottom
    assert prior_panel[:10].mean() < 60 and prior_panel[-10:].mean() > 200


def test_changes_show_brighter_and_darker_in_the_difference_panel(prior, changed, algorithm, text) -> None:
    page = render_report_page(prior, ramp(), changed, algorithm=algorithm, text=text)
    prior_panel, counterfactual_panel, difference = (region(page.pixels, box) for box in page.panels)
    height, width = difference.shape
    assert difference[int(height * 0.6):, :].mean() > MID_GREY + 80  # brighter in the counterfactual
    assert difference[: height // 5, : width // 3].mean() < MID_GREY - 80  # darker
    assert np.all(np.abs(difference[int(height * 0.3):int(height * 0.45), :].astype(int) - MID_GREY) <= 1)
    assert counterfactual_panel[int(height * 0.6):].mean() > prior_panel[int(height * 0.6):].mean() + 15


def test_banner_and_texts_are_burned_in(prior, changed, algorithm, text) -> None:
    page = build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text)
    pixels = page.pixel_array
    banner = pixels[:20, :]
    assert (banner == 255).mean() > 0.9  # a white band across the top ...
    assert (pixels[:80, :] == 0).any()  # ... with black lettering
    rendered = render_report_page(prior, ramp(), changed, algorithm=algorithm, text=text)
    texts = region(rendered.pixels, rendered.text)
    assert (texts > 128).sum() > 2000  # five labelled rows of text
    left, top, right, bottom = rendered.text
    assert rendered.panels[0][3] < top and bottom < rendered.pixels.shape[0]


def test_long_and_non_ascii_text_stays_within_the_page(prior, changed, algorithm, tmp_path) -> None:
    long_text = CounterfactualText(hypothesis=LONG, interpretation=LONG + "\x00\n\t end")
    written = save_and_validate(build_report_page(prior, ramp(), changed, algorithm=algorithm, text=long_text),
                                tmp_path)
    assert written.Columns == PAGE_WIDTH
    assert "größer" in written.ImageComments  # UTF-8 round trip
    page = render_report_page(prior, ramp(), changed, algorithm=algorithm, text=long_text)
    longer = render_report_page(prior, ramp(), changed, algorithm=algorithm,
                                text=CounterfactualText(hypothesis=LONG * 3, interpretation=LONG * 3))
    assert page.pixels.shape == longer.pixels.shape  # line limits: more text does not grow the page
    left, top, right, bottom = page.text
    assert np.all(page.pixels[top:bottom, right + 4:] == BACKGROUND)  # nothing runs into the right margin
    assert np.all(page.pixels[-MARGIN // 2:, :] == BACKGROUND)


@pytest.mark.parametrize("shape", [(2500, 2000), (160, 400), (600, 120)])
def test_non_square_priors_keep_their_aspect_ratio(shape, algorithm, text, tmp_path) -> None:
    rows, cols = shape
    prior = prior_for(ramp(rows, cols))
    counterfactual = np.clip(ramp(rows, cols) + 0.1, 0, 1)
    page = render_report_page(prior, ramp(rows, cols), counterfactual, algorithm=algorithm, text=text)
    assert page.pixels.shape[1] == PAGE_WIDTH
    for left, top, right, bottom in page.panels:
        assert 0 <= left < right <= PAGE_WIDTH and 0 <= top < bottom <= page.pixels.shape[0]
        assert (right - left) / (bottom - top) == pytest.approx(cols / rows, rel=0.03)
    save_and_validate(build_report_page(prior, ramp(rows, cols), counterfactual, algorithm=algorithm, text=text),
                      tmp_path)


def test_rejects_pixels_that_do_not_fit(prior, algorithm, text) -> None:
    with pytest.raises(ValueError):
        build_report_page(prior, ramp(), ramp(ROWS, COLS + 1), algorithm=algorithm, text=text)
    with pytest.raises(ValueError):
        build_report_page(prior, ramp(ROWS + 1, COLS), ramp(ROWS + 1, COLS), algorithm=algorithm, text=text)
