"""Retention: studies and results go once no job needs them, what is left goes after its retention period or
when the disk is nearly full, and a request whose study never comes fails after its timeout."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest

from dicom_io.spool import SpoolFullError
from plugin.config import Settings
from plugin.jobs import DeliveryState, JobState, NewJob
from plugin.orchestrator import Orchestrator
from tests.support.dicom_fixtures import phantom_prior
from tests.support.dispatchers import RecordingDispatcher
from tests.support.generation import StandInUseCase, write_outputs

PHI = {"patient_name": "DOE^JANE", "patient_id": "MRN-998877", "patient_birth_date": "19451231"}
HOUR = 3600.0


@pytest.fixture
def delivered(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Deliveries succeed (and are recorded here); the model is a stand-in."""
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr("plugin.orchestrator.write_outputs", write_outputs)
    monkeypatch.setattr("plugin.orchestrator.deliver", lambda kind, target, results, config: sent.append(
        (kind, target)))
    return sent


def _node(tmp_path: Path, **settings) -> tuple[Orchestrator, RecordingDispatcher]:
    recorder = RecordingDispatcher()
    node = Orchestrator(Settings(data_dir=tmp_path / "data", **settings), recorder)
    node.use_case = StandInUseCase  # type: ignore[method-assign]
    return node, recorder


def _spool(node: Orchestrator, tmp_path: Path, **attributes: object) -> pydicom.Dataset:
    ds = phantom_prior(**attributes)
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    node.spool.write(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, path.read_bytes())
    return ds


def _submit(node: Orchestrator, study: str, request_id: str = "r") -> str:
    job, _ = node.submit(NewJob(request_id=request_id, study_instance_uid=study, source="test",
                                hypothesis="The effusion worsens.", sampler={}))
    return job.id


def _later(node: Orchestrator, hours: float) -> None:
    node.retention.clock = lambda: time.time() + hours * HOUR


# --- as jobs end ----------------------------------------------------------------------------------------------


def test_a_study_goes_once_its_last_job_has_generated(tmp_path: Path, delivered, caplog) -> None:
    node, _ = _node(tmp_path)
    prior = _spool(node, tmp_path, **PHI)
    study = prior.StudyInstanceUID
    first, second = _submit(node, study, "a"), _submit(node, study, "b")
    with caplog.at_level(logging.INFO):
        node.generate(first, worker="test")
        assert node.spool.has_study(study)  # the second job still needs it
        node.generate(second, worker="test")
    assert not node.spool.study_dir(study).exists() and node.spool.used_bytes == 0
    assert f"removed study {study} from the spool" in caplog.text
    assert not any(value in caplog.text for value in ("DOE", "JANE", "MRN-998877", "19451231"))


def test_a_failed_job_releases_its_study(tmp_path: Path) -> None:
    node, _ = _node(tmp_path)
    study = _spool(node, tmp_path).StudyInstanceUID
    node.fail(_submit(node, study), "the prior cannot be used")
    assert not node.spool.study_dir(study).exists()


def test_a_study_arriving_again_is_kept(tmp_path: Path) -> None:
    node, _ = _node(tmp_path)
    study = _spool(node, tmp_path).StudyInstanceUID
    node.listener = SimpleNamespace(tracker=SimpleNamespace(receiving=lambda uid: True))  # type: ignore[assignment]
    assert not node.retention.release_study(study)
    assert node.spool.has_study(study)


def test_a_full_spool_takes_studies_again_once_their_jobs_end(tmp_path: Path, delivered) -> None:
    """Once the limit was reached every C-STORE was refused for ever: nothing was ever removed."""
    node, _ = _node(tmp_path, spool_max_bytes=200_000)  # room for one prior (128 KiB of pixels)
    study = _spool(node, tmp_path).StudyInstanceUID
    job = _submit(node, study)
    with pytest.raises(SpoolFullError):
        _spool(node, tmp_path)
    node.generate(job, worker="test")
    _spool(node, tmp_path)


def test_results_go_once_every_delivery_succeeded(tmp_path: Path, delivered) -> None:
    node, recorder = _node(tmp_path, destination="PACS@127.0.0.1:104", fhir_url="http://127.0.0.1:9/fhir")
    job = _submit(node, _spool(node, tmp_path).StudyInstanceUID)
    node.generate(job, worker="test")
    results = node.results_dir / job
    dicom, fhir = [step[1] for step in recorder.steps if step[0] == "deliver"]
    node.deliver(dicom)
    assert results.is_dir()  # the FHIR server has not had them yet
    node.deliver(fhir)
    assert delivered == [("dicom", "PACS@127.0.0.1:104"), ("fhir", "http://127.0.0.1:9/fhir")]
    assert not results.exists()
    stored = node.store.get(job)
    assert stored.state == JobState.DONE and stored.results is not None  # the row stays, for audit


def test_results_not_delivered_stay_until_their_retention(tmp_path: Path, delivered) -> None:
    node, _ = _node(tmp_path)  # no destination: the results wait for someone to fetch them
    job = _submit(node, _spool(node, tmp_path).StudyInstanceUID)
    node.generate(job, worker="test")
    stored = node.store.get(job)
    assert stored.state == JobState.FAILED and stored.reason.startswith("no destination configured")  # never done
    assert (node.results_dir / job).is_dir()
    node.retention.sweep()
    assert (node.results_dir / job).is_dir()
    _later(node, 169)
    node.retention.sweep()
    assert not (node.results_dir / job).exists()


# --- the periodic sweep ---------------------------------------------------------------------------------------


def test_stale_studies_go_unless_a_job_needs_them(tmp_path: Path, caplog) -> None:
    node, _ = _node(tmp_path)
    unused = _spool(node, tmp_path).StudyInstanceUID  # pushed, and no rule or request wanted it
    needed = _spool(node, tmp_path).StudyInstanceUID
    _submit(node, needed)  # queued: to be generated
    node.retention.sweep()
    assert node.spool.has_study(unused)
    _later(node, 25)
    with caplog.at_level(logging.INFO):
        node.retention.sweep()
    assert not node.spool.has_study(unused) and node.spool.has_study(needed)
    assert f"removed study {unused} from the spool" in caplog.text and "unused for 24 hours" in caplog.text


def test_undelivered_results_expire_and_their_deliveries_fail(tmp_path: Path, delivered) -> None:
    node, _ = _node(tmp_path, destination="PACS@127.0.0.1:104")
    job = _submit(node, _spool(node, tmp_path).StudyInstanceUID)
    node.generate(job, worker="test")  # its delivery stays pending: the recorder never runs it
    _later(node, 169)
    node.retention.sweep()
    assert not (node.results_dir / job).exists()
    stored = node.store.get(job)
    assert stored.state == JobState.FAILED and stored.reason == "1 of 1 deliveries failed"
    assert stored.deliveries[0].state == DeliveryState.FAILED
    assert stored.deliveries[0].last_error == "the results were removed: not delivered within 168 hours"


def test_a_request_whose_study_never_arrives_fails_after_the_timeout(tmp_path: Path) -> None:
    node, recorder = _node(tmp_path, receiving_timeout_minutes=30)
    lost = _submit(node, "1.2.826.0.1.3680043.8.498.7", "lost")
    slow = _submit(node, "1.2.826.0.1.3680043.8.498.8", "slow")
    arrived = _submit(node, "1.2.826.0.1.3680043.8.498.9", "arrived")
    assert recorder.steps == [("retrieve", lost), ("retrieve", slow), ("retrieve", arrived)]
    node.retention.sweep()
    assert node.store.get(lost).state == JobState.RECEIVING
    arriving = {"1.2.826.0.1.3680043.8.498.8"}
    node.listener = SimpleNamespace(tracker=SimpleNamespace(receiving=arriving.__contains__))  # type: ignore
    node.spool.write("1.2.826.0.1.3680043.8.498.9", "1.2.3", "1.2.3.4", b"DICM")  # its generation is queued
    _later(node, 0.6)
    node.retention.sweep()
    failed = node.store.get(lost)
    assert failed.state == JobState.FAILED and failed.reason == "the study did not arrive within 30 minutes"
    assert node.store.get(slow).state == JobState.RECEIVING  # arriving right now, only slowly
    assert node.store.get(arrived).state == JobState.RECEIVING


def test_over_the_high_water_mark_the_oldest_unused_go_first(tmp_path: Path, delivered, caplog) -> None:
    node, _ = _node(tmp_path, destination="PACS@127.0.0.1:104", disk_high_water=0.5)
    oldest, in_use, newer, newest = (_spool(node, tmp_path).StudyInstanceUID for _ in range(4))
    job = _submit(node, newest, "results")
    node.generate(job, worker="test")  # its study goes; its results wait for their delivery
    _submit(node, in_use, "in-use")
    for age, study in ((3, oldest), (2, in_use), (1, newer)):
        for path in node.spool.study_dir(study).rglob("*"):
            os.utime(path, (time.time() - age * HOUR,) * 2)
    total = 3 * node.spool.studies()[0].size_bytes  # a disk with room for three studies

    def usage(path: Path) -> SimpleNamespace:
        used = sum(f.stat().st_size for d in (node.spool.root, node.results_dir) for f in d.rglob("*") if f.is_file())
        return SimpleNamespace(total=total, used=used, free=max(0, total - used))

    node.retention.disk_usage = usage
    with caplog.at_level(logging.INFO):
        node.retention.sweep()  # three studies: over; the oldest unused goes, still over; the next unused goes
    assert [s.study_uid for s in node.spool.studies()] == [in_use]
    assert (node.results_dir / job).is_dir()  # below the mark again: nothing more goes
    assert "the data disk is over 50% full" in caplog.text
    node.retention.disk_usage = lambda path: SimpleNamespace(total=100, used=99, free=1)  # something else fills it
    with caplog.at_level(logging.INFO):
        node.retention.sweep()  # the undelivered results go too, never the study a job needs
    assert not (node.results_dir / job).exists() and node.spool.has_study(in_use)
    assert node.store.get(job).state == JobState.FAILED
    assert "nothing more can be removed" in caplog.text
