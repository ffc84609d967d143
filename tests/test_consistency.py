"""The consistency check of every result: hypothesis against interpretation and image, on phantom renders."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from inference.composition import Composition
from inference.consistency import (
    UNCHANGED_MAX_AREA,
    check_consistency,
    check_counterfactual,
    measure_change,
    moves_as_hypothesised,
)
from inference.data.findings import DIRECTIONS, SITES, FindingSite, severities_for
from inference.data.language import HYPOTHESES, hypothesis_text, interpretation_text
from inference.data.phantom import Findings, render_chest, sample_anatomy
from inference.findings_text import DIRECTION_SENSE, FindingTuple, extract

SIZE = 128  # the demo model's image size
LEFT_EFFUSION = FindingSite("effusion", "left")
WORSENED_LEFT = "The left basal opacity has increased: the left pleural effusion has worsened from small to moderate."


def pair(site: FindingSite, before: int, after: int, patient: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Prior and follow-up of one phantom patient that differ only in ``site``'s severity."""
    anatomy = sample_anatomy(np.random.default_rng([patient, 1]))
    return tuple(render_chest(anatomy, site.with_severity(Findings(), severity), SIZE, np.random.default_rng(patient))
                 for severity in (before, after))  # type: ignore[return-value]


def location(site: FindingSite) -> str | None:
    return site.zone if site.finding == "consolidation" else site.side


def test_the_vocabulary_covers_the_directions() -> None:
    assert set(DIRECTION_SENSE) == set(DIRECTIONS)


def test_every_dataset_hypothesis_template_is_read() -> None:
    rng = np.random.default_rng(0)
    for site, direction in itertools.product(SITES, DIRECTIONS):
        for _ in range(3 * len(HYPOTHESES[direction])):
            before, after = severities_for(direction, rng)
            text = hypothesis_text(site, direction, before, after, rng)
            assert extract(text) == FindingTuple(site.finding, location(site), direction), text


@pytest.mark.parametrize(("text", "expected"), [
    ("the left pleural effusion worsens", ("effusion", "left", "worsens")),
    ("worsening right pneumothorax", ("pneumothorax", "right", "worsens")),
    ("new consolidation right lower zone", ("consolidation", "right_lower", "develops")),
    ("resolving left effusion", ("effusion", "left", "improves")),  # resolving: not gone yet
    ("Stable cardiomegaly.", ("cardiomegaly", None, "unchanged")),
    ("the pulmonary edema clears", ("oedema", None, "resolves")),
    ("right consolidation develops", ("consolidation", "right", "develops")),
    ("heart getting bigger", None),
])
def test_hypotheses_as_radiologists_type_them(text: str, expected: tuple | None) -> None:
    assert extract(text) == (FindingTuple(*expected) if expected else None)


@pytest.mark.parametrize(("site", "direction"), list(itertools.product(SITES, DIRECTIONS)),
                         ids=lambda v: v.label if isinstance(v, FindingSite) else v)
def test_a_faithful_result_is_consistent(site: FindingSite, direction: str) -> None:
    rng = np.random.default_rng([SITES.index(site), DIRECTIONS.index(direction)])
    before, after = severities_for(direction, rng)
    prior, follow = pair(site, before, after, patient=SITES.index(site))
    hypothesis = hypothesis_text(site, direction, before, after, rng)

    result = check_consistency(hypothesis, interpretation_text(site, direction, before, after), prior, follow)

    assert result.consistent is True, result.reason
    assert result.reason.startswith("consistent: ")
    assert result.hypothesis_finding == result.interpretation_finding == (site.finding, location(site), direction)
    if direction != "unchanged":
        assert result.image.in_region is not None and result.image.in_region > 0.75, result.image
        assert result.image.growth is not None and DIRECTION_SENSE[direction] * result.image.growth > 0.9


def test_reason_for_the_wrong_side_in_the_text() -> None:
    prior, follow = pair(LEFT_EFFUSION, 1, 2)
    result = check_consistency("The left pleural effusion worsens.", WORSENED_LEFT.replace("left", "right"),
                               prior, follow)
    assert result.consistent is False
    assert result.reason == ("the interpretation describes a right pleural effusion, "
                             "the hypothesis a left pleural effusion")


def test_reason_for_the_wrong_direction_in_the_text() -> None:
    prior, follow = pair(LEFT_EFFUSION, 1, 2)
    improved = WORSENED_LEFT.replace("increased", "decreased").replace("worsened", "improved")
    result = check_consistency("the left pleural effusion worsens", improved, prior, follow)
    assert result.consistent is False
    assert result.reason == "the interpretation says the left pleural effusion improves, the hypothesis that it worsens"


def test_reason_for_the_wrong_finding_in_the_text() -> None:
    prior, follow = pair(LEFT_EFFUSION, 1, 2)
    result = check_consistency("Worsening left pleural effusion.",
                               "The left peripheral lucency has increased: the left pneumothorax has worsened.",
                               prior, follow)
    assert result.consistent is False
    assert result.reason == "the interpretation describes a left pneumothorax, the hypothesis a left pleural effusion"


def test_an_interpretation_without_a_finding_is_inconsistent() -> None:
    prior, follow = pair(LEFT_EFFUSION, 1, 2)
    result = check_consistency("Worsening left pleural effusion.", "lungs", prior, follow)
    assert result.consistent is False and result.interpretation_finding is None
    assert result.reason == "the interpretation does not say how the left pleural effusion changes"


def test_reason_for_a_change_on_the_wrong_side_of_the_image() -> None:
    prior, follow = pair(FindingSite("effusion", "right"), 1, 2)  # the right effusion worsens, on the image's left
    result = check_consistency("The left pleural effusion worsens.", WORSENED_LEFT, prior, follow)
    assert result.consistent is False
    assert result.image.on_side is not None and result.image.on_side < 0.1
    assert result.reason.startswith("the image changes mostly on the right (")
    assert result.reason.endswith("), where a left pleural effusion does not lie")


def test_reason_for_a_change_in_the_wrong_zone() -> None:
    prior, follow = pair(FindingSite("consolidation", "right", "right_upper"), 0, 2)
    result = check_consistency("New consolidation right lower zone.",
                               "New patchy airspace opacity in the right lower zone, indicating a moderate "
                               "consolidation in the right lower zone.", prior, follow)
    assert result.consistent is False and result.image.on_side == pytest.approx(1.0)
    assert result.reason.startswith("only ") and "lies in the right lower zone" in result.reason


def test_reason_for_a_change_the_wrong_way() -> None:
    prior, follow = pair(LEFT_EFFUSION, 2, 1)  # the effusion improves in the image, the texts say it worsens
    result = check_consistency("The left pleural effusion worsens.", WORSENED_LEFT, prior, follow)
    assert result.consistent is False and result.image.growth == pytest.approx(-1.0)
    assert result.reason == ("the image darkens at the left base, though a worsening left pleural effusion "
                             "would make it brighter")
    # a pneumothorax darkens as it worsens: the same image change reads the other way round
    prior, follow = pair(FindingSite("pneumothorax", "right"), 1, 3)
    result = check_consistency("The right pneumothorax improves.", "The right pneumothorax has improved.",
                               prior, follow)
    assert result.consistent is False
    assert result.reason.endswith("though an improving right pneumothorax would make it brighter")


def test_reason_for_a_one_sided_oedema() -> None:
    prior, follow = pair(FindingSite("oedema"), 0, 3)
    follow[:, : SIZE // 2] = prior[:, : SIZE // 2]  # only the patient's left changes
    result = check_consistency("Pulmonary oedema develops.", "New perihilar haziness, indicating a severe pulmonary "
                               "oedema.", prior, follow)
    assert result.consistent is False and result.image.on_side == pytest.approx(0.0)
    assert result.reason.endswith("of the image change lies on one side, though pulmonary oedema is bilateral")


def test_unchanged_hypothesis_with_a_big_change() -> None:
    prior, follow = pair(LEFT_EFFUSION, 1, 3)
    result = check_consistency("No change in the left pleural effusion.",
                               "The left basal opacity is unchanged: stable small left pleural effusion.",
                               prior, follow)
    assert result.consistent is False and result.image.changed_area > 10 * UNCHANGED_MAX_AREA
    assert result.reason.startswith("the image changes over ")
    assert result.reason.endswith("of its area, though the hypothesis says the left pleural effusion is unchanged")


def test_a_directional_hypothesis_with_no_change() -> None:
    prior, _ = pair(LEFT_EFFUSION, 1, 1)
    result = check_consistency("The left pleural effusion worsens.", WORSENED_LEFT, prior, prior.copy())
    assert result.consistent is False and result.image.changed_area == 0.0
    assert result.reason.startswith("the image hardly changes")


@pytest.mark.parametrize(("hypothesis", "why"), [
    ("heart getting bigger", "the hypothesis names no finding the check knows"),
    ("left pleural effusion", "the hypothesis names a pleural effusion but not how it changes"),
])
def test_an_unreadable_hypothesis_cannot_be_judged(hypothesis: str, why: str) -> None:
    prior, follow = pair(LEFT_EFFUSION, 1, 2)
    result = check_consistency(hypothesis, WORSENED_LEFT, prior, follow)
    assert result.consistent is None and result.hypothesis_finding is None
    assert result.reason.startswith(why) and result.reason.endswith(", so the result cannot be checked")
    assert result.image.changed_area > 0


def test_an_unplaced_hypothesis_is_checked_where_the_interpretation_places_it() -> None:
    prior, follow = pair(FindingSite("effusion", "right"), 1, 2)
    wrong = check_consistency("The effusion worsens.", WORSENED_LEFT, prior, follow)
    assert wrong.consistent is False and "mostly on the right" in wrong.reason
    right = check_consistency("The effusion worsens.", WORSENED_LEFT.replace("left", "right"), prior, follow)
    assert right.consistent is True
    assert right.reason == "consistent: the right pleural effusion worsens in text and image"


def test_a_pipeline_result_is_checked_against_its_baseline() -> None:
    prior, follow = pair(LEFT_EFFUSION, 1, 2)
    offset = np.clip(prior + 0.2, 0, 1)  # a reconstruction far from the prior: only decoded composition uses it
    result = SimpleNamespace(hypothesis="The left pleural effusion worsens.", interpretation=WORSENED_LEFT,
                             image=follow, prior_reconstruction=offset, composition=Composition.RESIDUAL)
    assert check_counterfactual(result, prior).consistent is True  # type: ignore[arg-type]
    result.prior_reconstruction, result.composition = prior, Composition.DECODED
    assert check_counterfactual(result, offset).consistent is True  # type: ignore[arg-type]


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="one 2-D shape"):
        measure_change(np.zeros((8, 8)), np.zeros((8, 9)), None)


def test_one_rule_for_the_direction_of_a_change() -> None:
    assert moves_as_hypothesised("develops", 0.5, 0.3) and not moves_as_hypothesised("worsens", 0.2, 0.3)
    assert moves_as_hypothesised("resolves", -0.5, 0.3) and not moves_as_hypothesised("improves", 0.5, 0.3)
    assert moves_as_hypothesised("unchanged", -0.2, 0.3) and not moves_as_hypothesised("unchanged", 0.4, 0.3)
