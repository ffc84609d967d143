"""The node's use cases in process: generate, outbox, routing rules, own outputs, destinations, the generation
deadline, and no PHI in the logs."""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_io.completion import StudyArrival
from dicom_io.spool import ForeignSenderError
from plugin.config import Settings
from plugin.errors import PermanentJobError
from plugin.jobs import NO_DESTINATION, Job, JobState, NewJob
from plugin.orchestrator import Orchestrator
from plugin.routing import RoutingRule
from plugin.tasks import CeleryDispatcher, configure, use_node
from plugin.tasks import generate as generate_task
from tests.support.dicom_fixtures import phantom_prior
from tests.support.dispatchers import RecordingDispatcher

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
    job, _ = node.submit(NewJob(request_id=request_id, study_instance_uid=study, source="test",
                                      hypothesis="The left pleural effusion worsens.",
                                      sampler=node.default_sampler(seed=3)))
    return job.id


@pytest.mark.slow
def test_generate_writes_results_records_outputs_and_queues_deliveries(tmp_path: Path, caplog) -> None:
    node = _node(tmp_path / "data", destination="PACS@127.0.0.1:104", fhir_url="http://127.0.0.1:9/fhir")
    prior = phantom_prior(**PHI)
    _spool(node, prior, tmp_path)
    job_id = _job(node, prior.StudyInstanceUID)
    with caplog.at_level(logging.DEBUG):
        node.generate(job_id, worker="test:1")
    job = node.store.get(job_id)
    assert job.state == JobState.DELIVERING and job.attempts == 1 and job.worker == "test:1"
    assert [(d.kind, d.target) for d in job.deliveries] == [("dicom", "PACS@127.0.0.1:104"),
                                                          ("fhir", "http://127.0.0.1:9/fhir")]
    assert [output.kind for output in job.results.outputs] == ["sc", "sr", "report_page", "pdf"]
    files = job.results.located(node.results_dir / job_id)  # the record names files in the job's results directory
    for output, path in zip(job.results.outputs, files.dicom_files(), strict=True):
        written = pydicom.dcmread(path)
        assert (written.SOPInstanceUID, written.SeriesInstanceUID, written.SOPClassUID) == (
            output.sop_instance_uid, output.series_instance_uid, output.sop_class_uid)
        assert written.StudyInstanceUID == prior.StudyInstanceUID
        assert node.store.is_output_series(written.SeriesInstanceUID)
        assert node.is_own_output(written)
    assert job.results.settings["seed"] == "3"
    # patient data is its owner's only: the data directory, and every result file in it
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in (node.results_dir / job_id).iterdir()} == {0o600}
    sc = pydicom.dcmread(files.dicom_files()[0])
    assert job.results.algorithm.checkpoint_sha256 in sc.DerivationDescription
    logged = caplog.text
    assert logged and not any(value in logged for value in ("DOE", "JANE", "MRN-998877", "19451231"))
    assert not any(value in repr(job) for value in ("DOE", "JANE", "MRN-998877", "19451231"))  # the audit row


@pytest.mark.slow
def test_a_finished_job_is_not_generated_again(tmp_path: Path) -> None:
    node = _node(tmp_path)
    prior = phantom_prior()
    _spool(node, prior, tmp_path)
    job_id = _job(node, prior.StudyInstanceUID)
    node.generate(job_id, worker="test:1")
    finished = node.store.get(job_id)
    assert finished.state == JobState.FAILED and finished.reason == NO_DESTINATION  # nowhere to go: never done
    assert (node.results_dir / job_id / "report.dcm").is_file()  # kept until results retention
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
    assert node.store.get(job_id).destination == "ORTHANC@127.0.0.1:4242"  # decided on arrival, and stored


def test_a_later_sender_of_the_study_neither_adds_to_it_nor_redirects_its_results(tmp_path: Path) -> None:
    """Once, with no destination configured, the latest sender of a study became its results' destination."""
    node = _node(tmp_path, peers="ORTHANC@127.0.0.1:4242,OTHER@127.0.0.2:104")
    prior = phantom_prior()
    path = tmp_path / "prior.dcm"
    prior.save_as(path, enforce_file_format=True)
    study, series = prior.StudyInstanceUID, prior.SeriesInstanceUID
    node.spool.write(study, series, prior.SOPInstanceUID, path.read_bytes(), calling_ae="ORTHANC", called_ae="PROGEMU")
    node.on_study_complete(StudyArrival(study, "PROGEMU", "ORTHANC", {series}, 1))
    with pytest.raises(ForeignSenderError):
        node.spool.write(study, series, generate_uid(), path.read_bytes(), calling_ae="OTHER", called_ae="PROGEMU")
    node.on_study_complete(StudyArrival(study, "PROGEMU", "OTHER", {series}, 1))
    job, _ = node.submit(NewJob(request_id="api", study_instance_uid=study, source="api", hypothesis="h",
                                sampler=node.default_sampler()))
    assert job.destination == "ORTHANC@127.0.0.1:4242" and len(node.spool.instances(study)) == 1


def test_a_configured_destination_is_fixed_when_the_job_is_accepted(tmp_path: Path) -> None:
    node = _node(tmp_path, destination="PACS@127.0.0.1:104", peers="ORTHANC@127.0.0.1:4242")
    job, _ = node.submit(NewJob(request_id="r", study_instance_uid="1.2.826.0.1.3680043.8.498.5", source="api",
                                hypothesis="h", sampler=node.default_sampler()))
    assert job.destination == "PACS@127.0.0.1:104"
    node.on_study_complete(StudyArrival("1.2.826.0.1.3680043.8.498.5", "PROGEMU", "ORTHANC", set(), 1))
    assert node.store.get(job.id).destination == "PACS@127.0.0.1:104"


def test_the_fhir_server_is_fixed_when_the_job_is_accepted_by_every_path(tmp_path: Path) -> None:
    """A worker on another host never decides where results go: the node records both targets with the job."""
    node = _node(tmp_path, fhir_url="https://fhir.test/r4", peers="ORTHANC@127.0.0.1:4242",
                 routes=[RoutingRule(name="any", hypothesis="h")])
    requested, _ = node.submit(NewJob(request_id="api", study_instance_uid="1.2.826.0.1.3680043.8.498.4",
                                      source="api", hypothesis="h", sampler=node.default_sampler()))
    prior = phantom_prior()
    _spool(node, prior, tmp_path)
    node.on_study_complete(StudyArrival(prior.StudyInstanceUID, "PROGEMU", "ORTHANC", {prior.SeriesInstanceUID}, 1))
    [routed] = node.store.list(study_instance_uid=prior.StudyInstanceUID)
    assert requested.fhir_url == routed.fhir_url == "https://fhir.test/r4"
    assert routed.destination == "ORTHANC@127.0.0.1:4242"


def test_every_job_waiting_for_a_study_is_started_when_it_arrives(tmp_path: Path) -> None:
    """Once only the first 100 waiting jobs of each state were."""
    recorder = RecordingDispatcher()
    node = Orchestrator(Settings(data_dir=tmp_path), recorder)
    study = "1.2.826.0.1.3680043.8.498.6"
    with node.store._session.begin() as session:  # one transaction: one submit each would take seconds
        session.add_all([Job(id=f"{n:032x}", request_id=f"r{n}", study_instance_uid=study, hypothesis="h",
                             sampler={}, source="test", state=JobState.RECEIVING) for n in range(150)])
    node.on_study_complete(StudyArrival(study, "PROGEMU", "ORTHANC", set(), 1))
    assert sorted(step[1] for step in recorder.steps) == [f"{n:032x}" for n in range(150)]


class _HungGeneration:
    """A generation that never ends on its own: it only checks the deadline between its "tokens"."""

    def run(self, prior, hypothesis, settings, *, allow_out_of_distribution=False, progress=None, cancel=None):
        while True:
            cancel()
            time.sleep(0.01)


def test_a_generation_past_the_time_limit_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    """The limit holds in every mode: a thread of `progemu serve` ignored Celery's time limits."""
    node = _node(tmp_path, task_time_limit=1)
    use_node(node)
    node.use_case = _HungGeneration  # type: ignore[method-assign]
    prior = phantom_prior()
    _spool(node, prior, tmp_path)
    job_id = _job(node, prior.StudyInstanceUID)
    started = time.monotonic()
    generate_task(job_id)  # the Celery task, run here: what a worker thread runs
    assert 1 <= time.monotonic() - started < 5
    job = node.store.get(job_id)
    assert job.state == JobState.FAILED and job.reason == "generation exceeded the 1 s time limit"


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


def test_a_request_for_a_study_still_arriving_waits_for_it_instead_of_retrieving(tmp_path: Path) -> None:
    """No PACS configured, the study half received: the job waits for the listener, it is not failed."""
    from types import SimpleNamespace

    config = Settings(data_dir=tmp_path)
    recorder = RecordingDispatcher()
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


@pytest.mark.slow
def test_the_audit_trail_records_who_asked_for_what_and_how_it_ended(tmp_path: Path) -> None:
    node = _node(tmp_path)  # no peers: the results have nowhere to go, so the job ends (failed) at once
    prior = phantom_prior(**PHI)
    _spool(node, prior, tmp_path)
    node.on_study_complete(StudyArrival(prior.StudyInstanceUID, "PROGEMU", "ORTHANC", {prior.SeriesInstanceUID}, 1))
    kept, _ = node.submit(NewJob(request_id="a", study_instance_uid=prior.StudyInstanceUID, source="api",
                                 hypothesis="The left pleural effusion worsens.", requester="orthanc:dr-who",
                                 sampler=node.default_sampler(seed=3)))
    node.generate(kept.id, worker="test:1")
    broken = phantom_prior(modality="OT")
    broken.SOPClassUID = broken.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    _spool(node, broken, tmp_path)
    failed = _job(node, broken.StudyInstanceUID, request_id="b")
    with pytest.raises(PermanentJobError) as refused:
        node.generate(failed, worker="test:1")
    node.fail(failed, str(refused.value))
    records = [(r.event, r.actor, r.outcome, r.fields) for r in node.audit.records()]
    events = [(event, fields.get("job_id"), fields.get("state")) for event, _, _, fields in records]
    assert events == [("study-received", None, None), ("job-requested", kept.id, None),
                      ("job-finished", kept.id, "failed"), ("job-requested", failed, None),
                      ("job-finished", failed, "failed")]
    assert records[2][3]["reason"] == NO_DESTINATION
    assert records[1][1] == "orthanc" and records[1][3]["requester"] == "dr-who"  # the client, and its user
    assert "no CR, DX or Secondary Capture image" in records[-1][3]["reason"]
    assert node.audit.verify().broken is None
    text = (tmp_path / "audit.log").read_text()
    assert not any(value in text for value in PHI.values())


def test_a_step_the_broker_refuses_is_queued_again_once_it_is_back(tmp_path: Path) -> None:
    broker = RecordingDispatcher(up=False)
    node = Orchestrator(Settings(data_dir=tmp_path), broker)
    prior = phantom_prior()
    _spool(node, prior, tmp_path)
    job_id = _job(node, prior.StudyInstanceUID)  # accepted although the queue refused it
    assert node.store.get(job_id).state == JobState.QUEUED and broker.steps == []
    assert node.redispatch() == 0  # still away: kept, not lost
    broker.up = True
    assert node.redispatch() == 1 and broker.steps == [("generate", job_id)]
    assert node.redispatch() == 0 and broker.steps == [("generate", job_id)]  # handed over once
