"""What a finished job produced: the one contract between generation, delivery, the API and the Orthanc plugin.

The job store keeps :class:`JobResults` as JSON. Callers outside the node see only
:class:`PublicResults`, an allow-list: a field added to the internal record (such as
where files live on this host) never reaches an API caller by accident.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from dicom_io.records import ResultChecks


class OutputKind(enum.StrEnum):
    """The DICOM objects a job returns to the PACS, in the order they are sent."""

    SC = "sc"
    """The counterfactual image (Secondary Capture)."""
    SR = "sr"
    """The structured report (TID 1500) with the hypothesis, interpretation and provenance."""
    REPORT_PAGE = "report_page"
    """The report as an image, for viewers that do not render SR text."""
    PDF = "pdf"
    """The report as an Encapsulated PDF (searchable text); off when ``Settings.pdf_report`` is."""


class FileKind(enum.StrEnum):
    """Every file a job writes; the DICOM ones are also :class:`OutputKind`."""

    SC = "sc"
    SR = "sr"
    REPORT_PAGE = "report_page"
    PDF = "pdf"
    FHIR = "fhir"
    PREVIEW = "preview"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DicomOutput(_Frozen):
    kind: OutputKind
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str


class AlgorithmIdentity(_Frozen):
    name: str
    version: str
    checkpoint_sha256: str


class InputCheckOut(_Frozen):
    score: float
    limit: float | None
    """None: the checkpoint is not calibrated."""
    within_limit: bool
    overridden: bool
    """Beyond the limit, let through by a research override."""
    summary: str


class ConsistencyOut(_Frozen):
    consistent: bool | None
    """None: the hypothesis names nothing the check knows."""
    reason: str
    summary: str


class ChecksOut(_Frozen):
    """The input gate's verdict and the consistency check, as recorded in the SR, report page and FHIR."""

    input: InputCheckOut
    consistency: ConsistencyOut
    flagged: bool
    """Delivered, but marked: inconsistent with the hypothesis, or outside the training data by override."""

    @classmethod
    def of(cls, checks: ResultChecks) -> ChecksOut:
        gate, consistency = checks.input, checks.consistency
        return cls(input=InputCheckOut(score=gate.score, limit=gate.limit, within_limit=gate.within_limit,
                                       overridden=gate.overridden, summary=gate.summary),
                   consistency=ConsistencyOut(consistent=consistency.consistent, reason=consistency.reason,
                                              summary=consistency.summary),
                   flagged=checks.flagged)


class PublicResults(_Frozen):
    """What API callers and the Orthanc plugin may see of a job's results."""

    outputs: tuple[DicomOutput, ...]
    interpretation: str
    algorithm: AlgorithmIdentity
    settings: dict[str, str]
    """Sampler settings, seed, engine and composition, as recorded in the SR."""
    checks: ChecksOut | None = None
    """None only for results recorded before the checks existed."""


class JobResults(PublicResults):
    """The job store's record: the public part plus the job's files (internal only)."""

    files: dict[FileKind, str]
    """Each file's name in the job's results directory on the node (a worker on another host writes elsewhere
    and uploads them there); stores written before 0.3 hold absolute paths, which :meth:`located` keeps."""

    def public(self) -> PublicResults:
        return PublicResults.model_validate(self.model_dump(include=set(PublicResults.model_fields)))

    def located(self, directory: Path) -> JobResults:
        """These results with each file's path in ``directory``, the job's results directory on the node."""
        return self.model_copy(update={"files": {kind: str(directory / name) for kind, name in self.files.items()}})

    def path(self, kind: FileKind) -> Path:
        return Path(self.files[kind])

    def dicom_files(self) -> list[Path]:
        """The DICOM outputs' files, in the order they are sent."""
        return [self.path(FileKind(output.kind)) for output in self.outputs]

    @property
    def output_series(self) -> list[str]:
        return [output.series_instance_uid for output in self.outputs]

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> JobResults:
        """Read the stored JSON, including the keyed layout of 0.1 job stores (one dict per output kind)."""
        if "outputs" not in stored:
            stored = {**{k: v for k, v in stored.items() if k not in {"dicom", *OutputKind}},
                      "outputs": [{"kind": kind, "sop_class_uid": "", **stored[kind]} for kind in stored["dicom"]]}
        return cls.model_validate(stored)
