"""The counterfactual's report as a DICOM Encapsulated PDF, for viewers that show neither SR text nor its words.

OHIF (through its PDF extension), Orthanc Explorer 2 and most PACS show an
Encapsulated PDF, and unlike the report page SC its text can be searched and
copied. The PDF holds the report page's three panels (prior, counterfactual,
difference: cut from :func:`render_report_page`, so both show the same pixels), the
hypothesis, interpretation, checks and full provenance as text, and the synthetic
notice on top and at the foot of every page. highdicom has no Encapsulated PDF
builder, so the IOD's modules are filled here on highdicom's SOP class base, which
copies the patient and study from the prior as the SR's constructor does.
"""

from __future__ import annotations

import datetime
import logging

import highdicom
import numpy as np
import pydicom
from fpdf import FPDF
from fpdf.enums import XPos, YPos
from PIL import Image
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian

from dicom_io.output_common import (
    SOURCE_IMAGE_PURPOSE,
    UTF8,
    Equipment,
    check_rows,
    fit_text,
    generation_settings,
    marking_parts,
    series_description,
)
from dicom_io.records import SYNTHETIC_NOTICE, AlgorithmRecord, CounterfactualText, ResultChecks
from dicom_io.rendering import load_font
from dicom_io.report_page import NOT_AN_ACQUISITION, RenderedPage, render_report_page

log = logging.getLogger(__name__)

DOCUMENT_TITLE = "Counterfactual progression report"
_FONT = "DejaVu"
_PANEL_CAPTIONS = ("Prior (acquired image)", "Counterfactual (SYNTHETIC)", "Difference: counterfactual \u2212 prior")
_GAP_MM = 6.0
_PANEL_HEIGHT_MM = 70.0
_LABEL_MM = 45.0


class _ReportPDF(FPDF):
    """A4 landscape with the notice as the header and footer of every page, so no page can pass for a diagnosis."""

    def header(self) -> None:
        self.set_fill_color(0)
        self.set_text_color(255)
        self.set_font(_FONT, "B", 18)
        self.cell(0, 10, SYNTHETIC_NOTICE, align="C", fill=True, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_font(_FONT, "", 10)
        self.cell(0, 6, NOT_AN_ACQUISITION, align="C", fill=True, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_text_color(0)
        self.ln(3)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(_FONT, "B", 9)
        self.cell(0, 6, f"{SYNTHETIC_NOTICE} \u00b7 page {self.page_no()}/{{nb}}", align="C")


def render_report_pdf(
    prior: pydicom.Dataset,
    prior_pixels: np.ndarray,
    counterfactual_pixels: np.ndarray,
    *,
    algorithm: AlgorithmRecord,
    text: CounterfactualText,
    checks: ResultChecks,
    now: datetime.datetime | None = None,
    rendered: RenderedPage | None = None,
) -> bytes:
    """The report as PDF bytes: the marking of a flagged result, the three panels, then every text as real text.

    ``rendered``: the report page already drawn from the same inputs (its panels are cut out), else drawn here.
    """
    now = now or datetime.datetime.now()
    page = rendered or render_report_page(prior, prior_pixels, counterfactual_pixels, algorithm=algorithm,
                                          text=text, checks=checks, now=now)
    pdf = _ReportPDF(orientation="landscape", format="A4")
    pdf.set_title(f"{SYNTHETIC_NOTICE} - {DOCUMENT_TITLE}")
    pdf.set_author(algorithm.manufacturer)
    pdf.set_creator(f"progemu-pacs {algorithm.software_version}")
    pdf.set_creation_date(now.astimezone(datetime.UTC))
    pdf.add_font(_FONT, "", _font_file(bold=False))
    pdf.add_font(_FONT, "B", _font_file(bold=True))
    pdf.set_auto_page_break(auto=True, margin=16)
    pdf.add_page()
    for part in marking_parts(checks):
        pdf.set_font(_FONT, "B", 13)
        pdf.multi_cell(0, 7, part, border=1, align="C", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(_FONT, "B", 14)
    pdf.cell(0, 9, f"{algorithm.name} counterfactual \u2014 {DOCUMENT_TITLE.lower()}", new_x=XPos.LMARGIN,
             new_y=YPos.NEXT)
    _panels(pdf, page.pixels, page.panels, page.difference_scale)
    for label, value in _text_rows(algorithm, text, checks, now):
        pdf.set_font(_FONT, "B", 10)
        pdf.cell(_LABEL_MM, 5.5, label)
        pdf.set_font(_FONT, "", 10)
        pdf.multi_cell(0, 5.5, value, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(1)
    return bytes(pdf.output())


def _font_file(*, bold: bool) -> str:
    """DejaVu Sans, embedded so the hypothesis reads in any language; a system dependency of the node
    (scripts/install-system-deps.sh, the Dockerfile), so its absence is an error, not a silent fallback."""
    path = getattr(load_font(12, bold=bold), "path", None)
    if not isinstance(path, str):
        raise RuntimeError("the PDF report needs the DejaVu Sans fonts (Debian package fonts-dejavu-core)")
    return path


def _panels(pdf: FPDF, pixels: np.ndarray, boxes: tuple[tuple[int, int, int, int], ...], scale: float) -> None:
    """The three panels side by side, each as large as fits, captioned; the difference's scale under it."""
    width = (pdf.epw - 2 * _GAP_MM) / 3
    top = pdf.get_y()
    pdf.set_font(_FONT, "B", 10)
    for index, (caption, (left, upper, right, lower)) in enumerate(zip(_PANEL_CAPTIONS, boxes, strict=True)):
        x = pdf.l_margin + index * (width + _GAP_MM)
        pdf.set_xy(x, top)
        pdf.cell(width, 6, caption)
        panel = Image.fromarray(pixels[upper:lower, left:right])
        pdf.image(panel, x=x, y=top + 7, w=width, h=_PANEL_HEIGHT_MM, keep_aspect_ratio=True,
                  alt_text=caption)
    pdf.set_xy(pdf.l_margin + 2 * (width + _GAP_MM), top + 8 + _PANEL_HEIGHT_MM)
    pdf.set_font(_FONT, "", 8)
    pdf.multi_cell(width, 4, f"mid-grey = no change; white = +{scale:.2f}, black = \u2212{scale:.2f}",
                   new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(3)


def _text_rows(algorithm: AlgorithmRecord, text: CounterfactualText, checks: ResultChecks,
               now: datetime.datetime) -> list[tuple[str, str]]:
    """Everything the SR records, in full: the PDF has room for what the report page must cut."""
    settings = generation_settings(algorithm)
    checkpoint = settings.pop("checkpoint_sha256")
    return [
        ("Hypothesis", text.hypothesis.strip() or "(none)"),
        ("Interpretation", text.interpretation.strip() or "(none)"),
        *check_rows(checks),
        ("Model", f"{algorithm.name} {algorithm.version}, run by progemu-pacs {algorithm.software_version}"),
        ("Checkpoint sha256", checkpoint),
        ("Sampler settings", ", ".join(f"{name}={value}" for name, value in settings.items()) or "(not recorded)"),
        ("Created", now.strftime("%Y-%m-%d %H:%M")),
        ("Notice", f"{SYNTHETIC_NOTICE}. {NOT_AN_ACQUISITION}."),
    ]


def build_pdf_report(
    prior: pydicom.Dataset,
    prior_pixels: np.ndarray,
    counterfactual_pixels: np.ndarray,
    *,
    sc: pydicom.Dataset,
    algorithm: AlgorithmRecord,
    text: CounterfactualText,
    checks: ResultChecks,
    series_number: int = 9904,
    rendered: RenderedPage | None = None,
) -> pydicom.Dataset:
    """Build the Encapsulated PDF: the prior's patient and study, a new series, derived from the prior and ``sc``."""
    if sc.StudyInstanceUID != prior.StudyInstanceUID:
        raise ValueError("the counterfactual SC is not in the prior's study")
    now = datetime.datetime.now()
    document = render_report_pdf(prior, prior_pixels, counterfactual_pixels, algorithm=algorithm, text=text,
                                 checks=checks, now=now, rendered=rendered)
    equipment = Equipment.of(algorithm)
    ds = highdicom.SOPClass(
        study_instance_uid=prior.StudyInstanceUID,
        series_instance_uid=highdicom.UID(),
        series_number=series_number,
        sop_instance_uid=highdicom.UID(),
        sop_class_uid=EncapsulatedPDFStorage,
        instance_number=1,
        modality="DOC",
        **equipment.highdicom_arguments(),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        content_qualification="RESEARCH",
        series_description=series_description(algorithm, "report (PDF)"),
        series_date=now.date(),
        series_time=now.time(),
        content_date=now.date(),
        content_time=now.time(),
        specific_character_set=UTF8,
    )
    ds.copy_patient_and_study_information(prior)
    # SC Equipment: the document was made by software, from a synthetic image
    ds.ConversionType = "SYN"
    # Encapsulated Document
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the notice is part of the document, as on the SC
    ds.DocumentTitle = fit_text(f"{SYNTHETIC_NOTICE} - {DOCUMENT_TITLE}", "ST")
    ds.ConceptNameCodeSequence = []
    ds.SourceInstanceSequence = [_source_item(prior), _source_item(sc)]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # OB of even length: the trailing pad byte is not part of the document, hence the length
    ds.EncapsulatedDocument = document + (b"\0" if len(document) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(document)
    log.debug("built PDF report %s (%d bytes)", ds.SOPInstanceUID, len(document))
    return ds


def pdf_document(ds: pydicom.Dataset) -> bytes:
    """The PDF inside an Encapsulated PDF, without the pad byte."""
    return bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]


def _source_item(source: pydicom.Dataset) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [SOURCE_IMAGE_PURPOSE]
    return item

