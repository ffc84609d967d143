"""Report page SC: dciodvfy-clean, in the prior's study, three readable panels, text that never leaves the page."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from dicom_io.output_common import OUTSIDE_TRAINING_DATA
from dicom_io.records import (
    INCONSISTENT,
    SYNTHETIC_NOTICE,
    AlgorithmRecord,
    ConsistencyCheck,
    CounterfactualText,
    InputCheck,
    ResultChecks,
)
from dicom_io.report_page import (
    BACKGROUND,
    INK,
    MARGIN,
    MID_GREY,
    NOT_AN_ACQUISITION,
    PAGE_WIDTH,
    build_report_page,
    render_report_page,
)
from dicom_io.synthetic import build_synthetic_image
from tests.support.dicom_validators import assert_dciodvfy_clean
from tests.test_sr import FLAGGED, NORMAL

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
    page = build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text, checks=NORMAL,
                             counterfactual_sop_instance_uid=pydicom.uid.generate_uid())
    written = save_and_validate(page, tmp_path)
    assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_same_patient_and_study_new_series(prior, changed, algorithm, text) -> None:
    page = build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text, checks=NORMAL)
    assert page.PatientID == prior.PatientID == "RP-TEST-1"
    assert page.PatientName == prior.PatientName
    assert page.StudyInstanceUID == prior.StudyInstanceUID
    assert page.SeriesInstanceUID != prior.SeriesInstanceUID
    assert page.SOPInstanceUID != prior.SOPInstanceUID
    assert page.SeriesNumber == 9903
    assert page.SeriesDate and page.SeriesTime and page.ContentDate and page.ContentTime
    uid = pydicom.uid.generate_uid()
    given = build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text, checks=NORMAL,
                              series_instance_uid=uid, series_number=7)
    assert given.SeriesInstanceUID == uid and given.SeriesNumber == 7


def test_marked_derived_research_synthetic(prior, changed, algorithm, text) -> None:
    page = build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text, checks=NORMAL)
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
    page = build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text, checks=NORMAL,
                             counterfactual_sop_instance_uid=counterfactual_uid)
    references = [(item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) for item in page.SourceImageSequence]
    assert references == [(prior.SOPClassUID, prior.SOPInstanceUID),
                          (SecondaryCaptureImageStorage, counterfactual_uid)]
    for item in page.SourceImageSequence:
        (purpose,) = item.PurposeOfReferenceCodeSequence
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")
        assert item.SpatialLocationsPreserved == "NO"  # the page rescales and places the images
    alone = build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text, checks=NORMAL)
    assert [item.ReferencedSOPInstanceUID for item in alone.SourceImageSequence] == [prior.SOPInstanceUID]


def test_no_change_gives_a_mid_grey_difference_panel(prior, algorithm, text) -> None:
    page = render_report_page(prior, ramp(), ramp(), algorithm=algorithm, text=text, checks=NORMAL)
    prior_panel, counterfactual_panel, difference = (region(page.pixels, box) for box in page.panels)
    assert np.all(difference == MID_GREY)
    assert np.array_equal(prior_panel, counterfactual_panel)
    # the prior panel shows the ramp: dark at the top, bright at the bottom
    assert prior_panel[:10].mean() < 60 and prior_panel[-10:].mean() > 200


def test_changes_show_brighter_and_darker_in_the_difference_panel(prior, changed, algorithm, text) -> None:
    page = render_report_page(prior, ramp(), changed, algorithm=algorithm, text=text, checks=NORMAL)
    prior_panel, counterfactual_panel, difference = (region(page.pixels, box) for box in page.panels)
    height, width = difference.shape
    assert difference[int(height * 0.6):, :].mean() > MID_GREY + 80  # brighter in the counterfactual
    assert difference[: height // 5, : width // 3].mean() < MID_GREY - 80  # darker
    assert np.all(np.abs(difference[int(height * 0.3):int(height * 0.45), :].astype(int) - MID_GREY) <= 1)
    assert counterfactual_panel[int(height * 0.6):].mean() > prior_panel[int(height * 0.6):].mean() + 15


def test_banner_and_texts_are_burned_in(prior, changed, algorithm, text) -> None:
    page = build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text, checks=NORMAL)
    pixels = page.pixel_array
    banner = pixels[:20, :]
    assert (banner == 255).mean() > 0.9  # a white band across the top ...
    assert (pixels[:80, :] == 0).any()  # ... with black lettering
    rendered = render_report_page(prior, ramp(), changed, algorithm=algorithm, text=text, checks=NORMAL)
    texts = region(rendered.pixels, rendered.text)
    assert (texts > 128).sum() > 2000  # five labelled rows of text
    left, top, right, bottom = rendered.text
    assert rendered.panels[0][3] < top and bottom < rendered.pixels.shape[0]


def test_long_and_non_ascii_text_stays_within_the_page(prior, changed, algorithm, tmp_path) -> None:
    long_text = CounterfactualText(hypothesis=LONG, interpretation=LONG + "\x00\n\t end")
    written = save_and_validate(build_report_page(prior, ramp(), changed, algorithm=algorithm, text=long_text,
                                                  checks=NORMAL), tmp_path)
    assert written.Columns == PAGE_WIDTH
    assert "größer" in written.ImageComments  # UTF-8 round trip
    page = render_report_page(prior, ramp(), changed, algorithm=algorithm, text=long_text, checks=NORMAL)
    longer = render_report_page(prior, ramp(), changed, algorithm=algorithm,
                                text=CounterfactualText(hypothesis=LONG * 3, interpretation=LONG * 3), checks=NORMAL)
    assert page.pixels.shape == longer.pixels.shape  # line limits: more text does not grow the page
    left, top, right, bottom = page.text
    assert np.all(page.pixels[top:bottom, right + 4:] == BACKGROUND)  # nothing runs into the right margin
    assert np.all(page.pixels[-MARGIN // 2:, :] == BACKGROUND)


@pytest.mark.parametrize("shape", [(2500, 2000), (160, 400), (600, 120)])
def test_non_square_priors_keep_their_aspect_ratio(shape, algorithm, text, tmp_path) -> None:
    rows, cols = shape
    prior = prior_for(ramp(rows, cols))
    counterfactual = np.clip(ramp(rows, cols) + 0.1, 0, 1)
    page = render_report_page(prior, ramp(rows, cols), counterfactual, algorithm=algorithm, text=text, checks=NORMAL)
    assert page.pixels.shape[1] == PAGE_WIDTH
    for left, top, right, bottom in page.panels:
        assert 0 <= left < right <= PAGE_WIDTH and 0 <= top < bottom <= page.pixels.shape[0]
        assert (right - left) / (bottom - top) == pytest.approx(cols / rows, rel=0.03)
    save_and_validate(build_report_page(prior, ramp(rows, cols), counterfactual, algorithm=algorithm, text=text,
                                        checks=NORMAL), tmp_path)


def test_rejects_pixels_that_do_not_fit(prior, algorithm, text) -> None:
    with pytest.raises(ValueError):
        build_report_page(prior, ramp(), ramp(ROWS, COLS + 1), algorithm=algorithm, text=text, checks=NORMAL)
    with pytest.raises(ValueError):
        build_report_page(prior, ramp(ROWS + 1, COLS), ramp(ROWS + 1, COLS), algorithm=algorithm, text=text,
                          checks=NORMAL)


def test_a_flagged_result_gets_a_banner_under_the_notice_and_a_normal_one_does_not(prior, changed, algorithm,
                                                                                   text) -> None:
    normal = render_report_page(prior, ramp(), changed, algorithm=algorithm, text=text, checks=NORMAL)
    flagged = render_report_page(prior, ramp(), changed, algorithm=algorithm, text=text, checks=FLAGGED)
    assert normal.marking is None
    assert flagged.marking is not None
    left, top, right, bottom = flagged.marking
    assert (left, right) == (0, PAGE_WIDTH) and top < flagged.panels[0][1]  # full width, above the images
    band = flagged.pixels[top:bottom]
    assert (band == INK).mean() > 0.75 and (band == BACKGROUND).any()  # a white band with black lettering
    assert np.all(flagged.pixels[top - 8:top] == BACKGROUND)  # set off from the notice banner above it
    assert (normal.pixels[top:bottom] == INK).mean() < 0.1  # the normal page has no band there
    assert flagged.pixels.shape[0] == normal.pixels.shape[0] + bottom - top + 20  # only the banner was added
    assert flagged.text[1] > normal.text[1]


def test_each_failed_check_flags_the_page_on_its_own(prior, changed, algorithm, text) -> None:
    only_override = ResultChecks(InputCheck(3.75, 2.5, overridden=True), NORMAL.consistency)
    only_inconsistent = ResultChecks(NORMAL.input, FLAGGED.consistency)
    boxes = {name: render_report_page(prior, ramp(), changed, algorithm=algorithm, text=text, checks=checks).marking
             for name, checks in [("override", only_override), ("inconsistent", only_inconsistent),
                                  ("both", FLAGGED)]}
    heights = {name: box[3] - box[1] for name, box in boxes.items() if box}
    assert len(heights) == 3 and heights["both"] > max(heights["override"], heights["inconsistent"])


def test_a_flagged_result_marks_the_header_too(prior, changed, algorithm, text, tmp_path) -> None:
    flagged = save_and_validate(build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text,
                                                  checks=FLAGGED), tmp_path)
    assert flagged.ImageComments.startswith(f"{INCONSISTENT}: {FLAGGED.consistency.reason}")
    assert OUTSIDE_TRAINING_DATA in flagged.ImageComments and SYNTHETIC_NOTICE in flagged.ImageComments
    normal = build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text, checks=NORMAL)
    assert normal.ImageComments.startswith(SYNTHETIC_NOTICE) and INCONSISTENT not in normal.ImageComments


def test_an_essay_length_reason_keeps_the_banner_bounded(prior, changed, algorithm, text, tmp_path) -> None:
    essay = ResultChecks(FLAGGED.input, ConsistencyCheck(False, LONG))
    page = render_report_page(prior, ramp(), changed, algorithm=algorithm, text=text, checks=essay)
    longer = render_report_page(prior, ramp(), changed, algorithm=algorithm, text=text,
                                checks=ResultChecks(FLAGGED.input, ConsistencyCheck(False, LONG * 3)))
    assert page.pixels.shape == longer.pixels.shape and page.marking == longer.marking
    assert np.all(page.pixels[page.text[1]:page.text[3], page.text[2] + 4:] == BACKGROUND)
    written = save_and_validate(build_report_page(prior, ramp(), changed, algorithm=algorithm, text=text,
                                                  checks=essay), tmp_path)
    assert len(written.ImageComments.encode()) <= 10240 and written.ImageComments.startswith(INCONSISTENT)
