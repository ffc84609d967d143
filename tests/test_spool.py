"""The spool: UIDs that are safe as path components, the study's origin kept with the study (and fixed by its first
sender), and a size limit that removals (by this process or another) make room under again."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from dicom_io.spool import RECOUNT_SECONDS, ForeignSenderError, Spool, SpoolFullError, StudyOrigin, check_uid

STUDY = "1.2.826.0.1.3680043.8.498.1"
ORIGIN = StudyOrigin(calling_ae_title="MODALITY", called_ae_title="PROGEMU")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", 10**6)


@pytest.mark.parametrize(("value", "uid"), [("1.2.3", "1.2.3"), ("1.2.3\x00", "1.2.3"), ("1.2.3 ", "1.2.3")])
def test_uid_padding_is_dropped(value, uid) -> None:
    assert check_uid(value) == uid


@pytest.mark.parametrize("value", ["1.2.3\n", "1.2.3\n\x00", "1.2.3\r\n", "\n1.2.3", "1.2.3/..", "../1.2", "1..2",
                                   ".1.2", "1.2.", "", "1." + "2" * 63, "1.2.a"])
def test_anything_else_than_a_uid_is_refused(value) -> None:
    with pytest.raises(ValueError):
        check_uid(value)


def test_spooled_instances_are_their_owners_only(spool: Spool) -> None:
    spool.write(STUDY, "1.2.3", "1.2.3.4", b"DICM")
    [path] = spool.instances(STUDY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(spool.root.stat().st_mode) == 0o700  # no other user gets past it


def test_origin_round_trips_and_survives_a_restart(spool: Spool, tmp_path: Path) -> None:
    spool.write(STUDY, "1.2.3", "1.2.3.4", b"DICM")
    spool.record_origin(STUDY, ORIGIN)
    assert spool.origin(STUDY) == ORIGIN
    assert Spool(tmp_path / "spool", 10**6).origin(STUDY) == ORIGIN
    assert spool.record_origin(STUDY, StudyOrigin("OTHER", "PROGEMU")) == ORIGIN  # a later sender never replaces it
    assert spool.origin(STUDY) == ORIGIN
    assert spool.record_origin(STUDY, StudyOrigin("MODALITY", "PROGEMU_EFF")) == StudyOrigin("MODALITY", "PROGEMU_EFF")
    assert not list(spool.root.rglob("*.part"))
    with pytest.raises(FrozenInstanceError):
        ORIGIN.calling_ae_title = "X"  # type: ignore[misc]


def test_origin_is_metadata_not_an_instance(spool: Spool) -> None:
    spool.record_origin(STUDY, ORIGIN)
    assert not spool.has_study(STUDY) and spool.instances(STUDY) == []
    assert spool.used_bytes == 0


def test_a_study_without_origin_or_gone_has_none(spool: Spool) -> None:
    assert spool.origin(STUDY) is None
    spool.write(STUDY, "1.2.3", "1.2.3.4", b"DICM")
    assert spool.origin(STUDY) is None
    spool.record_origin(STUDY, ORIGIN)
    spool.remove_study(STUDY)
    assert spool.origin(STUDY) is None


def test_origin_written_before_the_api_is_still_read(spool: Spool) -> None:
    """Spools from before record_origin hold the same file, written by the orchestrator."""
    (spool.root / STUDY).mkdir()
    (spool.root / STUDY / "sender.json").write_text(json.dumps({"calling_ae_title": "MODALITY",
                                                                 "called_ae_title": "PROGEMU"}))
    assert spool.origin(STUDY) == ORIGIN


@pytest.mark.parametrize("bad", ["../escape", "1.2.3\n", "1.2/3", ""])
def test_origin_refuses_a_bad_uid(spool: Spool, bad: str) -> None:
    with pytest.raises(ValueError):
        spool.record_origin(bad, ORIGIN)
    with pytest.raises(ValueError):
        spool.origin(bad)
    assert list(spool.root.iterdir()) == []


def test_the_first_sender_owns_the_study_and_another_peers_instances_are_refused(spool: Spool) -> None:
    spool.write(STUDY, "1.2.3", "1.2.3.4", b"DICM", calling_ae="MODALITY ", called_ae="PROGEMU")
    assert spool.origin(STUDY) == ORIGIN
    with pytest.raises(ForeignSenderError):
        spool.write(STUDY, "1.2.3", "1.2.3.5", b"A BETTER PRIOR", calling_ae="INTRUDER", called_ae="PROGEMU")
    with pytest.raises(ForeignSenderError):  # nor may it overwrite an instance that is there
        spool.write(STUDY, "1.2.3", "1.2.3.4", b"REPLACED", calling_ae="INTRUDER")
    assert [p.name for p in spool.instances(STUDY)] == ["1.2.3.4.dcm"]
    assert spool.instances(STUDY)[0].read_bytes() == b"DICM" and spool.used_bytes == 4
    spool.write(STUDY, "1.2.3", "1.2.3.5", b"MORE", calling_ae="MODALITY")  # the owner goes on sending
    assert len(spool.instances(STUDY)) == 2 and spool.origin(STUDY) == ORIGIN


def test_an_instance_refused_for_want_of_room_claims_no_study(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 3)
    with pytest.raises(SpoolFullError):
        spool.write(STUDY, "1.2.3", "1.2.3.4", b"DICM", calling_ae="MODALITY", called_ae="PROGEMU")
    assert spool.origin(STUDY) is None and spool.used_bytes == 0


def test_a_removed_study_may_come_again_from_anyone(spool: Spool) -> None:
    spool.write(STUDY, "1.2.3", "1.2.3.4", b"DICM", calling_ae="MODALITY", called_ae="PROGEMU")
    spool.remove_study(STUDY)
    spool.write(STUDY, "1.2.3", "1.2.3.4", b"DICM", calling_ae="PACS", called_ae="PROGEMU")
    assert spool.origin(STUDY) == StudyOrigin("PACS", "PROGEMU")


def test_room_is_what_is_left_and_never_negative(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 10)
    assert spool.room_bytes() == 10
    spool.write(STUDY, "1.2.3", "1.2.3.4", b"123456")
    assert spool.room_bytes() == 4
    spool.max_bytes = 5  # e.g. a smaller limit after a restart
    assert spool.room_bytes() == 0


def test_removing_a_study_makes_room_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 10)
    spool.write(STUDY, "1.2.3", "1.2.3.4", b"12345678")
    with pytest.raises(SpoolFullError):
        spool.write("1.2.9", "1.2.9.1", "1.2.9.1.1", b"123")
    assert spool.remove_study(STUDY) == 8 and spool.used_bytes == 0
    spool.write("1.2.9", "1.2.9.1", "1.2.9.1.1", b"123")
    assert spool.used_bytes == 3


def test_a_removal_by_another_process_makes_room_too(tmp_path: Path) -> None:
    """`progemu worker` removes studies from the spool the listener's process counts: a full spool counts again."""
    now = [0.0]
    listener_side = Spool(tmp_path / "spool", 10, clock=lambda: now[0])
    listener_side.write(STUDY, "1.2.3", "1.2.3.4", b"12345678")
    Spool(tmp_path / "spool", 10).remove_study(STUDY)  # the worker's own Spool
    with pytest.raises(SpoolFullError):  # counted again at most every RECOUNT_SECONDS
        listener_side.write("1.2.9", "1.2.9.1", "1.2.9.1.1", b"123")
    now[0] += RECOUNT_SECONDS
    listener_side.write("1.2.9", "1.2.9.1", "1.2.9.1.1", b"123")
    assert listener_side.used_bytes == 3


def test_studies_are_listed_oldest_first_with_their_size(spool: Spool) -> None:
    spool.write("1.2.8", "1.2.8.1", "1.2.8.1.1", b"NEWER")
    spool.write(STUDY, "1.2.3", "1.2.3.4", b"OLD")
    os.utime(spool.instances(STUDY)[0], (1_000, 1_000))
    (spool.root / "not-a-study").mkdir()
    listed = spool.studies()
    assert [(s.study_uid, s.size_bytes) for s in listed] == [(STUDY, 3), ("1.2.8", 5)]
    assert listed[0].modified == 1_000
