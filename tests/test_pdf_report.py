"""Encapsulated PDF report: dciodvfy-clean, rendered by poppler, its words selectable text, tied to the SR."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import EncapsulatedPDFStorage

from dicom_io.pdf_report import build_pdf_report, pdf_document
from dicom_io.records import SYNTHETIC_NOTICE, AlgorithmRecord, CounterfactualText
from dicom_io.sc import build_counterfactual_sc
from dicom_io.sr import build_counterfactual_sr
from dicom_io.synthetic import build_synthetic_image
from tests.support.dicom_validators import assert_dciodvfy_clean
from tests.test_sr import CHECKPOINT, FLAGGED, HYPOTHESIS, INTERPRETATION, NORMAL

RESOLUTION = 72
"""pdftoppm's dots per inch: one pixel per point, so A4 landscape (841.89 x 595.28 pt) is 842 x 596."""
A4_LANDSCAPE_PX = (842, 596)


def _poppler(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which(tool), f"{tool} is not installed: scripts/install-system-deps.sh installs poppler-utils"
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{tool} exited {done.returncode}: {done.stderr}"
    return done


@pytest.fixture
def algorithm() -> AlgorithmRecord:
    return AlgorithmRecord(name="ProgEmu", version="test-0", checkpoint_sha256=CHECKPOINT, software_version="0.1.0",
                           device_uid="2.25.271828", parameters={"seed": "4242", "top_k": "2048"})


@pytest.fixture
def made(algorithm) -> tuple[pydicom.Dataset, pydicom.Dataset, pydicom.Dataset, pydicom.Dataset]:
    """prior, SC, SR and PDF, as the use case makes them."""
    prior = build_synthetic_image(np.full((128, 96), 2000, np.uint16), patient_id="PDF-TEST-1",
                                  patient_name="DOE^PDF")
    prior_pixels = np.tile(np.linspace(0.2, 0.8, 96, dtype=np.float32), (128, 1))
    counterfactual = prior_pixels.copy()
    counterfactual[64:, :48] += 0.15
    text = CounterfactualText(hypothesis=HYPOTHESIS, interpretation=INTERPRETATION)
    sc = build_counterfactual_sc(prior, counterfactual, algorithm=algorithm, text=text, checks=NORMAL)
    sr = build_counterfactual_sr(prior, sc, algorithm=algorithm, text=text, checks=NORMAL)
    pdf = build_pdf_report(prior, prior_pixels, counterfactual, sc=sc, algorithm=algorithm, text=text,
                           checks=NORMAL)
    return prior, sc, sr, pdf


def _write_pdf(pdf: pydicom.Dataset, tmp_path: Path) -> Path:
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf_document(pdf))
    return path


def test_passes_dciodvfy(made, tmp_path) -> None:
    pdf = made[3]
    path = tmp_path / "pdf.dcm"
    pdf.save_as(path, enforce_file_format=True)
    assert "EncapsulatedPDF" in assert_dciodvfy_clean(path)
    read = pydicom.dcmread(path)
    assert (read.SOPClassUID, read.Modality, read.MIMETypeOfEncapsulatedDocument) == (
        EncapsulatedPDFStorage, "DOC", "application/pdf")
    assert pdf_document(read).startswith(b"%PDF-") and pdf_document(read).rstrip().endswith(b"%%EOF")
    assert SYNTHETIC_NOTICE in read.DocumentTitle and SYNTHETIC_NOTICE in read.SeriesDescription
    assert read.Manufacturer == "progemu-pacs"  # how the listener knows its own outputs


def test_renders_to_a_page_that_is_not_blank(made, tmp_path) -> None:
    path = _write_pdf(made[3], tmp_path)
    _poppler("pdftoppm", "-r", str(RESOLUTION), "-png", "-f", "1", "-singlefile", str(path), str(tmp_path / "page"))
    page = np.asarray(Image.open(tmp_path / "page.png").convert("L"))
    assert page.shape[::-1] == A4_LANDSCAPE_PX
    assert page.std() > 20  # black banner, text and three panels on white
    # the banner across the top is black, the way the report page and the SC show the notice
    assert np.median(page[40:55, 100:-100]) < 64


def test_text_is_selectable_and_complete(made, tmp_path) -> None:
    text = _poppler("pdftotext", "-layout", str(_write_pdf(made[3], tmp_path)), "-").stdout
    flat = " ".join(text.split())
    for expected in (HYPOTHESIS, INTERPRETATION, CHECKPOINT, "seed=4242", SYNTHETIC_NOTICE, "ProgEmu test-0",
                     "within the limit 2.50", "consistent with the hypothesis"):
        assert expected in flat, expected


def test_flagged_result_is_marked(algorithm, tmp_path) -> None:
    prior = build_synthetic_image(np.full((64, 64), 2000, np.uint16), patient_id="PDF-TEST-2")
    pixels = np.full((64, 64), 0.5, np.float32)
    text = CounterfactualText(hypothesis=HYPOTHESIS, interpretation=INTERPRETATION)
    sc = build_counterfactual_sc(prior, pixels, algorithm=algorithm, text=text, checks=FLAGGED)
    pdf = build_pdf_report(prior, pixels, pixels, sc=sc, algorithm=algorithm, text=text, checks=FLAGGED)
    flat = " ".join(_poppler("pdftotext", str(_write_pdf(pdf, tmp_path)), "-").stdout.split())
    assert "INCONSISTENT WITH THE HYPOTHESIS" in flat and "OUTSIDE THE TRAINING DATA" in flat


def test_identity_and_references_equal_the_srs(made) -> None:
    prior, sc, sr, pdf = made
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
                    "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName"):
        assert pdf.get(keyword) == sr.get(keyword) == prior.get(keyword), keyword
    assert pdf.SeriesInstanceUID not in {prior.SeriesInstanceUID, sc.SeriesInstanceUID, sr.SeriesInstanceUID}
    sr_evidence = {(ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID)
                   for study in sr.CurrentRequestedProcedureEvidenceSequence
                   for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    sources = {(item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) for item in pdf.SourceInstanceSequence}
    assert sources == sr_evidence == {(prior.SOPClassUID, prior.SOPInstanceUID), (sc.SOPClassUID, sc.SOPInstanceUID)}
    assert {item.PurposeOfReferenceCodeSequence[0].CodeValue for item in pdf.SourceInstanceSequence} == {"121322"}


def test_rejects_sc_from_another_study(made, algorithm) -> None:
    prior, sc, _, _ = made
    other = build_synthetic_image(np.full((128, 96), 2000, np.uint16), patient_id="PDF-TEST-1")
    pixels = np.full((128, 96), 0.5, np.float32)
    text = CounterfactualText(hypothesis=HYPOTHESIS, interpretation=INTERPRETATION)
    with pytest.raises(ValueError, match="not in the prior's study"):
        build_pdf_report(other, pixels, pixels, sc=sc, algorithm=algorithm, text=text, checks=NORMAL)
