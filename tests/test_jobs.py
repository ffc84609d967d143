"""The job store on SQLite and on the PostgreSQL server running here: idempotency, states, outbox."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest

from plugin.config import Settings
from plugin.jobs import NO_DESTINATION, DeliveryState, Job, JobState, JobStore, NewJob
from plugin.results import AlgorithmIdentity, DicomOutput, JobResults, OutputKind
from tests.support.databases import postgres_database
from tests.support.generation import generated


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        yield JobStore(Settings(data_dir=tmp_path).resolved_database_url())
        return
    with postgres_database() as url:
        job_store = JobStore(Settings(database_url=url).resolved_database_url())
        yield job_store
        job_store.dispose()


def _request(request_id: str = "r1", study: str = "1.2.3", **overrides) -> NewJob:
    values = {"request_id": request_id, "study_instance_uid": study, "hypothesis": "The effusion worsens.",
              "sampler": {"seed": 7}, "source": "api", **overrides}
    return NewJob(**values)


def _results(*series_uids: str) -> JobResults:
    outputs = tuple(DicomOutput(kind=OutputKind.SC, series_instance_uid=uid, sop_instance_uid=f"{uid}.1",
                                sop_class_uid="1.2.840.10008.5.1.4.1.1.7") for uid in series_uids)
    return JobResults(outputs=outputs, interpretation="The effusion has worsened.", settings={"seed": "7"},
                      algorithm=AlgorithmIdentity(name="ProgEmu", version="t", checkpoint_sha256="0" * 64),
                      files={"sc": "/results/j/counterfactual.dcm"})


def test_results_are_kept_typed_and_shown_without_internal_fields(store: JobStore) -> None:
    job, _ = store.submit(_request())
    generated(store, job.id, _results("1.2.3.4.5"), [])
    stored = store.get(job.id).results
    assert stored == _results("1.2.3.4.5")
    assert "files" not in stored.public().model_dump()
    assert stored.public().outputs[0].sop_instance_uid == "1.2.3.4.5.1"


def test_a_delivery_is_read_as_a_detached_view(store: JobStore) -> None:
    job, _ = store.submit(_request())
    generated(store, job.id, _results(), [("dicom", "PACS@h:104")])
    [delivery_id] = store.claim_due_deliveries(dt.timedelta(minutes=1))
    item, owner = store.delivery(delivery_id)
    assert (item.job_id, item.kind, item.state, item.attempts) == (job.id, "dicom", DeliveryState.PENDING, 0)
    assert item.created_at.tzinfo is not None and owner.id == job.id
    with pytest.raises(AttributeError):
        item.attempts = 5  # a frozen snapshot, not a live ORM row


def test_same_request_id_makes_one_job(store: JobStore) -> None:
    first, created = store.submit(_request())
    again, created_again = store.submit(_request(hypothesis="something else"))
    assert created and not created_again
    assert again.id == first.id and again.hypothesis == "The effusion worsens."
    assert len(store.list()) == 1


def test_concurrent_submissions_of_one_request_make_one_job(store: JobStore) -> None:
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.submit(_request("same"))))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_states_move_only_from_what_is_expected(store: JobStore) -> None:
    job, _ = store.submit(_request())
    assert job.state == JobState.QUEUED
    assert store.transition(job.id, JobState.RUNNING, expect=[JobState.QUEUED])
    assert not store.transition(job.id, JobState.RECEIVING, expect=[JobState.QUEUED])
    assert store.transition(job.id, JobState.FAILED, expect=[JobState.RUNNING], reason="the study holds no image")
    failed = store.get(job.id)
    assert failed.state == JobState.FAILED and failed.reason == "the study holds no image"
    assert failed.updated_at >= failed.created_at


def test_list_filters_by_study_state_and_requester(store: JobStore) -> None:
    a, _ = store.submit(_request("a", study="1.2.3", requester="dr-a"))
    store.submit(_request("b", study="1.2.4"))
    store.transition(a.id, JobState.RECEIVING, expect=[JobState.QUEUED])
    assert [j.request_id for j in store.list(study_instance_uid="1.2.3")] == ["a"]
    assert [j.request_id for j in store.list(state=JobState.QUEUED)] == ["b"]
    assert [j.request_id for j in store.list(requester="dr-a")] == ["a"]
    assert [j.request_id for j in store.waiting_for("1.2.3")] == ["a"]


def test_outbox_claims_each_due_delivery_once_and_settles_the_job(store: JobStore) -> None:
    job, _ = store.submit(_request())
    generated(store, job.id, _results("1.2.3.4.5"), [("dicom", "PACS@h:104"), ("fhir", "http://f/fhir")])
    assert store.is_output_series("1.2.3.4.5") and not store.is_output_series("1.2.3.4.6")
    lease = dt.timedelta(minutes=10)
    claimed = store.claim_due_deliveries(lease)
    assert len(claimed) == 2
    assert store.claim_due_deliveries(lease) == []  # leased: not handed out twice
    dicom, fhir = claimed
    store.delivery_attempt(dicom, error="association rejected", retry_in=dt.timedelta(seconds=0))
    assert store.settle(job.id) is None  # still pending
    assert store.claim_due_deliveries(lease) == [dicom]  # the retry is due
    store.delivery_attempt(dicom, error=None, retry_in=None)
    store.delivery_attempt(fhir, error=None, retry_in=None)
    assert store.settle(job.id) == JobState.DONE
    done = store.get(job.id)
    assert done.state == JobState.DONE
    assert [(d.kind, d.state, d.attempts) for d in done.deliveries] == [
        ("dicom", DeliveryState.DONE, 2), ("fhir", DeliveryState.DONE, 1)]


def test_a_delivery_given_up_fails_the_job_with_a_reason(store: JobStore) -> None:
    job, _ = store.submit(_request())
    generated(store, job.id, _results(), [("dicom", "PACS@h:104")])
    [delivery] = store.claim_due_deliveries(dt.timedelta(minutes=1))
    store.delivery_attempt(delivery, error="refused", retry_in=None)
    assert store.settle(job.id) == JobState.FAILED
    assert store.get(job.id).reason == "1 of 1 deliveries failed"


def test_a_job_with_nothing_to_deliver_to_is_never_done(store: JobStore) -> None:
    job, _ = store.submit(_request())
    generated(store, job.id, _results(), [])
    assert store.settle(job.id) == JobState.FAILED
    failed = store.get(job.id)
    assert failed.state == JobState.FAILED and failed.reason == NO_DESTINATION
    assert failed.results is not None  # kept: retention removes them later


def test_results_are_taken_only_from_the_attempt_that_runs(store: JobStore) -> None:
    job, _ = store.submit(_request(destination="PACS@h:104", fhir_url="https://fhir.test/r4"))
    assert store.get(job.id).fhir_url == "https://fhir.test/r4"  # fixed with the job, for whichever worker runs it
    store.transition(job.id, JobState.RUNNING, expect=[JobState.QUEUED])
    store.count_attempt(job.id, "host-b:1")
    store.count_attempt(job.id, "host-b:2")  # the task was redelivered: attempt 2 runs
    assert not store.finish_generation(job.id, 1, _results("1.2.3.4.1"), [("dicom", "PACS@h:104")])
    assert store.get(job.id).results is None and not store.is_output_series("1.2.3.4.1")
    assert store.finish_generation(job.id, 2, _results("1.2.3.4.2"), [("dicom", "PACS@h:104")])
    assert not store.finish_generation(job.id, 2, _results("1.2.3.4.2"), [("dicom", "PACS@h:104")])  # once
    done = store.get(job.id)
    assert done.state == JobState.DELIVERING and done.results == _results("1.2.3.4.2")
    assert [(d.kind, d.target) for d in done.deliveries] == [("dicom", "PACS@h:104")]
    assert store.is_output_series("1.2.3.4.2")


def test_release_makes_leased_deliveries_due_after_a_restart(store: JobStore) -> None:
    job, _ = store.submit(_request())
    generated(store, job.id, _results(), [("dicom", "PACS@h:104")])
    assert len(store.claim_due_deliveries(dt.timedelta(hours=1))) == 1
    store.release_delivery_claims()
    assert len(store.claim_due_deliveries(dt.timedelta(hours=1))) == 1


def _receiving_jobs(store: JobStore, study: str, count: int) -> None:
    """``count`` jobs waiting for ``study``, inserted in one transaction (one submit each would take seconds)."""
    with store._session.begin() as session:
        session.add_all([Job(id=f"{n:032x}", request_id=f"bulk-{n}", study_instance_uid=study, hypothesis="h",
                             sampler={}, source="test", state=JobState.RECEIVING) for n in range(count)])


def test_every_waiting_job_is_found_however_many_there_are(store: JobStore) -> None:
    _receiving_jobs(store, "1.2.3", 130)
    queued, _ = store.submit(_request("queued", study="1.2.3"))
    store.submit(_request("other-study", study="1.2.4"))
    assert len(list(store.waiting_for("1.2.3"))) == 131  # once only 100 of each state
    assert [job.id for job in store.waiting_for("1.2.3", page=7)] == sorted(
        [f"{n:032x}" for n in range(130)] + [queued.id])


def test_a_destination_is_assigned_once_and_keeps_the_jobs_time(store: JobStore) -> None:
    job, _ = store.submit(_request())
    assert store.assign_destination(job.id, "ORTHANC@127.0.0.1:4242")
    assert not store.assign_destination(job.id, "INTRUDER@127.0.0.9:104")
    stored = store.get(job.id)
    assert stored.destination == "ORTHANC@127.0.0.1:4242" and stored.updated_at == job.updated_at


def test_which_studies_jobs_still_need(store: JobStore) -> None:
    waiting, _ = store.submit(_request("a", study="1.2.3"))
    delivering, _ = store.submit(_request("b", study="1.2.4"))
    store.transition(delivering.id, JobState.DELIVERING, expect=[JobState.QUEUED])
    assert store.needs_study("1.2.3") and not store.needs_study("1.2.4") and not store.needs_study("1.2.5")
    assert store.studies_needed() == {"1.2.3"}
    store.transition(waiting.id, JobState.FAILED, expect=[JobState.QUEUED], reason="r")
    assert store.studies_needed() == set()


def test_jobs_receiving_since_before_a_time(store: JobStore) -> None:
    job, _ = store.submit(_request())
    store.transition(job.id, JobState.RECEIVING, expect=[JobState.QUEUED])
    now = dt.datetime.now(dt.UTC)
    assert store.receiving_since(now - dt.timedelta(minutes=1)) == []
    assert [j.id for j in store.receiving_since(now + dt.timedelta(seconds=1))] == [job.id]


def test_abandoned_deliveries_fail_and_so_does_the_job(store: JobStore) -> None:
    job, _ = store.submit(_request())
    generated(store, job.id, _results(), [("dicom", "PACS@h:104"), ("fhir", "http://f/fhir")])
    first = store.get(job.id).deliveries[0].id
    store.delivery_attempt(first, error=None, retry_in=None)
    assert store.abandon_deliveries(job.id, "the results were removed") == 1
    assert store.settle(job.id) == JobState.FAILED
    done, abandoned = store.get(job.id).deliveries
    assert done.state == DeliveryState.DONE
    assert (abandoned.state, abandoned.last_error) == (DeliveryState.FAILED, "the results were removed")
