"""Finding, location and direction read back from an interpretation text, for finding-level F1.

It understands the vocabulary the synthetic interpretations use; an
interpretation that names no finding or no direction yields nothing.
"""

from __future__ import annotations

import re
from typing import NamedTuple

FINDING_WORDS = (
    ("effusion", ("pleural effusion", "effusion")),
    ("pneumothorax", ("pneumothorax",)),
    ("cardiomegaly", ("cardiomegaly", "cardiac silhouette")),
    ("consolidation", ("consolidation", "airspace opacity")),
    ("oedema", ("oedema", "edema", "perihilar haziness")),
)
DIRECTION_WORDS = (  # checked in order: "no longer" before "new", "worsened" before "increased"
    ("resolves", ("resolved", "no longer", "normal in size again", "sharp again", "again")),
    ("unchanged", ("unchanged", "stable", "no change")),
    ("worsens", ("worsened", "increased", "enlarged")),
    ("improves", ("improved", "decreased", "reduced")),
    ("develops", ("new ", "developed")),
)
_ZONE = re.compile(r"\b(left|right) (upper|middle|lower) zone\b")
_SIDE = re.compile(r"\b(left|right)\b")


class FindingTuple(NamedTuple):
    finding: str
    location: str | None
    direction: str


def extract(text: str) -> FindingTuple | None:
    lowered = f" {text.lower()} "
    finding = next((name for name, words in FINDING_WORDS if any(w in lowered for w in words)), None)
    direction = next((name for name, words in DIRECTION_WORDS if any(w in lowered for w in words)), None)
    if finding is None or direction is None:
        return None
    location = None
    if finding == "consolidation":
        zone = _ZONE.search(lowered)
        location = f"{zone.group(1)}_{zone.group(2)}" if zone else None
    elif finding in ("effusion", "pneumothorax"):
        side = _SIDE.search(lowered)
        location = side.group(1) if side else None
    return FindingTuple(finding, location, direction)
