"""One use case: a prior DICOM image + hypothesis -> counterfactual SC, SR, report page, PDF, FHIR and preview.

This is the only place where the two wings meet: dicom_io reads and writes
DICOM/FHIR, inference generates, and nothing here knows the details of either.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from PIL import Image
from pydicom.uid import generate_uid

from dicom_io.fhir import build_fhir_bundle
from dicom_io.geometry import from_square, to_square
from dicom_io.pdf_report import build_pdf_report
from dicom_io.reader import PriorImage, check_patient_record, read_prior
from dicom_io.records import AlgorithmRecord, ConsistencyCheck, CounterfactualText, ResultChecks
from dicom_io.report_page import build_report_page, render_report_page
from dicom_io.sc import build_counterfactual_sc
from dicom_io.spool import write_atomically
from dicom_io.sr import HypothesisFinding, build_counterfactual_sr
from inference.composition import baseline, compose
from inference.consistency import check_counterfactual
from inference.engines.base import CancelCheck, ProgressCallback
from inference.findings_text import FindingTuple
from inference.loading import load_pipeline
from inference.pipeline import Counterfactual, CounterfactualPipeline
from inference.sampler import SamplerSettings
from plugin import __version__, metrics
from plugin.config import Settings
from plugin.gate import check_content, check_header
from plugin.preview import render_preview
from plugin.results import AlgorithmIdentity, ChecksOut, DicomOutput, FileKind, JobResults, OutputKind

log = logging.getLogger(__name__)

OUTPUT_NAMES = {FileKind.SC: "counterfactual.dcm", FileKind.SR: "report.dcm", FileKind.REPORT_PAGE: "report_page.dcm",
                FileKind.PDF: "report_pdf.dcm", FileKind.FHIR: "fhir.json", FileKind.PREVIEW: "preview.png"}


@dataclass(frozen=True)
class CounterfactualOutputs:
    """Everything one request produces, in memory until written."""

    sc: pydicom.Dataset
    sr: pydicom.Dataset
    report_page: pydicom.Dataset
    fhir: dict
    preview: Image.Image
    result: Counterfactual
    algorithm: AlgorithmRecord
    checks: ResultChecks
    pdf: pydicom.Dataset | None = None
    """None when ``Settings.pdf_report`` is off."""

    def dicoms(self) -> dict[OutputKind, pydicom.Dataset]:
        """The DICOM outputs this request made, in the order they are sent."""
        made = {OutputKind.SC: self.sc, OutputKind.SR: self.sr, OutputKind.REPORT_PAGE: self.report_page,
                OutputKind.PDF: self.pdf}
        return {kind: dataset for kind, dataset in made.items() if dataset is not None}

    def job_results(self, files: Mapping[FileKind, Path]) -> JobResults:
        """The job store's record of these outputs, once written to ``files``."""
        outputs = [DicomOutput(kind=kind, series_instance_uid=dataset.SeriesInstanceUID,
                               sop_instance_uid=dataset.SOPInstanceUID, sop_class_uid=dataset.SOPClassUID)
                   for kind, dataset in self.dicoms().items()]
        algorithm = AlgorithmIdentity(name=self.algorithm.name, version=self.algorithm.version,
                                      checkpoint_sha256=self.algorithm.checkpoint_sha256)
        return JobResults(outputs=tuple(outputs), interpretation=self.result.interpretation, algorithm=algorithm,
                          settings=dict(self.algorithm.parameters), checks=ChecksOut.of(self.checks),
                          files={k: str(p) for k, p in files.items()})


def algorithm_record(pipeline: CounterfactualPipeline, settings: SamplerSettings) -> AlgorithmRecord:
    """The algorithm's identity for this run; its Device UID is stable for one name, version and checkpoint."""
    model = pipeline.model
    device_uid = generate_uid(entropy_srcs=[model.spec.name, model.spec.version, model.checkpoint_sha256])
    parameters = {**settings.as_parameters(), "engine": pipeline.engine.name,
                  "image_size": str(model.spec.image_size), "composition": str(pipeline.composition)}
    return AlgorithmRecord(name=model.spec.name, version=model.spec.version,
                           checkpoint_sha256=model.checkpoint_sha256, software_version=__version__,
                           device_uid=device_uid, parameters=parameters)


class CounterfactualUseCase:
    """Runs the use case with one loaded pipeline (load the model once, serve many requests)."""

    def __init__(self, pipeline: CounterfactualPipeline, config: Settings) -> None:
        self.pipeline = pipeline
        self.config = config

    def run(self, prior_source: str | os.PathLike | pydicom.Dataset | PriorImage, hypothesis: str,
            settings: SamplerSettings,
            *, allow_out_of_distribution: bool = False, progress: ProgressCallback | None = None,
            cancel: CancelCheck | None = None) -> CounterfactualOutputs:
        """Gate the prior, generate, check the result against the hypothesis, and build every output.

        Raises InputRefused (before any generation) for a prior the model cannot stand behind; a result that
        fails the consistency check is still returned, marked as such in every output.
        """
        if isinstance(prior_source, PriorImage):  # read and checked already (the CLI does, before the model loads)
            prior = prior_source
        else:
            prior = read_prior(prior_source, max_pixels=self.config.max_image_pixels)
            check_patient_record(prior.dataset)  # the outputs copy these: refused now, not after generating
        check_header(prior.geometry, body_parts=self.config.gate_body_parts,
                     view_positions=self.config.gate_view_positions)
        square, box = to_square(prior.pixels, self.pipeline.image_size)
        input_check = check_content(self.pipeline.assess_prior(square), model_name=self.model_name,
                                    override=allow_out_of_distribution)
        result = self.pipeline.run(square, hypothesis, settings, progress=progress, cancel=cancel)
        metrics.generated(result)
        consistency = check_counterfactual(result, square)
        checks = ResultChecks(input_check, ConsistencyCheck(consistency.consistent, consistency.reason))
        if checks.flagged:
            log.warning("result flagged: %s; input %s", checks.consistency.summary, checks.input.summary)
        # Composed again at the source geometry, so that residual composition keeps the prior's full resolution.
        reconstruction = from_square(result.prior_reconstruction, box)
        counterfactual = compose(prior.pixels, from_square(result.decoded, box), reconstruction, result.composition)
        algorithm = algorithm_record(self.pipeline, result.settings)
        text = CounterfactualText(hypothesis=result.hypothesis, interpretation=result.interpretation)
        sc = build_counterfactual_sc(prior.dataset, counterfactual, algorithm=algorithm, text=text, checks=checks)
        sr = build_counterfactual_sr(prior.dataset, sc, algorithm=algorithm, text=text, checks=checks,
                                     finding=_hypothesis_finding(consistency.hypothesis_finding))
        # drawn once: the report page SC and the PDF show the same pixels
        rendered = render_report_page(prior.dataset, prior.pixels, counterfactual, algorithm=algorithm, text=text,
                                      checks=checks)
        page = build_report_page(prior.dataset, prior.pixels, counterfactual, algorithm=algorithm, text=text,
                                 checks=checks, counterfactual_sop_instance_uid=sc.SOPInstanceUID, rendered=rendered)
        pdf = build_pdf_report(prior.dataset, prior.pixels, counterfactual, sc=sc, algorithm=algorithm, text=text,
                               checks=checks, rendered=rendered) if self.config.pdf_report else None
        fhir = build_fhir_bundle(prior.dataset, sr, sc, algorithm=algorithm, text=text, checks=checks,
                                 fhir_version=self.config.fhir_version)
        preview = render_preview(prior.pixels, counterfactual,
                                 baseline=baseline(prior.pixels, reconstruction, result.composition),
                                 hypothesis=result.hypothesis, interpretation=result.interpretation, checks=checks)
        log.info("counterfactual SC %s and SR %s built", sc.SOPInstanceUID, sr.SOPInstanceUID)
        return CounterfactualOutputs(sc, sr, page, fhir, preview, result, algorithm, checks, pdf)

    @property
    def model_name(self) -> str:
        spec = self.pipeline.model.spec
        return f"{spec.name} {spec.version}"


def _hypothesis_finding(named: FindingTuple | None) -> HypothesisFinding | None:
    """What the hypothesis names, as plain words for the SR's coded items (dicom_io knows no model types)."""
    if named is None:
        return None
    side = (named.location or "").partition("_")[0] or None
    return HypothesisFinding(finding=named.finding, side=side, direction=named.direction)


def load_use_case(config: Settings) -> CounterfactualUseCase:
    """Load the configured checkpoint with the configured engine, once per process."""
    started = time.perf_counter()
    pipeline = load_pipeline(config.model_path, config.engine_options(),
                             max_hypothesis_chars=config.max_hypothesis_chars, composition=config.composition)
    metrics.model_loaded(pipeline.model, time.perf_counter() - started)
    return CounterfactualUseCase(pipeline, config)


def _save(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a fsynced part file and rename, so a crash or a full disk never leaves a half-written output."""
    write_atomically(path, write)


def write_outputs(outputs: CounterfactualOutputs, out_dir: str | os.PathLike) -> dict[FileKind, Path]:
    """Write every output into ``out_dir`` and return their paths."""
    directory = Path(out_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    dicoms = outputs.dicoms()
    not_made = {FileKind(kind) for kind in OutputKind if kind not in dicoms}  # the PDF when it is off
    paths = {kind: directory / name for kind, name in OUTPUT_NAMES.items() if kind not in not_made}
    for kind, dataset in dicoms.items():
        _save(paths[FileKind(kind)], functools.partial(dataset.save_as, enforce_file_format=True))
    _save(paths[FileKind.FHIR], lambda stream: stream.write((json.dumps(outputs.fhir, indent=2) + "\n").encode()))
    _save(paths[FileKind.PREVIEW], lambda stream: outputs.preview.save(stream, format="PNG"))
    return paths
