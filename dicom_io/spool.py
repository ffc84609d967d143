"""The spool: received instances on disk, one directory per study, written atomically.

An instance is on disk (written, fsynced, renamed into place) before the sender hears
success, so a crash never turns an acknowledged instance into a lost or half-written one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from boltons.fileutils import atomic_save

log = logging.getLogger(__name__)

UID_PATTERN = r"[0-9]+(\.[0-9]+)*"
"""A DICOM UID: dot-separated numbers (at most 64 characters, checked apart)."""
_UID = re.compile(UID_PATTERN)
_ORIGIN_FILE = "sender.json"
"""Beside the study's series directories (a UID never clashes with it); the name the orchestrator wrote before
``record_origin`` existed, so studies spooled then keep their origin."""


class SpoolFullError(OSError):
    """The spool has reached its configured size."""


@dataclass(frozen=True)
class StudyOrigin:
    """Who sent a study to whom: results go back to the sender unless a request says otherwise."""

    calling_ae_title: str
    called_ae_title: str


def check_uid(value: str) -> str:
    """A DICOM UID, safe to use as a path component (digits and dots only, at most 64 characters).

    Only DICOM's padding (a trailing NUL or space) is dropped: anything else, a newline included, is refused.
    """
    uid = str(value).rstrip("\x00 ")
    if len(uid) > 64 or not _UID.fullmatch(uid):
        raise ValueError("not a valid DICOM UID")
    return uid


class Spool:
    """``ROOT/<study uid>/<series uid>/<sop instance uid>.dcm``, bounded in total size."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._used = sum(f.stat().st_size for f in self.root.rglob("*.dcm"))

    @property
    def used_bytes(self) -> int:
        return self._used

    def study_dir(self, study_uid: str) -> Path:
        return self.root / check_uid(study_uid)

    def write(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> Path:
        """Store one encoded instance; raise OSError (SpoolFullError included) if it is not safely on disk."""
        target = self.study_dir(study_uid) / check_uid(series_uid) / f"{check_uid(sop_uid)}.dcm"
        with self._lock:
            previous = target.stat().st_size if target.exists() else 0
            if self._used - previous + len(data) > self.max_bytes:
                raise SpoolFullError(f"spool limit of {self.max_bytes} bytes reached")
            self._used += len(data) - previous  # reserved now, released below on failure
        try:
            _write_atomically(target, data)
        except BaseException:
            with self._lock:
                self._used -= len(data) - previous
            raise
        return target

    def record_origin(self, study_uid: str, origin: StudyOrigin) -> None:
        """Keep who sent the study with it, until the study is removed."""
        _write_atomically(self.study_dir(study_uid) / _ORIGIN_FILE, json.dumps(asdict(origin)).encode())

    def origin(self, study_uid: str) -> StudyOrigin | None:
        """The recorded origin, or None when none was recorded (or the study is gone)."""
        try:
            return StudyOrigin(**json.loads((self.study_dir(study_uid) / _ORIGIN_FILE).read_text()))
        except FileNotFoundError:
            return None

    def instances(self, study_uid: str) -> list[Path]:
        directory = self.study_dir(study_uid)
        return sorted(directory.rglob("*.dcm")) if directory.is_dir() else []

    def has_study(self, study_uid: str) -> bool:
        return bool(self.instances(study_uid))

    def remove_study(self, study_uid: str) -> None:
        directory = self.study_dir(study_uid)
        freed = sum(f.stat().st_size for f in directory.rglob("*.dcm")) if directory.is_dir() else 0
        shutil.rmtree(directory, ignore_errors=True)
        with self._lock:
            self._used -= freed


def _write_atomically(target: Path, data: bytes) -> None:
    """Written, fsynced and renamed into place, then the rename made durable: a crash leaves the old file or
    the new one, never a part (the spool answers success only after this)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_save(str(target), part_file=f".incoming-{uuid.uuid4().hex}.part") as stream:
        stream.write(data)
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
