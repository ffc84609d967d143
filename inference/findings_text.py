"""Finding, location and direction read from a hypothesis or an interpretation.

The consistency check of every result (run time) and finding-level F1 (evaluation) read texts the same way,
with one vocabulary: the words of the synthetic interpretations (new / worsened / improved / resolved /
unchanged) and the ways a radiologist words a hypothesis ("develops", "worsening", "resolution of", "no change
in", ...). A text that names no finding or no direction yields nothing.
"""

from __future__ import annotations

import re
from typing import NamedTuple


def _words(pattern: str) -> re.Pattern[str]:
    """Whole words only: "new" is not in "renewed", "appears" not in "disappears"."""
    return re.compile(rf"\b(?:{pattern})\b")


FINDING_WORDS = (
    ("effusion", _words(r"(?:pleural )?effusions?")),
    ("pneumothorax", _words(r"pneumothora(?:x|ces)")),
    ("cardiomegaly", _words(r"cardiomegaly|cardiac silhouette|cardiac enlargement")),
    ("consolidation", _words(r"consolidat\w*|airspace opacit\w*")),
    ("oedema", _words(r"o?edema|perihilar haziness")),
)
DIRECTION_WORDS = (  # checked in order: "resolved" and "no longer" before "new", "unchanged" before the rest
    ("resolves", _words(r"resol(?:ves?|ved|ution)|no longer|clear(?:s|ed)|disappear\w*"
                        r"|(?:sharp|normal in size|chest wall) again")),
    ("unchanged", _words(r"unchanged|stable|no (?:interval )?change|remains? the same")),
    ("worsens", _words(r"worse\w*|increas\w*|enlarg(?:ed|es|ing)|progress\w*|deteriorat\w*|larger|bigger")),
    ("improves", _words(r"improv\w*|decreas\w*|reduc\w*|regress\w*|resolving|better|smaller")),  # resolving: not gone
    ("develops", _words(r"new|develop\w*|appear(?:s|ed|ing|ance)?|emerg\w*")),
)
DIRECTION_SENSE = {"develops": 1, "worsens": 1, "improves": -1, "resolves": -1, "unchanged": 0}
"""+1: more of the finding, -1: less, 0: the same."""

_ZONE = re.compile(r"\b(left|right) (upper|middle|mid|lower) (?:zone|lobe)s?\b")  # a lobe read as its zone
_SIDE = re.compile(r"\b(left|right)\b")


class FindingTuple(NamedTuple):
    finding: str
    location: str | None
    """A side, "left" or "right", or for consolidation a zone when named, "right_lower"; None when unnamed."""
    direction: str


def _first(table: tuple[tuple[str, re.Pattern[str]], ...], lowered: str, *, earliest: bool) -> str | None:
    hits = [(match.start(), name) for name, words in table if (match := words.search(lowered))]
    if not hits:
        return None
    return min(hits)[1] if earliest else hits[0][1]


def finding_of(text: str) -> str | None:
    """The finding the text names first."""
    return _first(FINDING_WORDS, text.lower(), earliest=True)


def direction_of(text: str) -> str | None:
    """The direction of change, by DIRECTION_WORDS' order: "no longer seen" is resolved whatever else the text says."""
    return _first(DIRECTION_WORDS, text.lower(), earliest=False)


def location_of(finding: str, text: str) -> str | None:
    """Where the text puts a finding that has a place: a side, or for consolidation a zone when one is named."""
    lowered = text.lower()
    if finding == "consolidation" and (zone := _ZONE.search(lowered)):
        level = "middle" if zone.group(2) == "mid" else zone.group(2)
        return f"{zone.group(1)}_{level}"
    if finding in ("effusion", "pneumothorax", "consolidation") and (side := _SIDE.search(lowered)):
        return side.group(1)
    return None


def extract(text: str) -> FindingTuple | None:
    """(finding, location, direction) of a hypothesis or an interpretation; None when it lacks either of the two."""
    finding, direction = finding_of(text), direction_of(text)
    if finding is None or direction is None:
        return None
    return FindingTuple(finding, location_of(finding, text), direction)
