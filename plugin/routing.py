"""Routing rules: for a PACS that can only push, studies matching a rule get a preset hypothesis.

A rule matches when every condition it sets holds: the AE title the study was sent to, and a
DICOM attribute of the chosen prior (by keyword) whose value matches a shell-style pattern,
e.g. BodyPartExamined=CHEST. The prior's header is read only when a rule asks for an attribute.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import pydicom
from pydantic import BaseModel, Field

from dicom_io.completion import StudyArrival


class RoutingRule(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    hypothesis: str = Field(min_length=1)
    called_ae_title: str | None = None
    attribute: str | None = None
    pattern: str = "*"

    def request_id(self, study_uid: str) -> str:
        """One job per rule and study, however often the study is pushed again."""
        return f"route:{self.name}:{study_uid}"

    @property
    def source(self) -> str:
        return f"route:{self.name}"


def matching_rules(rules: tuple[RoutingRule, ...], arrival: StudyArrival,
                   prior_header: Callable[[], pydicom.Dataset | None]) -> list[RoutingRule]:
    """The rules that match ``arrival``; ``prior_header`` gives the prior's header (None: no usable prior)."""
    header: list[pydicom.Dataset | None] = []  # read at most once, and only if a rule needs it

    def attribute(keyword: str) -> str | None:
        if not header:
            header.append(prior_header())
        return None if header[0] is None else str(header[0].get(keyword, ""))

    matched = []
    for rule in rules:
        if rule.called_ae_title and rule.called_ae_title != arrival.called_ae_title:
            continue
        if rule.attribute:
            value = attribute(rule.attribute)
            if value is None or not fnmatch.fnmatchcase(value, rule.pattern):
                continue
        matched.append(rule)
    return matched
