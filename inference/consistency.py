"""Does a result agree with its hypothesis? A check of every counterfactual, text and image.

The interpretation must name the hypothesis' finding, place and direction (read with
:mod:`inference.findings_text`), and the image must change where that finding lives, the right way. Real
radiographs have no phantom anatomy to measure against, so the image check uses fractions of the image:
halves for the sides, thirds of the lung fields for the zones. Display convention: the patient's left is on
the image's right; bright (1) is dense.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from inference.composition import baseline
from inference.data.findings import FINDINGS, FindingSite
from inference.data.language import finding_phrase
from inference.findings_text import DIRECTION_SENSE, FindingTuple, extract, finding_of

if TYPE_CHECKING:
    from inference.pipeline import Counterfactual

SMOOTHING = 1 / 64  # Gaussian sigma, a fraction of the side: averages out noise and VQ blocks, not a finding
CHANGE_FLOOR = 0.03  # smoothed |change| below 3% of the grey range is noise (phantom noise: ~0.003 after smoothing)
MIN_AREA = 0.002  # a directional change must visibly change 0.2% of the image (one grade of a finding: 0.3-9%)
UNCHANGED_MAX_AREA = 0.005  # "unchanged" allows a quarter of a typical one-grade change (~2%), as evaluation does
SIDE_MIN = 0.6  # a sided finding: at least 60% of the change on the named side
BILATERAL_MIN = 0.2  # oedema: at least 20% of the change on each side
REGION_MIN = 0.6  # at least 60% of the change where the finding lives (side and zone)
GROWTH_MIN = 1 / 3  # two thirds of the change there go the hypothesised way (brighter or darker), a third at most not
LUNG_TOP, LUNG_BOTTOM = 0.14, 0.72  # the lung fields from apex to domes on a PA film; its thirds are the zones
PERIPHERY = 0.15  # a pneumothorax rim lies this far lateral of the midline (or in the upper zone), not medially

SIGN = {"effusion": 1, "consolidation": 1, "oedema": 1, "cardiomegaly": 1, "pneumothorax": -1}
"""How a finding changes the image as it worsens: opacities brighten, a pneumothorax darkens."""


def moves_as_hypothesised(direction: str, change: float, tolerance: float) -> bool:
    """Did a signed change (positive: more of the finding) go the hypothesised way?

    A directional change must pass ``tolerance`` in its sign; "unchanged" must stay within it. Evaluation
    (measured on the phantom's anatomy) and the run-time check (on fractions of the image) both judge by this.
    """
    sense = DIRECTION_SENSE[direction]
    return abs(change) <= tolerance if sense == 0 else sense * change > tolerance


@dataclass(frozen=True)
class ImageChange:
    """Where and how the image changed, as the check measured it."""

    changed_area: float
    """Share of the image whose smoothed change passes CHANGE_FLOOR."""
    on_side: float | None
    """Share of the change on the named side; for oedema, on the side with less of it; else None."""
    in_region: float | None
    """Share of the change where the finding lives (side and zone); None when the hypothesis names none."""
    growth: float | None
    """-1..1 there: +1 when all of the change goes the way the finding worsens (brighter; darker for a pneumothorax)."""


@dataclass(frozen=True)
class ConsistencyResult:
    consistent: bool | None
    """None: the hypothesis names no finding and direction the check knows, so it cannot be judged."""
    reason: str
    """One plain sentence for the radiologist."""
    hypothesis_finding: FindingTuple | None
    interpretation_finding: FindingTuple | None
    image: ImageChange
    """How the result is marked is the application's (``dicom_io.records.ConsistencyCheck``): one wording."""


def _site(named: FindingTuple) -> FindingSite:
    side, _, level = (named.location or "").partition("_")
    return FindingSite(named.finding, side or None, named.location if level else None)


def _phrase(site: FindingSite) -> str:
    """The finding as the dataset names it, also when the text leaves out its side or zone."""
    if site.finding == "consolidation" and not site.zone:
        return f"{site.side} consolidation" if site.side else "consolidation"
    if site.finding in ("effusion", "pneumothorax") and not site.side:
        return "pleural effusion" if site.finding == "effusion" else "pneumothorax"
    return finding_phrase(site)


def _a(site: FindingSite, adjective: str = "") -> str:
    """With an article where English wants one: 'a worsening left pleural effusion', but 'pulmonary oedema'."""
    phrase = f"{adjective} {_phrase(site)}".strip()
    if site.finding in ("oedema", "cardiomegaly", "consolidation"):
        return phrase
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _says(direction: str) -> str:
    return "is unchanged" if direction == "unchanged" else direction


def _text_disagreement(hypothesis: FindingTuple, interpretation: FindingTuple | None) -> str | None:
    """Why the interpretation does not say what the hypothesis asked: finding and place, then direction."""
    h_site = _site(hypothesis)
    if interpretation is None:
        return f"the interpretation does not say how the {_phrase(h_site)} changes"
    i_site = _site(interpretation)
    places_differ = any(a is not None and b is not None and a != b
                        for a, b in ((h_site.side, i_site.side), (h_site.zone, i_site.zone)))
    if hypothesis.finding != interpretation.finding or places_differ:
        return f"the interpretation describes {_a(i_site)}, the hypothesis {_a(h_site)}"
    if hypothesis.direction != interpretation.direction:
        return (f"the interpretation says the {_phrase(i_site)} {_says(interpretation.direction)}, "
                f"the hypothesis that it {_says(hypothesis.direction)}")
    return None


def _grid(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of every pixel centre as fractions of the image's height and width."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    return (ys + 0.5) / shape[0], (xs + 0.5) / shape[1]


def _half(x: np.ndarray, side: str) -> np.ndarray:
    """The patient's side: left on the image's right."""
    return x >= 0.5 if side == "left" else x < 0.5


def _third(y: np.ndarray, level: str) -> np.ndarray:
    """A zone's band of the lung fields: upper, middle or lower third (the outer two open-ended)."""
    step = (LUNG_BOTTOM - LUNG_TOP) / 3
    upper, lower = LUNG_TOP + step, LUNG_TOP + 2 * step
    return {"upper": y < upper, "middle": (y >= upper) & (y < lower), "lower": y >= lower}[level]


def _region(site: FindingSite, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Where the finding lives, on either side when none is named."""
    side = _half(x, site.side) if site.side else np.ones_like(x, dtype=bool)
    if site.finding == "effusion":  # basal: the lower half of the lung field, as a large effusion climbs
        return side & (y >= (LUNG_TOP + LUNG_BOTTOM) / 2)
    if site.finding == "pneumothorax":  # the rim along the apex and the lateral chest wall
        return side & ((np.abs(x - 0.5) >= PERIPHERY) | _third(y, "upper"))
    if site.finding == "consolidation":
        return side & _third(y, site.zone.split("_")[1]) if site.zone else side
    if site.finding == "cardiomegaly":  # lower-central, reaching further to the patient's left (image right)
        return (x >= 0.25) & (x <= 0.85) & (y >= 0.40)
    return (np.abs(x - 0.5) <= 0.3) & (y >= 0.25) & (y <= 0.75)  # oedema: perihilar, both sides


def _share(weight: np.ndarray, where: np.ndarray) -> float:
    total = float(weight.sum())
    return float(weight[where].sum()) / total if total else 0.0


def measure_change(prior: np.ndarray, counterfactual: np.ndarray, site: FindingSite | None) -> ImageChange:
    """Where the counterfactual differs from the prior, and whether the change in ``site``'s region is growth."""
    if prior.ndim != 2 or prior.shape != counterfactual.shape:
        raise ValueError(f"prior {prior.shape} and counterfactual {counterfactual.shape} must be one 2-D shape")
    delta = np.asarray(counterfactual, np.float32) - np.asarray(prior, np.float32)
    delta = ndimage.gaussian_filter(delta, sigma=max(SMOOTHING * max(delta.shape), 0.5))
    changed = np.abs(delta) > CHANGE_FLOOR
    weight = np.where(changed, np.abs(delta), 0.0)
    area = float(changed.mean())
    if site is None:
        return ImageChange(area, None, None, None)
    y, x = _grid(delta.shape)
    region = _region(site, y, x)
    in_region = float(weight[region].sum())
    growth = SIGN[site.finding] * float(delta[region & changed].sum()) / in_region if in_region else 0.0
    if site.side:
        on_side: float | None = _share(weight, _half(x, site.side))
    elif site.finding == "oedema":
        on_side = min(_share(weight, _half(x, "left")), _share(weight, _half(x, "right")))
    else:
        on_side = None
    return ImageChange(area, on_side, _share(weight, region), growth)


_WHERE = {  # (on a named side, on either)
    "effusion": ("at the {side} base", "at the lung bases"),
    "pneumothorax": ("along the {side} apex and chest wall", "along the apices and chest walls"),
    "consolidation": ("in the {side} lung", "in the lungs"),
    "cardiomegaly": ("around the heart", "around the heart"),
    "oedema": ("around the hila", "around the hila"),
}
_GERUND = {"develops": "developing", "worsens": "worsening", "improves": "improving", "resolves": "resolving"}


def _where(site: FindingSite) -> str:
    if site.zone:
        return f"in the {site.zone.replace('_', ' ')} zone"
    sided, either = _WHERE[site.finding]
    return sided.format(side=site.side) if site.side else either


def _image_disagreement(site: FindingSite, direction: str, image: ImageChange) -> str | None:
    """Why the image change does not fit the hypothesis: its size, side, place, then brighter or darker."""
    named, area = _phrase(site), image.changed_area
    if DIRECTION_SENSE[direction] == 0:
        if moves_as_hypothesised(direction, area, UNCHANGED_MAX_AREA):
            return None
        return f"the image changes over {area:.1%} of its area, though the hypothesis says the {named} is unchanged"
    if area < MIN_AREA:
        return f"the image hardly changes ({area:.1%} of it), though the hypothesis says the {named} {direction}"
    if site.side and image.on_side is not None and image.on_side < SIDE_MIN:
        if image.on_side < 0.5:
            other = "right" if site.side == "left" else "left"
            return f"the image changes mostly on the {other} ({1 - image.on_side:.0%}), where {_a(site)} does not lie"
        return f"only {image.on_side:.0%} of the image change lies on the {site.side}, where {_a(site)} lies"
    if site.finding == "oedema" and image.on_side is not None and image.on_side < BILATERAL_MIN:
        return f"{1 - image.on_side:.0%} of the image change lies on one side, though pulmonary oedema is bilateral"
    where = _where(site)
    if image.in_region is not None and image.in_region < REGION_MIN:
        return f"only {image.in_region:.0%} of the image change lies {where}, where {_a(site)} lies"
    if image.growth is not None and not moves_as_hypothesised(direction, image.growth, GROWTH_MIN):
        brighter = SIGN[site.finding] * DIRECTION_SENSE[direction] > 0
        did = "darkens" if brighter else "brightens"
        if abs(image.growth) < GROWTH_MIN:
            did = "brightens and darkens alike"
        return (f"the image {did} {where}, though {_a(site, _GERUND[direction])} would make it "
                f"{'brighter' if brighter else 'darker'}")
    return None


def check_consistency(hypothesis: str, interpretation: str, prior: np.ndarray,
                      counterfactual: np.ndarray) -> ConsistencyResult:
    """Compare the interpretation with the hypothesis, then the image change with where the finding lives.

    ``prior`` is what the counterfactual is compared with, at its size: the prior itself under residual
    composition, its VQ reconstruction under decoded composition (see :func:`check_counterfactual`).
    """
    asked, told = extract(hypothesis), extract(interpretation)
    if asked is None:  # no finding, or a finding without a direction
        finding = finding_of(hypothesis)
        known = ", ".join(_phrase(FindingSite(name)) for name in FINDINGS)
        why = (f"the hypothesis names no finding the check knows ({known})" if finding is None
               else f"the hypothesis names {_a(FindingSite(finding))} but not how it changes")
        return ConsistencyResult(None, f"{why}, so the result cannot be checked", None, told,
                                 measure_change(prior, counterfactual, None))
    # the interpretation may place a finding that the hypothesis leaves unplaced: the image is checked there
    place = asked.location or (told.location if told and told.finding == asked.finding else None)
    site = _site(asked._replace(location=place))
    image = measure_change(prior, counterfactual, site)
    reason = _text_disagreement(asked, told) or _image_disagreement(site, asked.direction, image)
    if reason is not None:
        return ConsistencyResult(False, reason, asked, told, image)
    return ConsistencyResult(True, f"consistent: the {_phrase(site)} {_says(asked.direction)} in text and image",
                             asked, told, image)


def check_counterfactual(result: Counterfactual, prior: np.ndarray) -> ConsistencyResult:
    """:func:`check_consistency` of a pipeline result; ``prior`` at the model's size, as the pipeline got it."""
    reference = baseline(np.clip(prior, 0.0, 1.0), result.prior_reconstruction, result.composition)
    return check_consistency(result.hypothesis, result.interpretation, reference, result.image)
