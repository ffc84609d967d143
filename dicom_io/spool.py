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
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from boltons.fileutils import atomic_save

log = logging.getLogger(__name__)

UID_PATTERN = r"[0-9]+(\.[0-9]+)*"
"""A DICOM UID: dot-separated numbers (at most 64 characters, checked apart)."""
_UID = re.compile(UID_PATTERN)
_ORIGIN_FILE = "sender.json"
"""Beside the study's series directories (a UID never clashes with it); the name the orchestrator wrote before
``record_origin`` existed, so studies spooled then keep their origin."""


RECOUNT_SECONDS = 2.0
"""At most this often, a write that would pass the limit counts the disk again: other processes (`progemu worker`)
remove studies from the same spool, and this process's count only knows its own removals."""


class SpoolFullError(OSError):
    """The spool has reached its configured size."""


class ForeignSenderError(PermissionError):
    """An instance of a study that another peer sent first: a study belongs to its first sender (the listener
    refuses it, so that no peer can add a prior to, or redirect the results of, another peer's study)."""


@dataclass(frozen=True)
class StudyOrigin:
    """Who sent a study to whom: results go back to the sender unless a request says otherwise."""

    calling_ae_title: str
    called_ae_title: str


@dataclass(frozen=True)
class SpooledStudy:
    """One study directory as retention sees it."""

    study_uid: str
    size_bytes: int
    modified: float
    """The newest modification time (``time.time()`` scale) of anything in it: when it last received something."""


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

    def __init__(self, root: Path, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._origin_lock = threading.Lock()
        self._on_disk = self._disk_bytes()
        self._in_flight = 0
        self._counted_at = clock()

    @property
    def used_bytes(self) -> int:
        """Bytes on disk, and reserved by writes under way."""
        return self._on_disk + self._in_flight

    def room_bytes(self) -> int:
        """What may still be written before the limit (never negative)."""
        return max(0, self.max_bytes - self.used_bytes)

    def study_dir(self, study_uid: str) -> Path:
        return self.root / check_uid(study_uid)

    def write(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes, *, calling_ae: str | None = None,
              called_ae: str | None = None) -> Path:
        """Store one encoded instance; raise OSError (SpoolFullError included) if it is not safely on disk.

        With ``calling_ae``, the first sender of a study becomes its origin, and an instance of it from any other
        AE is refused with ForeignSenderError before anything is written.
        """
        target = self.study_dir(study_uid) / check_uid(series_uid) / f"{check_uid(sop_uid)}.dcm"
        with self._lock:
            previous = target.stat().st_size if target.exists() else 0
            needed = len(data) - previous
            if self.used_bytes + needed > self.max_bytes and self._clock() - self._counted_at >= RECOUNT_SECONDS:
                self._on_disk, self._counted_at = self._disk_bytes(), self._clock()
            if self.used_bytes + needed > self.max_bytes:
                raise SpoolFullError(f"spool limit of {self.max_bytes} bytes reached")
            self._in_flight += needed  # reserved now, counted as on disk (or released) below
        try:
            if calling_ae is not None:  # after the size check: a refused instance claims no study
                self._claim(study_uid, calling_ae.strip(), (called_ae or "").strip())
            _write_atomically(target, data)
        except BaseException:
            with self._lock:
                self._in_flight -= needed
            raise
        with self._lock:
            self._in_flight -= needed
            self._on_disk += needed
        return target

    def _claim(self, study_uid: str, calling_ae: str, called_ae: str) -> None:
        """Make ``calling_ae`` the study's origin if it has none; refuse it if another AE is."""
        with self._origin_lock:
            origin = self.origin(study_uid)
            if origin is None:
                self._write_origin(study_uid, StudyOrigin(calling_ae_title=calling_ae, called_ae_title=called_ae))
            elif origin.calling_ae_title != calling_ae:
                raise ForeignSenderError(f"study {check_uid(study_uid)} was sent by another peer")

    def record_origin(self, study_uid: str, origin: StudyOrigin) -> StudyOrigin:
        """Keep who sent the study with it, until the study is removed; return the origin now recorded.

        The first sender's stays: another AE's origin never replaces it (the same AE may complete it, e.g.
        with the called AE title).
        """
        with self._origin_lock:
            recorded = self.origin(study_uid)
            if recorded is not None and recorded.calling_ae_title != origin.calling_ae_title:
                log.warning("study %s: kept its origin %s, not %s", check_uid(study_uid), recorded.calling_ae_title,
                            origin.calling_ae_title)
                return recorded
            if recorded != origin:
                self._write_origin(study_uid, origin)
            return origin

    def _write_origin(self, study_uid: str, origin: StudyOrigin) -> None:
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

    def studies(self) -> list[SpooledStudy]:
        """Every study directory (with instances or only an origin), oldest first."""
        found = []
        for directory in self.root.iterdir():
            if not directory.is_dir() or not _UID.fullmatch(directory.name):
                continue
            files = _stats(directory.rglob("*"))
            found.append(SpooledStudy(directory.name, sum(f.st_size for f in files),
                                      max((f.st_mtime for f in files), default=directory.stat().st_mtime)))
        return sorted(found, key=lambda study: study.modified)

    def remove_study(self, study_uid: str) -> int:
        """Delete the study (its origin too); return the bytes of instances freed."""
        directory = self.study_dir(study_uid)
        freed = sum(f.st_size for f in _stats(directory.rglob("*.dcm")))
        shutil.rmtree(directory, ignore_errors=True)
        with self._lock:
            self._on_disk = max(0, self._on_disk - freed)
        return freed

    def _disk_bytes(self) -> int:
        return sum(f.st_size for f in _stats(self.root.rglob("*.dcm")))


def _stats(paths: Iterable[Path]) -> list[os.stat_result]:
    """The stats of the regular files among ``paths``; one removed meanwhile (by another process) is skipped."""
    found = []
    for path in paths:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode):
            found.append(info)
    return found


def write_atomically(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Written, fsynced and renamed into place, then the rename made durable: a crash leaves the old file or
    the new one, never a part (the spool answers success only after this). The file is its owner's only (0600),
    and so is a directory this creates for it (0700): both hold patient data.

    A write that fails (a full disk, often first noticed by the final flush) takes its part file with it:
    boltons' ``atomic_save`` removes it only when the error comes from inside the ``with`` block.
    """
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    try:
        with atomic_save(str(target), part_file=part.name, file_perms=0o600) as stream:
            write(stream)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _write_atomically(target: Path, data: bytes) -> None:
    write_atomically(target, lambda stream: stream.write(data))


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
