"""Where the lungs, heart, domes and midline are on a real frontal chest radiograph, on the CPU, without a model.

Simulated findings must sit in the right place on a real film (an effusion at the costophrenic angle, not in the
abdomen), and no segmentation model or labelled masks can be shipped, so this is classical image analysis at
256 px: robust percentiles against exposure differences, a local threshold (lungs are darker than their
surroundings at every height), a watershed that cuts the lungs from the air outside the body, and per-row edge
regularisation against leaks into the neck, the axilla and the gastric bubble. Films where this cannot find two
plausible lungs raise :class:`AnatomyError`; callers skip them. Always run it on the clean base film, never on
one with a simulated finding. Display convention: the patient's right lung is on the image's left. Coordinates
are fractions of the image side, (x, y) from the top left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import morphology, segmentation

from inference.data.phantom import SIDES, Anatomy

ANALYSIS_SIZE = 256
PERCENTILES = (0.5, 99.5)
AIR_LEVEL = 0.08  # below this (after normalisation) and connected to the border: outside the body


class AnatomyError(ValueError):
    """The film's anatomy could not be located; the message says which check failed."""


@dataclass(frozen=True)
class Lung:
    """One lung field at the analysis size. ``side`` is the patient's side."""

    side: str
    mask: np.ndarray
    apex: float
    """y of the top of the lung field."""
    dome: tuple[float, float]
    """(x, y) of the diaphragm at mid-hemithorax, under this lung."""
    costophrenic: tuple[float, float]
    """(x, y) of the lateral costophrenic angle: the lowest lateral point of the field."""
    lateral: float
    """x of the lung's outermost point (the inner chest wall)."""
    medial: float
    """x of the lung's innermost point."""

    @property
    def outward(self) -> int:
        return _outward(self.side)


@dataclass(frozen=True)
class ChestAnatomy:
    """The located anatomy of one film, in fractions of the image side (masks at ``size``)."""

    size: int
    midline: float
    right: Lung
    left: Lung
    heart: tuple[float, float, float, float]
    """(x0, y0, x1, y1): x0 the right heart border (image left), x1 the left border, y0 the top, y1 the base."""
    ctr: float
    """Cardiothoracic ratio: widest heart width over the widest inner thoracic width."""

    def lung(self, side: str) -> Lung:
        return self.left if side == "left" else self.right

    @property
    def heart_centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.heart
        return (x0 + x1) / 2, (y0 + y1) / 2

    def lung_mask(self, side: str, size: int) -> np.ndarray:
        """A lung's mask resampled to ``size`` (smooth edges, not blocks)."""
        return resample_mask(self.lung(side).mask, size)

    def as_phantom(self) -> Anatomy:
        """The procedural phantom's anatomy that best matches this film: its analytic measurement regions then
        land on the film's lungs and heart, so the phantom evaluation can score records made on real films."""
        right, left = self.right, self.left
        half_widths = [abs(lung.lateral - lung.medial) / 2 for lung in (right, left)]
        centres = [(lung.lateral + lung.medial) / 2 for lung in (right, left)]
        x0, y0, x1, y1 = self.heart
        return Anatomy(centre_x=self.midline, lung_offset=float(np.mean([abs(c - self.midline) for c in centres])),
                       lung_half_width=float(np.mean(half_widths)), apex_y=(right.apex + left.apex) / 2,
                       dome_right_y=right.dome[1], dome_left_y=left.dome[1], heart_ratio=self.ctr,
                       heart_height=(y1 - y0) / 2)


def _outward(side: str) -> int:
    """+1 where moving towards the image's right goes laterally (the patient's left lung), -1 for the right."""
    return 1 if side == "left" else -1


def normalise(image: np.ndarray) -> np.ndarray:
    """The film's robust percentiles to [0, 1], clipped: one exposure scale for every film. Findings are simulated
    on the normalised base, so prior and follow-up share it and an added opacity cannot shift it."""
    lo, hi = np.percentile(image, PERCENTILES)
    scaled = (image.astype(np.float32) - np.float32(lo)) / np.float32(max(float(hi - lo), 1e-6))
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Area-averaged (antialiased) resize of a float image to size x size."""
    if image.shape == (size, size):
        return image.astype(np.float32)
    pil = Image.fromarray(image.astype(np.float32), mode="F")
    return np.asarray(pil.resize((size, size), Image.Resampling.BOX), dtype=np.float32)


def resample_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A mask at another size with smooth edges (interpolated, then thresholded), not blocks."""
    if mask.shape == (size, size):
        return mask.copy()
    smooth = ndimage.gaussian_filter(mask.astype(np.float32), 0.5)
    pil = Image.fromarray(smooth, mode="F").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(pil) > 0.5


def locate_anatomy(image: np.ndarray) -> ChestAnatomy:
    """Lungs, heart, domes and midline of a frontal film (float or uint8, any square size)."""
    n = ANALYSIS_SIZE
    film = normalise(resize(np.asarray(image, dtype=np.float32), n))
    midline = _midline(ndimage.gaussian_filter(film, 0.004 * n))
    blurred = ndimage.gaussian_filter(film, 0.016 * n)  # ribs and vessels blurred away: lungs as smooth dark fields
    dark = _dark_regions(blurred)
    edges = ndimage.gaussian_filter1d(ndimage.gaussian_filter(film, 0.008 * n), 1.0, axis=1, order=1)
    lungs = _lungs(dark, edges, midline)
    _check_pair(lungs["right"], lungs["left"], midline)
    heart, ctr = _heart(lungs["right"], lungs["left"], n)
    if not (0.2 < ctr < 0.75 and heart[0] < midline / n < heart[2]):
        raise AnatomyError(f"implausible heart: CTR {ctr:.2f}, borders {heart[0]:.2f}-{heart[2]:.2f}")
    return ChestAnatomy(size=n, midline=midline / n, right=lungs["right"], left=lungs["left"], heart=heart, ctr=ctr)


def _midline(smooth: np.ndarray) -> float:
    """Column of the brightest vertical band (spine and mediastinum) near the centre, over the mid-chest rows."""
    n = smooth.shape[0]
    profile = ndimage.gaussian_filter1d(smooth[int(0.25 * n):int(0.65 * n)].mean(axis=0), 3)
    lo, hi = int(0.3 * n), int(0.7 * n)
    return float(lo + np.argmax(profile[lo:hi]))


def _dark_regions(smooth: np.ndarray) -> np.ndarray:
    """Pixels darker than their neighbourhood, minus the outside air: lungs (and gas) at any exposure gradient."""
    n = smooth.shape[0]
    local = ndimage.gaussian_filter(smooth, 0.15 * n, mode="nearest")
    air = smooth < AIR_LEVEL
    border = np.zeros_like(air)
    border[[0, -1], :] = border[:, [0, -1]] = True
    outside = ndimage.binary_propagation(border & air, mask=air)
    dark: np.ndarray = (smooth < local) & ~ndimage.binary_dilation(outside, iterations=2)
    return dark


def _lungs(dark: np.ndarray, edges: np.ndarray, midline: float) -> dict[str, Lung]:
    """Both lung fields. A lung is the thickest dark region on its side (the core: pixels far from anything
    bright); the dark area is then split between the two cores and the air along the borders at its narrowest
    necks (a watershed of the distance transform), so a lung keeps its extent but not the axilla, the gap beside
    the arm or the air above the shoulders."""
    n = dark.shape[0]
    markers = np.zeros(dark.shape, dtype=np.int32)
    band, corner = max(2, round(0.02 * n)), round(0.2 * n)
    markers[:, :band] = markers[:, -band:] = markers[-band:, :] = 1
    markers[:band, :corner] = markers[:band, -corner:] = 1  # the top only at the corners: apices may be cropped
    markers[~dark] = 0
    depth = ndimage.distance_transform_edt(dark)
    y, x = np.mgrid[0:n, 0:n]
    for value, side in enumerate(SIDES, start=2):
        zone = ((x - midline) * _outward(side) > 0.04 * n) & (y > 0.15 * n) & (y < 0.75 * n)
        deepest = float(depth[zone].max()) if zone.any() else 0.0
        if deepest < 0.03 * n:
            raise AnatomyError(f"no {side} lung: no thick dark region on the image's "
                               f"{'right' if side == 'left' else 'left'}")
        labels, _ = ndimage.label(zone & (depth > 0.5 * deepest))
        peak = np.unravel_index(np.argmax(np.where(zone, depth, 0)), depth.shape)
        markers[labels == labels[peak]] = value
    split = segmentation.watershed(-depth, markers, mask=dark)
    lungs = {}
    for value, side in enumerate(SIDES, start=2):
        mask = ndimage.binary_opening(split == value, morphology.disk(2))
        labels, count = ndimage.label(mask)
        if count > 1:  # the opening may leave crumbs: keep the largest piece
            mask = labels == np.argmax(np.bincount(labels[labels > 0]))
        if mask.sum() < 0.015 * n * n:
            raise AnatomyError(f"no {side} lung: its dark region is too small")
        lungs[side] = _describe(_regularise(ndimage.binary_fill_holes(mask), edges, side), side)
    return lungs


def _regularise(mask: np.ndarray, edges: np.ndarray, side: str) -> np.ndarray:
    """One run per row, edges smoothed along y and limited in how fast they move outwards (a lung's edges are
    smooth curves; leaks into the neck, the axilla or the gastric bubble jump), the lateral edge moved out to the
    inner chest wall (the thin lateral lung is brighter than the local threshold)."""
    n = mask.shape[0]
    rows = np.nonzero(mask.any(axis=1))[0]
    centre_x = np.nonzero(mask)[1].mean()
    starts, stops = np.empty(len(rows)), np.empty(len(rows))
    for i, y in enumerate(rows):
        runs, count = ndimage.label(mask[y])
        spans = [np.nonzero(runs == k)[0] for k in range(1, count + 1)]
        span = max(spans, key=lambda xs: len(xs) - 0.5 * np.abs(xs - centre_x).min())
        starts[i], stops[i] = span[0], span[-1]
    outward = _outward(side)
    lateral, medial = (starts, stops) if side == "right" else (stops, starts)
    lateral = _chest_wall(lateral, rows, edges, outward, round(0.06 * n))
    lateral = ndimage.gaussian_filter1d(ndimage.median_filter(lateral, 9, mode="nearest"), 3, mode="nearest")
    lower = rows >= rows[0] + 0.5 * (rows[-1] - rows[0])  # beside the heart: move out to its border as well
    medial[lower] = _chest_wall(medial[lower], rows[lower], edges, -outward, round(0.05 * n))
    medial = ndimage.median_filter(medial, 7, mode="nearest")
    middle, low = len(rows) // 2, int(0.6 * len(rows))
    lateral = _limit(_limit(lateral, middle, 0.8 * outward, +1), middle, 2.0 * outward, -1)
    medial = _limit(_limit(medial, low, -0.7 * outward, +1), middle, -2.0 * outward, -1)
    starts, stops = (lateral, medial) if side == "right" else (medial, lateral)
    out = np.zeros_like(mask)
    for y, a, b in zip(rows, starts, stops, strict=True):
        out[y, int(round(a)):int(round(b)) + 1] = True
    return out


def _chest_wall(edge: np.ndarray, rows: np.ndarray, edges: np.ndarray, direction: int, reach: int) -> np.ndarray:
    """Per row, the steepest dark-to-bright step within ``reach`` pixels from ``edge`` in ``direction`` (the inner
    chest wall outside the lateral edge, the heart border inside the medial one)."""
    n = edges.shape[1]
    moved = edge.copy()
    for i, y in enumerate(rows):
        x = int(edge[i])
        span = np.arange(x, np.clip(x + direction * reach, 0, n - 1), direction)
        if len(span) > 1:
            step = edges[y, span] * direction
            moved[i] = span[int(np.argmax(step))]
    return moved


def _limit(edge: np.ndarray, start: int, step: float, direction: int) -> np.ndarray:
    """Walk from ``start`` (down for direction +1, up for -1): the edge may move by at most ``step`` per row in
    the sign of ``step`` (outwards); inward moves are free."""
    edge = edge.copy()
    i = start + direction
    while 0 <= i < len(edge):
        previous = edge[i - direction]
        edge[i] = min(edge[i], previous + step) if step > 0 else max(edge[i], previous + step)
        i += direction
    return edge


def _describe(mask: np.ndarray, side: str) -> Lung:
    n = mask.shape[0]
    ys, xs = np.nonzero(mask)
    outward = _outward(side)
    lateral = xs.max() if outward > 0 else xs.min()
    medial = xs.min() if outward > 0 else xs.max()
    columns = np.nonzero(mask.any(axis=0))[0]
    bottoms = np.array([np.nonzero(mask[:, x])[0].max() for x in columns])
    width = len(columns)
    # the dome: the diaphragm at mid-hemithorax (median over those columns); the angle: lowest lateral point
    fraction = (columns - columns[0]) / max(width - 1, 1)
    from_medial = fraction if outward > 0 else 1 - fraction
    central = np.flatnonzero((from_medial > 0.35) & (from_medial < 0.65))  # mid-hemithorax, clear of the heart
    dome_i = central[np.argsort(bottoms[central])[len(central) // 2]]
    outer = from_medial > 0.6
    cp_candidates = np.flatnonzero(outer)
    cp_i = cp_candidates[np.argmax(bottoms[outer] + 0.15 * from_medial[outer] * width)]
    return Lung(side=side, mask=mask, apex=ys.min() / n, dome=(columns[dome_i] / n, bottoms[dome_i] / n),
                costophrenic=(columns[cp_i] / n, bottoms[cp_i] / n), lateral=lateral / n, medial=medial / n)


def _check_pair(right: Lung, left: Lung, midline: float) -> None:
    """Two lungs that look like a pair, or :class:`AnatomyError`."""
    n = right.mask.shape[0]
    areas = [float(lung.mask.mean()) for lung in (right, left)]
    heights = [lung.costophrenic[1] - lung.apex for lung in (right, left)]
    checks = {
        "lung too small or too large": all(0.03 < a < 0.3 for a in areas),
        "lungs of very different size": 0.35 < areas[1] / areas[0] < 2.2,
        "lung field too short": all(h > 0.3 for h in heights),
        "apices at very different heights": abs(right.apex - left.apex) < 0.12,
        "bases at very different heights": abs(right.costophrenic[1] - left.costophrenic[1]) < 0.15,
        "lung reaches the midline": right.medial < midline / n - 0.025 and left.medial > midline / n + 0.025,
        "dome out of place": all(0.45 < lung.dome[1] < 0.95 for lung in (right, left)),
        "domes at very different heights": abs(right.dome[1] - left.dome[1]) < 0.12,
        "apex too low (upper lung not found)": max(right.apex, left.apex) < 0.3,
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise AnatomyError("; ".join(failed))


def _heart(right: Lung, left: Lung, n: int) -> tuple[tuple[float, float, float, float], float]:
    """Heart borders from the lungs' medial edges between mid-lung height and a little above each dome (lower
    down the field is a thin lateral sliver, not a heart border); CTR = widest heart over widest inner thorax.
    Percentiles, not extremes, so that a few stray rows do not move a border."""
    top = int(n * (right.apex + left.apex) / 2)
    base = int(n * max(right.dome[1], left.dome[1]))
    start = top + (base - top) // 2
    margin = (base - top) // 20
    right_edges = [np.nonzero(right.mask[y])[0].max() for y in range(start, int(n * right.dome[1]) - margin)
                   if right.mask[y].any()]
    left_edges = [np.nonzero(left.mask[y])[0].min() for y in range(start, int(n * left.dome[1]) - margin)
                  if left.mask[y].any()]
    if len(right_edges) < 3 or len(left_edges) < 3:
        raise AnatomyError("no rows where the lungs border the heart")
    x0, x1 = np.percentile(right_edges, 5), np.percentile(left_edges, 95)  # each border's reach to its side
    thorax = n * (left.lateral - right.lateral)
    return (x0 / n, start / n, x1 / n, base / n), float((x1 - x0) / thorax)
