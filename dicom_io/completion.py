"""When is a study complete? No DICOM sender says so: a quiet period, or the series a request named.

Peers decide the same way (mercure waits per series and per study, MONAI's gateway a few seconds);
the quiet period is configuration, and a request that names its series completes the study as
soon as they are all in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class StudyArrival:
    """What has arrived of one study since it was last complete."""

    study_uid: str
    called_ae_title: str
    calling_ae_title: str
    series: set[str] = field(default_factory=set)
    instances: int = 0
    last_seen: float = 0.0
    modalities: set[str] = field(default_factory=set)


class StudyTracker:
    """Collects arrivals and hands each study over once, when it is complete."""

    def __init__(self, quiet_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet_seconds = quiet_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._arrivals: dict[str, StudyArrival] = {}
        self._expected: dict[str, set[str]] = {}

    def record(self, study_uid: str, series_uid: str, modality: str, *, called: str, calling: str) -> None:
        with self._lock:
            arrival = self._arrivals.get(study_uid)
            if arrival is None:
                arrival = self._arrivals[study_uid] = StudyArrival(study_uid, called, calling)
            arrival.series.add(series_uid)
            arrival.modalities.add(modality)
            arrival.instances += 1
            arrival.last_seen = self._clock()

    def expect(self, study_uid: str, series_uids: set[str]) -> None:
        """Complete ``study_uid`` as soon as all of ``series_uids`` have arrived."""
        with self._lock:
            self._expected.setdefault(study_uid, set()).update(series_uids)

    def receiving(self, study_uid: str) -> bool:
        with self._lock:
            return study_uid in self._arrivals

    def complete(self) -> list[StudyArrival]:
        """Studies complete now; each is returned once and then forgotten."""
        now = self._clock()
        done = []
        with self._lock:
            for uid, arrival in list(self._arrivals.items()):
                expected = self._expected.get(uid)
                if (expected and expected <= arrival.series) or now - arrival.last_seen >= self.quiet_seconds:
                    done.append(self._arrivals.pop(uid))
                    self._expected.pop(uid, None)
        return done
