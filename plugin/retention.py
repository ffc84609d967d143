"""Retention: the node keeps patient data only while a job needs it.

A spooled study goes once no job will read it again, a job's results once every delivery has
succeeded. What is left behind (a study nobody asked for, results no destination took) goes after
its retention period, and when the data disk passes its high-water mark the oldest of it goes at
once. A job whose study never arrives fails after its timeout. Job rows stay, for audit: they hold
UIDs and the request, never patient names or IDs. Every removal is logged, by UID only.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dicom_io.spool import Spool
from plugin.config import Settings
from plugin.jobs import NEEDS_STUDY, DeliveryState, JobState, JobStore, JobView

log = logging.getLogger(__name__)


class DiskUsage(Protocol):
    """What retention reads of :func:`shutil.disk_usage`."""

    @property
    def total(self) -> int: ...

    @property
    def free(self) -> int: ...


@dataclass(frozen=True)
class ResultsDir:
    """One job's results directory, and its job (None: a directory no job row knows)."""

    job_id: str
    path: Path
    modified: float
    job: JobView | None

    @property
    def delivered(self) -> bool:
        """Every delivery succeeded (a job without any delivery has delivered nothing)."""
        return self.job is not None and _delivered(self.job)

    @property
    def in_use(self) -> bool:
        """Being written: a job still generating (or about to)."""
        return self.job is not None and self.job.state in NEEDS_STUDY


def _delivered(job: JobView) -> bool:
    return job.state == JobState.DONE and bool(job.deliveries) and all(
        item.state == DeliveryState.DONE for item in job.deliveries)


class Retention:
    """Removes what the node no longer needs: as jobs end, and in :meth:`sweep`, periodically."""

    def __init__(self, config: Settings, store: JobStore, spool: Spool, results_dir: Path, *,
                 receiving: Callable[[str], bool] = lambda study_uid: False,
                 disk_usage: Callable[[Path], DiskUsage] = shutil.disk_usage,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.spool = spool
        self.results_dir = results_dir
        self.receiving = receiving
        """Whether the listener is receiving a study right now (it is in use then, jobs or not)."""
        self.disk_usage = disk_usage
        self.clock = clock

    # --- as jobs end ------------------------------------------------------------------------------

    def release_study(self, study_uid: str) -> bool:
        """Remove the study from the spool once no job will read it; True when it was removed."""
        if self.store.needs_study(study_uid) or self.receiving(study_uid):
            return False
        return self._remove_study(study_uid, "its jobs have ended")

    def release_results(self, job_id: str) -> bool:
        """Remove a job's results once every delivery has succeeded; True when they were removed."""
        job = self.store.get(job_id)
        if job is None or not _delivered(job):
            return False
        return self._remove_results(job_id, "delivered")

    # --- periodically -----------------------------------------------------------------------------

    def sweep(self) -> None:
        """One round: overdue requests, stale studies and results, then the disk's high-water mark."""
        self.fail_overdue_receiving()
        self.remove_stale_studies()
        self.remove_stale_results()
        self.relieve_disk()

    def fail_overdue_receiving(self) -> int:
        """Fail the jobs whose study has not arrived within the timeout; return how many."""
        minutes = self.config.receiving_timeout_minutes
        cutoff = dt.datetime.fromtimestamp(self.clock(), dt.UTC) - dt.timedelta(minutes=minutes)
        failed = 0
        for job in self.store.receiving_since(cutoff):
            if self.receiving(job.study_instance_uid) or self.spool.has_study(job.study_instance_uid):
                continue  # arriving right now, only slowly; or arrived, and its generation waits its turn
            reason = f"the study did not arrive within {minutes:g} minutes"
            if self.store.transition(job.id, JobState.FAILED, expect=[JobState.RECEIVING], reason=reason):
                failed += 1
                log.warning("job %s failed: %s", job.id, reason)
                self.release_study(job.study_instance_uid)  # whatever part of it did arrive
        return failed

    def remove_stale_studies(self) -> int:
        """Remove the spooled studies no job needs that received nothing within the retention period."""
        cutoff = self.clock() - self.config.spool_retention_hours * 3600
        needed = self.store.studies_needed()
        removed = 0
        for study in self.spool.studies():
            if study.modified >= cutoff:
                break  # oldest first: the rest are newer still
            if study.study_uid not in needed and not self.receiving(study.study_uid):
                removed += self._remove_study(
                    study.study_uid, f"unused for {self.config.spool_retention_hours:g} hours")
        return removed

    def remove_stale_results(self) -> int:
        """Remove results older than the retention period that were not (all) delivered, and any delivered ones
        left behind; return how many."""
        cutoff = self.clock() - self.config.results_retention_hours * 3600
        removed = 0
        for entry in self.results():
            if entry.in_use:
                continue
            if entry.delivered:
                removed += self._remove_results(entry.job_id, "delivered")
            elif entry.modified < cutoff:
                removed += self._remove_results(
                    entry.job_id, f"not delivered within {self.config.results_retention_hours:g} hours")
        return removed

    def relieve_disk(self) -> int:
        """Past the high-water mark, remove the oldest unused studies, then the oldest undelivered results,
        until the disk is below it again; return how many were removed."""
        if not self.over_high_water():
            return 0
        why = f"the data disk is over {self.config.disk_high_water:.0%} full"
        log.warning("%s: removing the oldest spooled studies and undelivered results", why)
        needed = self.store.studies_needed()
        removed = 0
        for study in self.spool.studies():
            if study.study_uid in needed or self.receiving(study.study_uid):
                continue
            removed += self._remove_study(study.study_uid, why)
            if not self.over_high_water():
                return removed
        for entry in self.results():
            if entry.in_use:
                continue
            removed += self._remove_results(entry.job_id, why)
            if not self.over_high_water():
                return removed
        if self.over_high_water():
            log.error("%s and nothing more can be removed: every study and result left is in use", why)
        return removed

    def over_high_water(self) -> bool:
        usage = self.disk_usage(self.config.data_dir)
        return usage.total > 0 and (usage.total - usage.free) / usage.total > self.config.disk_high_water

    # --- what is removed, and how -----------------------------------------------------------------

    def results(self) -> list[ResultsDir]:
        """Every job's results directory, oldest first."""
        if not self.results_dir.is_dir():
            return []
        found = []
        for path in self.results_dir.iterdir():
            try:
                modified = max([p.stat().st_mtime for p in path.iterdir()] + [path.stat().st_mtime])
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed meanwhile, or not a job's directory
            found.append(ResultsDir(path.name, path, modified, self.store.get(path.name)))
        return sorted(found, key=lambda entry: entry.modified)

    def _remove_study(self, study_uid: str, why: str) -> bool:
        try:
            if not self.spool.study_dir(study_uid).exists():
                return False
        except ValueError:  # not a UID, so never a spooled study
            return False
        freed = self.spool.remove_study(study_uid)
        log.info("removed study %s from the spool (%d bytes): %s", study_uid, freed, why)
        return True

    def _remove_results(self, job_id: str, why: str) -> bool:
        """Remove a job's results; its deliveries still pending fail, as there is nothing left to send."""
        path = self.results_dir / job_id
        if not path.is_dir():
            return False
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed the results of job %s: %s", job_id, why)
        if self.store.abandon_deliveries(job_id, f"the results were removed: {why}"):
            self.store.settle(job_id)
        return True
