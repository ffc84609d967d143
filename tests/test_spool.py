"""The spool: UIDs that are safe as path components, and the study's origin kept with the study."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from dicom_io.spool import Spool, StudyOrigin, check_uid

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


def test_origin_round_trips_and_survives_a_restart(spool: Spool, tmp_path: Path) -> None:
    spool.write(STUDY, "1.2.3", "1.2.3.4", b"DICM")
    spool.record_origin(STUDY, ORIGIN)
    assert spool.origin(STUDY) == ORIGIN
    assert Spool(tmp_path / "spool", 10**6).origin(STUDY) == ORIGIN
    spool.record_origin(STUDY, StudyOrigin("OTHER", "PROGEMU"))  # a later sender replaces it
    assert spool.origin(STUDY) == StudyOrigin("OTHER", "PROGEMU")
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
