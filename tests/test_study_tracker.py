"""When a study is complete: the quiet period on an injected clock, or the series a request named. No sleeping."""

from __future__ import annotations

from unittest.mock import Mock

import pytest

from dicom_io.completion import StudyTracker

QUIET = 10.0


@pytest.fixture
def clock() -> Mock:
    """Set ``clock.return_value`` to move time."""
    return Mock(return_value=1000.0)


@pytest.fixture
def tracker(clock: Mock) -> StudyTracker:
    return StudyTracker(QUIET, clock=clock)


def arrive(tracker: StudyTracker, study: str = "1.1", series: str = "1.1.1", modality: str = "DX",
           calling: str = "MODALITY") -> None:
    tracker.record(study, series, modality, called="PROGEMU", calling=calling)


def test_a_study_completes_after_the_quiet_period_once(tracker: StudyTracker, clock: Mock) -> None:
    arrive(tracker, series="1.1.1")
    arrive(tracker, series="1.1.2", modality="CR")
    clock.return_value += QUIET - 0.001
    assert tracker.complete() == [] and tracker.receiving("1.1")
    clock.return_value += 0.001
    [arrival] = tracker.complete()
    assert (arrival.study_uid, arrival.instances, arrival.series, arrival.modalities) == (
        "1.1", 2, {"1.1.1", "1.1.2"}, {"DX", "CR"})
    assert (arrival.calling_ae_title, arrival.called_ae_title) == ("MODALITY", "PROGEMU")
    assert tracker.complete() == [] and not tracker.receiving("1.1")


def test_a_new_instance_restarts_the_quiet_period(tracker: StudyTracker, clock: Mock) -> None:
    arrive(tracker)
    clock.return_value += QUIET - 1
    arrive(tracker)
    clock.return_value += QUIET - 1
    assert tracker.complete() == []
    clock.return_value += 1
    [arrival] = tracker.complete()
    assert arrival.instances == 2


def test_named_series_complete_the_study_early(tracker: StudyTracker) -> None:
    tracker.expect("1.1", {"1.1.1", "1.1.2"})
    arrive(tracker, series="1.1.1")
    assert tracker.complete() == []  # one of the two named series is still missing
    arrive(tracker, series="1.1.2")
    [arrival] = tracker.complete()  # no time has passed
    assert arrival.series == {"1.1.1", "1.1.2"}


def test_named_series_are_forgotten_with_the_study(tracker: StudyTracker, clock: Mock) -> None:
    tracker.expect("1.1", {"1.1.1"})
    arrive(tracker, series="1.1.1")
    assert len(tracker.complete()) == 1
    arrive(tracker, series="1.1.1")  # the same series sent again: a new arrival, on the quiet period
    assert tracker.complete() == []
    clock.return_value += QUIET
    [again] = tracker.complete()
    assert again.instances == 1


def test_studies_complete_independently(tracker: StudyTracker, clock: Mock) -> None:
    arrive(tracker, study="1.1", calling="FIRST")
    clock.return_value += QUIET / 2
    arrive(tracker, study="1.2", series="1.2.1", calling="SECOND")
    clock.return_value += QUIET / 2
    assert [a.study_uid for a in tracker.complete()] == ["1.1"]
    assert tracker.receiving("1.2")
    clock.return_value += QUIET / 2
    [second] = tracker.complete()
    assert (second.study_uid, second.calling_ae_title) == ("1.2", "SECOND")


def test_the_first_association_names_the_sender(tracker: StudyTracker, clock: Mock) -> None:
    arrive(tracker, calling="FIRST")
    arrive(tracker, calling="LATER")
    clock.return_value += QUIET
    assert tracker.complete()[0].calling_ae_title == "FIRST"
