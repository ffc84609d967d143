"""Findings simulated on real chest radiographs, graded 0..3 like the phantom's (:mod:`inference.data.phantom`).

A real film gives the model real anatomy, exposure and texture; only the finding is simulated, inside the
anatomy that :mod:`inference.data.anatomy` located on the clean film. Every effect is a per-pixel operation whose
inputs (the soft-tissue level, the fine-detail map, the noise field) come from the base film, so a change of one
finding alters pixels only where that finding acts: prior and follow-up are equal outside its edit mask, which
:func:`render_pair` asserts. Opacities blend towards the film's own soft-tissue level (ribs stay visible, faded),
a pneumothorax removes fine detail but not ribs, and both re-add as much noise as they took away, so edited areas
are not suspiciously clean. Shapes are drawn once per record from its seed and scaled by severity, so a worsening
pair shows the same effusion higher, not a different one. Render at the base's size (>= 512 px), then
downsample prior and follow-up identically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from inference.data.anatomy import ChestAnatomy, locate_anatomy, normalise, resize
from inference.data.findings import SITES, FindingSite
from inference.data.phantom import SIDES, Findings

EFFUSION_HEIGHT = (0.0, 0.12, 0.3, 0.5)  # meniscus height at the chest wall, fraction of the lung field's height
CARDIAC_GROWTH = (0.0, 0.05, 0.10, 0.16)  # added cardiothoracic ratio
PNEUMOTHORAX_RIM = (0.0, 0.02, 0.045, 0.08)  # rim width at the apex, fraction of the image side
CONSOLIDATION_RADIUS = (0.0, 0.045, 0.07, 0.1)
CONSOLIDATION_DENSITY = (0.0, 0.45, 0.62, 0.78)
OEDEMA_RADIUS = (0.0, 0.11, 0.15, 0.19)
OEDEMA_DENSITY = (0.0, 0.25, 0.4, 0.58)
SUPPORT_FLOOR = 0.004  # effect strengths below this are set to zero: supports are exact, not Gaussian tails


@dataclass(frozen=True)
class Base:
    """A real film prepared for simulation, everything at the render size."""

    image: np.ndarray
    """The film normalised by its robust percentiles, float32 in [0, 1]: one scale for prior and follow-up."""
    anatomy: ChestAnatomy
    lungs: dict[str, np.ndarray]
    soft: float
    """Brightness of soft tissue (the heart's median): what fluid, a larger heart and dense consolidation reach."""
    lung_level: float
    detail: np.ndarray
    """Fine detail (vessels, noise) finer than ribs: what a pneumothorax takes away."""
    noise: float
    """Pixel noise standard deviation, re-added where an effect flattened the film."""
    y: np.ndarray
    x: np.ndarray

    @property
    def size(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True)
class Effect:
    """One finding's per-pixel action: blend towards soft tissue, remove lung markings, add a pleural line."""

    opacity: np.ndarray | None = None
    lucency: np.ndarray | None = None
    line: np.ndarray | None = None

    @property
    def support(self) -> np.ndarray:
        maps = [m for m in (self.opacity, self.lucency, self.line) if m is not None]
        return np.logical_or.reduce([m > 0 for m in maps])


def prepare_base(image: np.ndarray, anatomy: ChestAnatomy | None = None) -> Base:
    """Normalise a square base film and measure what the effects need; locates the anatomy unless given
    (:class:`inference.data.anatomy.AnatomyError` if it cannot)."""
    film = normalise(np.asarray(image, dtype=np.float32))
    anatomy = anatomy or locate_anatomy(film)
    size = film.shape[0]
    lungs = {side: anatomy.lung_mask(side, size) for side in SIDES}
    either = lungs["left"] | lungs["right"]
    y, x = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    soft = _soft_tissue_level(film, lungs["left"], anatomy)
    highpass = film - ndimage.gaussian_filter(film, 1.0)
    noise = float(np.clip(1.4826 * np.median(np.abs(highpass[either])) / 0.87, 0.002, 0.03))
    detail = (film - ndimage.gaussian_filter(film, 0.006 * size)).astype(np.float32)
    return Base(image=film, anatomy=anatomy, lungs=lungs, soft=soft, lung_level=float(np.median(film[either])),
                detail=detail, noise=noise, y=y, x=x)


def _soft_tissue_level(film: np.ndarray, left_lung: np.ndarray, anatomy: ChestAnatomy) -> float:
    """The film's brightness of the heart just inside its left border (left ventricle, clear of the spine): the
    level that fluid, consolidated lung and a larger heart reach on this film."""
    size = film.shape[0]
    medial, _ = _row_edges(left_lung, 1)
    lung = anatomy.left
    rows = np.arange(int(size * (lung.apex + 0.6 * (lung.dome[1] - lung.apex))), int(size * lung.dome[1]))
    samples = [film[r, max(0, int((medial[r] - 0.05) * size)):max(1, int((medial[r] - 0.01) * size))] for r in rows]
    values = np.concatenate(samples) if samples else film.ravel()
    return float(np.median(values))


def _floor(strength: np.ndarray) -> np.ndarray:
    return np.where(strength >= SUPPORT_FLOOR, strength, 0.0).astype(np.float32)


def _smoothstep(value: np.ndarray) -> np.ndarray:
    t = np.clip(value, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _smooth_noise(size: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Band-limited texture in [-1, 1]: patchy density instead of a perfectly smooth stamp. Drawn at a quarter of
    the size and enlarged (it is smooth at that scale anyway): four times cheaper."""
    small = max(size // 4, 8)
    field = ndimage.gaussian_filter(rng.standard_normal((small, small)).astype(np.float32), scale * small)
    field = np.asarray(Image.fromarray(field, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    return field / (np.abs(field).max() + 1e-6)


def _soft_mask(mask: np.ndarray, grow: float, blur: float) -> np.ndarray:
    """A mask widened by ``grow`` and feathered by ``blur`` (fractions of the side), in [0, 1]."""
    size = mask.shape[0]
    radius = max(1, round(grow * size))
    grown = ndimage.binary_dilation(mask, iterations=radius) if grow > 0 else mask
    return ndimage.gaussian_filter(grown.astype(np.float32), max(blur * size, 0.5))


def _row_edges(mask: np.ndarray, outward: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image row, the lung's medial and lateral x (fractions), carried past its top and bottom rows."""
    size = mask.shape[0]
    rows = np.nonzero(mask.any(axis=1))[0]
    firsts = np.array([np.nonzero(mask[r])[0][0] for r in rows], dtype=np.float32)
    lasts = np.array([np.nonzero(mask[r])[0][-1] for r in rows], dtype=np.float32)
    medial, lateral = (firsts, lasts) if outward > 0 else (lasts, firsts)
    every = np.arange(size)
    return (np.interp(every, rows, medial) + 0.5) / size, (np.interp(every, rows, lateral) + 0.5) / size


def _lateral_fraction(base: Base, side: str) -> np.ndarray:
    """0 at the lung's medial edge, 1 at its lateral edge, row by row."""
    lung = base.anatomy.lung(side)
    medial, lateral = _row_edges(base.lungs[side], lung.outward)
    width = np.where(np.abs(lateral - medial) > 1e-3, lateral - medial, 1e-3)
    return ((base.x - medial[:, None]) / width[:, None]).astype(np.float32)


def effusion(base: Base, side: str, severity: int, rng: np.random.Generator) -> Effect:
    """Basal homogeneous opacity under a meniscus: the surface is higher at the chest wall than medially and rises
    with severity; density grows with depth and laterally; the dome and then the heart border fade into it."""
    lung = base.anatomy.lung(side)
    height, meniscus, density = rng.uniform(0.85, 1.15), rng.uniform(0.2, 0.35), rng.uniform(0.8, 0.9)
    field = lung.costophrenic[1] - lung.apex
    level = lung.costophrenic[1] - EFFUSION_HEIGHT[severity] * height * field
    lateral = np.clip(_lateral_fraction(base, side), 0.0, 1.2)
    surface = level + meniscus * max(EFFUSION_HEIGHT[severity], 0.1) * field * (1 - np.clip(lateral, 0, 1)) ** 2
    depth = np.maximum(base.y - surface, 0.0) / field
    strength = density * (1 - np.exp(-depth / 0.05)) * (0.8 + 0.2 * np.clip(lateral, 0, 1))
    region = _soft_mask(base.lungs[side], 0.025, 0.01)  # to the chest wall and dome (bright there: no change)
    return Effect(opacity=_floor(strength * region))


def _heart_border(base: Base, side: str, top: float, widest: float) -> np.ndarray:
    """The heart border beside one lung as a smooth curve x(y), a quadratic fitted to the lung's medial edge
    between ``top`` and ``widest``: the segmented edge wiggles, a heart border does not."""
    lung = base.anatomy.lung(side)
    medial, _ = _row_edges(base.lungs[side], lung.outward)
    rows = base.y[:, 0]
    fit = (rows >= top) & (rows <= widest) & base.lungs[side].any(axis=1)
    if fit.sum() < 3:
        return medial
    curve = np.polyval(np.polyfit(rows[fit], medial[fit], 2), np.minimum(rows, widest))
    return curve.astype(np.float32)


def cardiomegaly(base: Base, severity: int, rng: np.random.Generator) -> Effect:
    """A larger cardiac silhouette: the left heart border (image right) moves out, little at the top and most
    from the widest point down, and the apex rounds off lower; the right border moves a little. Lung inside the
    new border becomes heart-dense."""
    anatomy = base.anatomy
    growth = CARDIAC_GROWTH[severity] * rng.uniform(0.85, 1.15) * (anatomy.left.lateral - anatomy.right.lateral)
    share_left = rng.uniform(0.82, 0.92)
    rows = base.y[:, 0]
    added = np.zeros(base.x.shape, dtype=bool)
    for side, share in (("left", share_left), ("right", 1 - share_left)):
        lung = anatomy.lung(side)
        height = lung.dome[1] - lung.apex
        top, widest = lung.apex + 0.5 * height, lung.apex + rng.uniform(0.78, 0.86) * height
        bottom = lung.dome[1] + 0.02 + 0.4 * share * growth  # the apex moves down as well as out
        border = _heart_border(base, side, top, widest)
        rise = _smoothstep((rows - top) / max(widest - top, 1e-3))
        fall = np.sqrt(np.clip(1 - ((rows - widest) / max(bottom - widest, 1e-3)) ** 2, 0, 1))
        reach = share * growth * np.where(rows <= widest, rise, fall)
        inside = (base.x - border[:, None]) * lung.outward < reach[:, None]
        on_side = (base.x - anatomy.midline) * lung.outward > 0
        added |= inside & on_side & (reach[:, None] > 0)
    lungs = _soft_mask(base.lungs["left"] | base.lungs["right"], 0.01, 0.003)
    strength = 0.9 * ndimage.gaussian_filter(added.astype(np.float32), 0.004 * base.size) * lungs
    return Effect(opacity=_floor(strength))


def pneumothorax(base: Base, side: str, severity: int, rng: np.random.Generator) -> Effect:
    """Air between the chest wall and a thin visceral pleural line: no lung markings outside the line (ribs stay),
    a darker rim, widest at the apex and tapering down the lateral wall (upright film)."""
    lung = base.anatomy.lung(side)
    size = base.size
    mask = _soft_mask(base.lungs[side], 0.0, 0.015) > 0.5  # a smooth outline: the pleural line is a smooth curve
    medial, _ = _row_edges(mask, lung.outward)
    beyond_medial = (base.x - medial[:, None]) * lung.outward < 0
    rows = np.nonzero(mask.any(axis=1))[0]
    below = base.y > (rows[-1] + 0.5) / size
    # distance to the apical and lateral walls only: the medial side and the base are not walls here
    depth = ndimage.distance_transform_edt(mask | beyond_medial | below) / size
    along = np.clip((base.y - lung.apex) / max(lung.costophrenic[1] - lung.apex, 1e-3), 0, 1)
    width = PNEUMOTHORAX_RIM[severity] * rng.uniform(0.85, 1.15) * (1 - 0.6 * along)
    edge = 1.0 / size
    lucency = np.clip((width - depth) / edge, 0, 1) * mask
    line_width = max(0.0015, 1.0 / size)
    line = rng.uniform(0.06, 0.1) * np.exp(-(((depth - width) / line_width) ** 2)) * mask
    return Effect(lucency=_floor(lucency), line=_floor(line))


def consolidation(base: Base, zone: str, severity: int, rng: np.random.Generator) -> Effect:
    """Patchy airspace opacity with soft margins in one zone (upper/middle/lower third of a lung field), built
    from a few overlapping lobules; a right upper zone opacity stops sharply at the horizontal fissure."""
    side, level = zone.split("_")
    lung = base.anatomy.lung(side)
    mask = base.lungs[side]
    index = ("upper", "middle", "lower").index(level)
    top, bottom = lung.apex, lung.costophrenic[1]
    third = (bottom - top) / 3
    band = mask & (base.y >= top + index * third) & (base.y < top + (index + 1) * third)
    ys, xs = np.nonzero(band if band.any() else mask)
    cy, cx = (ys.mean() + 0.5) / base.size, (xs.mean() + 0.5) / base.size
    if level == "lower":
        cy += 0.15 * third  # towards the base, where lower-lobe disease sits against the dome
    if (side, level) == ("right", "middle"):
        cx -= lung.outward * 0.03  # medial: the middle lobe abuts the right heart border
    cx += rng.uniform(-0.02, 0.02)
    cy += rng.uniform(-0.15, 0.15) * third
    radius = CONSOLIDATION_RADIUS[severity] * rng.uniform(0.85, 1.15)
    potential = np.full(base.x.shape, -1.0, dtype=np.float32)
    reach = round(2.2 * CONSOLIDATION_RADIUS[3] * base.size)  # the largest extent: the same window at any grade
    window = (slice(max(round(cy * base.size) - reach, 0), round(cy * base.size) + reach),
              slice(max(round(cx * base.size) - reach, 0), round(cx * base.size) + reach))
    x, y = base.x[window], base.y[window]
    for _ in range(int(rng.integers(5, 9))):  # lobules spread across the zone: patchy, not a round mass
        dx, dy = rng.uniform(-1.1, 1.1) * radius, rng.uniform(-0.5, 0.5) * radius
        rx, ry = rng.uniform(0.4, 0.8, size=2) * radius
        angle = rng.uniform(0, np.pi)
        u = (x - cx - dx) * np.cos(angle) + (y - cy - dy) * np.sin(angle)
        v = -(x - cx - dx) * np.sin(angle) + (y - cy - dy) * np.cos(angle)
        potential[window] = np.maximum(potential[window], 1 - np.sqrt((u / rx) ** 2 + (v / ry) ** 2))
    outline = _smooth_noise(base.size, rng, 0.015)
    patches = _smooth_noise(base.size, rng, 0.006)
    shape = _smoothstep((potential + 0.4 * outline) / 0.4)
    density = CONSOLIDATION_DENSITY[severity] * rng.uniform(0.85, 1.15)
    strength = density * shape * (0.75 + 0.25 * patches) * _soft_mask(mask, 0.01, 0.006)
    if (side, level) == ("right", "upper"):
        strength = strength * (base.y < top + third + rng.uniform(-0.1, 0.1) * third)
    return Effect(opacity=_floor(strength))


def oedema(base: Base, severity: int, rng: np.random.Generator) -> Effect:
    """Bilateral perihilar haze (a bat's wing when severe) fading outwards, sparing the outer third of each lung;
    mottled, not a smooth stamp."""
    strength = np.zeros(base.x.shape, dtype=np.float32)
    mottle = 0.75 + 0.25 * _smooth_noise(base.size, rng, 0.01)
    for side in SIDES:
        lung = base.anatomy.lung(side)
        medial, lateral = _row_edges(base.lungs[side], lung.outward)
        height = lung.costophrenic[1] - lung.apex
        hilum_y = lung.apex + rng.uniform(0.42, 0.5) * height
        row = min(int(hilum_y * base.size), base.size - 1)
        hilum_x = medial[row] + 0.12 * (lateral[row] - medial[row])
        radius = OEDEMA_RADIUS[severity] * rng.uniform(0.9, 1.1)
        distance = ((base.x - hilum_x) / radius) ** 2 + ((base.y - hilum_y) / (1.4 * radius)) ** 2
        spare = np.clip((0.7 - _lateral_fraction(base, side)) / 0.15, 0, 1)
        haze = np.exp(-distance) * spare * _soft_mask(base.lungs[side], 0.01, 0.006)
        strength = np.maximum(strength, OEDEMA_DENSITY[severity] * rng.uniform(0.9, 1.1) * haze * mottle)
    return Effect(opacity=_floor(strength))


def site_effect(base: Base, site: FindingSite, severity: int, seed: int) -> Effect:
    """The effect of one finding at one severity. Its random shape depends on the seed and the site only, so the
    same record's prior and follow-up show the same finding at two sizes."""
    rng = np.random.default_rng([seed, SITES.index(site)])
    builders: dict[str, Callable[[], Effect]] = {
        "effusion": lambda: effusion(base, site.side or "", severity, rng),
        "cardiomegaly": lambda: cardiomegaly(base, severity, rng),
        "pneumothorax": lambda: pneumothorax(base, site.side or "", severity, rng),
        "consolidation": lambda: consolidation(base, site.zone or "", severity, rng),
        "oedema": lambda: oedema(base, severity, rng),
    }
    return builders[site.finding]()


def apply_effect(image: np.ndarray, base: Base, effect: Effect, noise: np.ndarray) -> np.ndarray:
    """Per pixel: blend up towards soft tissue (never darker), remove fine detail and darken, add the line, then
    re-add the share of the film's noise that blending or detail removal took away."""
    out = image.copy()
    kept = np.ones_like(image)
    if effect.opacity is not None:
        out += effect.opacity * np.maximum(base.soft - out, 0.0)
        kept *= 1 - effect.opacity
    if effect.lucency is not None:
        out -= effect.lucency * (base.detail + 0.2 * base.lung_level)
        kept *= 1 - effect.lucency
    if effect.line is not None:
        out += effect.line
    return out + base.noise * np.sqrt(np.clip(1 - kept**2, 0, 1)) * noise


def render(base: Base, findings: Findings, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The base film with ``findings`` at the render size, in [0, 1], and each present finding's support."""
    noise = np.random.default_rng([seed, 7919]).standard_normal(base.image.shape).astype(np.float32)
    image = base.image
    supports = {}
    for site in SITES:
        severity = site.severity(findings)
        if severity:
            effect = site_effect(base, site, severity, seed)
            image = apply_effect(image, base, effect, noise)
            supports[site.label] = effect.support
    return np.clip(image, 0.0, 1.0).astype(np.float32), supports


def render_pair(base: Base, prior: Findings, followup: Findings, site: FindingSite, seed: int,
                size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prior, follow-up, edit mask) at ``size``: rendered at the base's size, then area-downsampled identically.
    Findings other than ``site`` must be the same in both; the images are asserted equal outside the mask."""
    prior_image, prior_supports = render(base, prior, seed)
    follow_image, follow_supports = render(base, followup, seed)
    empty = np.zeros(base.image.shape, dtype=bool)
    changed = prior_supports.get(site.label, empty) | follow_supports.get(site.label, empty)
    mask = ndimage.binary_dilation(changed, iterations=1)
    assert np.array_equal(prior_image[~mask], follow_image[~mask]), "an edit leaked outside its mask"
    small_mask = resize(mask.astype(np.float32), size) > 0
    prior_small, follow_small = resize(prior_image, size), resize(follow_image, size)
    assert np.array_equal(prior_small[~small_mask], follow_small[~small_mask]), "downsampling mixed in the edit"
    return np.clip(prior_small, 0, 1), np.clip(follow_small, 0, 1), small_mask
