"""The node's use cases in process: generate, outbox, routing rules, own outputs, and no PHI in the logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_io.completion import StudyArrival
from plugin.config import Settings
from plugin.errors import PermanentJobError
from plugin.jobs import JobState, NewJob
from plugin.orchestrator import Orchestrator
from plugin.routing import RoutingRule
from plugin.tasks import CeleryDispatcher, configure
from tests.support.dicom_fixtures import phantom_prior

PHI = {"patient_name": "DOE^JANE", "patient_id": "MRN-998877", "patient_birth_date": "19451231"}


def _node(tmp_path: Path, **settings) -> Orchestrator:
    config = Settings(data_dir=tmp_path, **settings)
    configure(config)  # in-memory queue: dispatched tasks wait there, the test calls the node directly
    return Orchestrator(config, CeleryDispatcher())


def _spool(node: Orchestrator, ds: pydicom.Dataset, tmp_path: Path) -> None:
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    node.spool.write(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, path.read_bytes())


def _job(node: Orchestrator, study: str, request_id: str = "r") -> str:
    job, _ = node.store.submit(NewJob(request_id=request_id, study_instance_uid=study, source="test",
                                      hypothesis="The left pleural effusion worsens.",
                                      sampler=node.default_sampler(seed=3)))
    return job.id


@pytest.mark.slow
def test_generate_writes_results_records_outputs_and_queues_deliveries(tmp_path: Path, caplog) -> None:
    node = _node(tmp_path, destination="PACS@127.0.0.1:104", fhir_url="http://127.0.0.1:9/fhir")
    prior = phantom_prior(**PHI)
    _spool(node, prior, tmp_path)
    job_id = _job(node, prior.StudyInstanceUID)
    with caplog.at_level(logging.DEBUG):
        node.generate(job_id, worker="test:1")
    job = node.store.get(job_id)
    assert job.state == JobState.DELIVERING and job.attempts == 1 and job.worker == "test:1"
    assert [(d.kind, d.target) for d in job.deliveries] == [("dicom", "PACS@127.0.0.1:104"),
                                                          ("fhir", "http://127.0.0.1:9/fhir")]
    assert [output.kind for output in job.results.outputs] == ["sc", "sr", "report_page"]
    for output, path in zip(job.results.outputs, job.results.dicom_files(), strict=True):
        written = pydicom.dcmread(path)
        assert (written.SOPInstanceUID, written.SeriesInstanceUID, written.SOPClassUID) == (
            output.sop_instance_uid, output.series_instance_uid, output.sop_class_uid)
        assert written.StudyInstanceUID == prior.StudyInstanceUID
        assert node.store.is_output_series(written.SeriesInstanceUID)
        assert node.is_own_output(written)
    assert job.results.settings["seed"] == "3"
    sc = pydicom.dcmread(job.results.dicom_files()[0])
    assert job.results.algorithm.checkpoint_sha256 in sc.DerivationDescription
    logged = caplog.text
    assert logged and not any(value in logged for value in ("DOE", "JANE", "MRN-998877", "19451231"))


@pytest.mark.slow
def test_a_finished_job_is_not_generated_again(tmp_path: Path) -> None:
    node = _node(tmp_path)
    prior = phantom_prior()
    _spool(node, prior, tmp_path)
    job_id = _job(node, prior.StudyInstanceUID)
    node.generate(job_id, worker="test:1")
    assert node.store.get(job_id).state == JobState.DONE  # no destination: nothing to deliver
    node.generate(job_id, worker="test:2")  # a duplicate delivery of the task
    assert node.store.get(job_id).attempts == 1


def test_a_study_without_an_image_fails_permanently_with_a_reason(tmp_path: Path) -> None:
    node = _node(tmp_path)
    prior = phantom_prior(modality="OT")
    prior.SOPClassUID = prior.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # an SR class
    _spool(node, prior, tmp_path)
    with pytest.raises(PermanentJobError, match="no CR, DX or Secondary Capture image"):
        node.generate(_job(node, prior.StudyInstanceUID), worker="test:1")


def test_results_go_back_to_the_peer_that_sent_the_study(tmp_path: Path) -> None:
    node = _node(tmp_path, peers="ORTHANC@127.0.0.1:4242,OTHER@127.0.0.2:104")
    prior = phantom_prior()
    _spool(node, prior, tmp_path)
    job_id = _job(node, prior.StudyInstanceUID)
    node.on_study_complete(StudyArrival(prior.StudyInstanceUID, "PROGEMU", "ORTHANC", {prior.SeriesInstanceUID}, 1))
    assert node.destination_for(node.store.get(job_id)) == "ORTHANC@127.0.0.1:4242"


@pytest.mark.parametrize(("rule", "called", "matches"), [
    (RoutingRule(name="any", hypothesis="h"), "PROGEMU", True),
    (RoutingRule(name="ae", hypothesis="h", called_ae_title="PROGEMU_EFF"), "PROGEMU", False),
    (RoutingRule(name="ae", hypothesis="h", called_ae_title="PROGEMU_EFF"), "PROGEMU_EFF", True),
    (RoutingRule(name="part", hypothesis="h", attribute="BodyPartExamined", pattern="CHEST"), "PROGEMU", True),
    (RoutingRule(name="part", hypothesis="h", attribute="BodyPartExamined", pattern="SKULL"), "PROGEMU", False),
])
def test_routing_rules_create_a_job_for_pushed_studies(tmp_path: Path, rule: RoutingRule, called: str,
                                                       matches: bool) -> None:
    node = _node(tmp_path, routes=[rule])
    prior = phantom_prior(study_instance_uid=generate_uid())
    _spool(node, prior, tmp_path)
    node.on_study_complete(StudyArrival(prior.StudyInstanceUID, called, "ORTHANC", {prior.SeriesInstanceUID}, 1))
    jobs = node.store.list(study_instance_uid=prior.StudyInstanceUID)
    assert bool(jobs) == matches
    if matches:
        assert jobs[0].source == f"route:{rule.name}" and jobs[0].hypothesis == "h"
        node.on_study_complete(StudyArrival(prior.StudyInstanceUID, called, "ORTHANC", set(), 1))
        assert len(node.store.list(study_instance_uid=prior.StudyInstanceUID)) == 1  # same rule, same study: one job


class _Recorder:
    """Records where the node sends each step instead of queueing it."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, object]] = []

    def generate(self, job_id: str) -> None:
        self.steps.append(("generate", job_id))

    def deliver(self, delivery_id: int) -> None:
        self.steps.append(("deliver", delivery_id))

    def retrieve(self, job_id: str) -> None:
        self.steps.append(("retrieve", job_id))


def test_a_request_for_a_study_still_arriving_waits_for_it_instead_of_retrieving(tmp_path: Path) -> None:
    """No PACS configured, the study half received: the job waits for the listener, it is not failed."""
    from types import SimpleNamespace

    config = Settings(data_dir=tmp_path)
    recorder = _Recorder()
    node = Orchestrator(config, recorder)
    arriving = {"yes": True}
    node.listener = SimpleNamespace(tracker=SimpleNamespace(receiving=lambda uid: arriving["yes"]),  # type: ignore
                                    expect=lambda *args: None)
    prior = phantom_prior()
    _spool(node, prior, tmp_path)
    job, _ = node.submit(NewJob(request_id="r", study_instance_uid=prior.StudyInstanceUID, source="test",
                                hypothesis="The effusion worsens.", sampler=node.default_sampler()))
    assert job.state == JobState.RECEIVING and recorder.steps == []
    arriving["yes"] = False
    node.on_study_complete(StudyArrival(prior.StudyInstanceUID, "PROGEMU", "ORTHANC", {prior.SeriesInstanceUID}, 1))
    assert recorder.steps == [("generate", job.id)]
    node.retrieve(job.id)  # a retrieval that was already queued finds the study here and generates instead
    assert recorder.steps[-1] == ("generate", job.id) and node.store.get(job.id).state == JobState.RECEIVING
