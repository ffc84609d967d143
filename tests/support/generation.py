"""Generation without a model, for tests of what happens around it (transfer, retention, delivery): a stand-in use
case and its outputs, and a job taken through generation the way a worker's results reach the job store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from plugin.jobs import JobState, JobStore
from plugin.results import AlgorithmIdentity, DicomOutput, FileKind, JobResults, OutputKind


class StandInOutputs:
    """What generation returns, without a model: one SC output; the files are written by :func:`write_outputs`."""

    def job_results(self, files: Mapping[FileKind, Path]) -> JobResults:
        output = DicomOutput(kind=OutputKind.SC, series_instance_uid="1.2.826.0.1.9.1",
                             sop_instance_uid="1.2.826.0.1.9.1.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.7")
        return JobResults(outputs=(output,), interpretation="The effusion has worsened.", settings={},
                          algorithm=AlgorithmIdentity(name="ProgEmu", version="t", checkpoint_sha256="0" * 64),
                          files={kind: str(path) for kind, path in files.items()})


class StandInUseCase:
    """Put in place of ``Orchestrator.use_case``; keeps the prior it was given, byte for byte."""

    def __init__(self) -> None:
        self.prior: bytes | None = None

    def run(self, prior, hypothesis, settings, **options) -> StandInOutputs:
        self.prior = Path(prior).read_bytes()
        return StandInOutputs()


def write_outputs(outputs: StandInOutputs, out_dir: Path, *, sc: bytes = b"output") -> dict[FileKind, Path]:
    """Put in place of ``plugin.orchestrator.write_outputs``: an SC of ``sc`` and a FHIR bundle."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {FileKind.SC: out_dir / "counterfactual.dcm", FileKind.FHIR: out_dir / "fhir.json"}
    files[FileKind.SC].write_bytes(sc)
    files[FileKind.FHIR].write_bytes(b'{"resourceType": "Bundle"}')
    return files


def generated(store: JobStore, job_id: str, results: JobResults, deliveries: Sequence[tuple[str, str]] = ()) -> None:
    """Take a job through generation as a worker's results do (``JobStore.finish_generation``): running, one
    attempt, its results and deliveries recorded; the job is then delivering."""
    store.transition(job_id, JobState.RUNNING, expect=[JobState.QUEUED, JobState.RECEIVING, JobState.RUNNING])
    attempt = store.count_attempt(job_id, "test:1")
    if not store.finish_generation(job_id, attempt, results, deliveries):
        raise AssertionError(f"job {job_id} did not take the results of attempt {attempt}")
