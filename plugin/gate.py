"""The input gate: refuse, before any generation, a prior the model cannot stand behind.

Two rules, each answered with one sentence that names the reason:
* the header: the body part must be the chest and the view frontal, or say nothing (configurable);
* the content: the model's own out-of-distribution score (``inference.ood``) must lie within the limit its
  checkpoint was calibrated to.
A research override lets a prior beyond the content limit through; the override and the score are recorded
in every output. Header rules have no override: a lateral or a knee is never what the request meant.
"""

from __future__ import annotations

from collections.abc import Collection

from dicom_io.reader import SourceGeometry, printable
from dicom_io.records import InputCheck
from inference.ood import PriorAssessment
from plugin.errors import InputRefused


def _normalised(value: str) -> str:
    return value.strip().upper().replace(" ", "_")


def check_header(geometry: SourceGeometry, *, body_parts: Collection[str], view_positions: Collection[str]) -> None:
    """Refuse a prior whose header names another body part or view than the configured ones (absent is fine)."""
    if geometry.body_part and _normalised(geometry.body_part) not in {_normalised(v) for v in body_parts}:
        raise InputRefused(f"the prior is an image of {printable(geometry.body_part)}, not of the chest: the model "
                           f"handles chest radiographs only (BodyPartExamined {', '.join(sorted(body_parts))})")
    if geometry.view_position and _normalised(geometry.view_position) not in {_normalised(v) for v in view_positions}:
        raise InputRefused(f"the prior is a {printable(geometry.view_position)} view: the model handles frontal "
                           f"chest radiographs only (ViewPosition {', '.join(sorted(view_positions))})")


def check_content(assessment: PriorAssessment, *, model_name: str, override: bool) -> InputCheck:
    """The content verdict to record; refuse a prior beyond the calibrated limit unless ``override`` is set."""
    if not assessment.within_limit and not override:
        raise InputRefused(f"{assessment.refusal(model_name)}; a research override can let it through, and is "
                           f"recorded in every output")
    return InputCheck(score=assessment.score, limit=assessment.limit,
                      overridden=override and not assessment.within_limit)
