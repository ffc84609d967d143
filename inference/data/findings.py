"""The catalogue of findings a synthetic pair can change, and how each maps onto a phantom's severities."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.data.phantom import ZONE_NAMES, Findings

DIRECTIONS = ("develops", "worsens", "improves", "resolves", "unchanged")
MAX_SEVERITY = 3


@dataclass(frozen=True)
class FindingSite:
    """One finding at one place: e.g. (effusion, left) or (consolidation, right_lower)."""

    finding: str
    side: str | None = None
    zone: str | None = None

    @property
    def label(self) -> str:
        where = self.zone or self.side
        return f"{self.finding}:{where}" if where else self.finding

    def severity(self, findings: Findings) -> int:
        if self.finding == "consolidation":
            return findings.consolidation[ZONE_NAMES.index(self.zone)]
        return getattr(findings, self._field)

    def with_severity(self, findings: Findings, severity: int) -> Findings:
        if self.finding == "consolidation":
            zones = list(findings.consolidation)
            zones[ZONE_NAMES.index(self.zone)] = severity
            return dataclasses.replace(findings, consolidation=tuple(zones))
        changes: dict[str, Any] = {self._field: severity}  # one of Findings' int fields
        return dataclasses.replace(findings, **changes)

    @property
    def _field(self) -> str:
        return f"{self.finding}_{self.side}" if self.side else self.finding


SITES: tuple[FindingSite, ...] = (
    FindingSite("effusion", "left"), FindingSite("effusion", "right"),
    FindingSite("cardiomegaly"),
    FindingSite("pneumothorax", "left"), FindingSite("pneumothorax", "right"),
    *(FindingSite("consolidation", zone.split("_")[0], zone) for zone in ZONE_NAMES),
    FindingSite("oedema"),
)


FINDINGS = tuple(dict.fromkeys(site.finding for site in SITES))


def severities_for(direction: str, rng: np.random.Generator) -> tuple[int, int]:
    """(prior, follow-up) severities for a direction of change."""
    if direction == "develops":
        return 0, int(rng.integers(1, MAX_SEVERITY + 1))
    if direction == "resolves":
        return int(rng.integers(1, MAX_SEVERITY + 1)), 0
    if direction == "worsens":
        prior = int(rng.integers(1, MAX_SEVERITY))
        return prior, int(rng.integers(prior + 1, MAX_SEVERITY + 1))
    if direction == "improves":
        prior = int(rng.integers(2, MAX_SEVERITY + 1))
        return prior, int(rng.integers(1, prior))
    if direction == "unchanged":
        severity = int(rng.integers(1, MAX_SEVERITY + 1))
        return severity, severity
    raise ValueError(f"unknown direction {direction!r}")
