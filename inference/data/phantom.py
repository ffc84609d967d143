"""Procedural PA chest radiograph phantoms with graded findings.

No real images can be bundled or downloaded, so the demo model learns from
these. The anatomy varies per synthetic patient; findings change only their
own region, so a follow-up rendered from the same anatomy and the same noise
seed differs from its prior only where the finding changed. Radiological
convention: the patient's right is on the image's left. Bright = dense.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

ZONE_NAMES = ("left_upper", "left_middle", "left_lower", "right_upper", "right_middle", "right_lower")
SIDES = ("left", "right")


@dataclass(frozen=True)
class Anatomy:
    """One synthetic patient. Lengths are fractions of the image side."""

    centre_x: float = 0.5
    lung_offset: float = 0.19
    lung_half_width: float = 0.13
    apex_y: float = 0.15
    dome_right_y: float = 0.70
    dome_left_y: float = 0.73
    heart_ratio: float = 0.45
    heart_height: float = 0.13
    mediastinum_half_width: float = 0.05
    rib_count: int = 9
    rib_slope: float = 0.9
    body_half_width: float = 0.46
    soft_tissue: float = 0.5
    lung_density: float = 0.2
    contrast: float = 1.0
    noise: float = 0.015
    texture_seed: int = 0
    consolidation_jitter: tuple[float, ...] = field(default=(0.0,) * 12)

    def lung_x(self, side: str) -> float:
        """Image x of a lung's centre: the patient's left lung is on the image's right."""
        return self.centre_x + (self.lung_offset if side == "left" else -self.lung_offset)

    def dome_y(self, side: str) -> float:
        return self.dome_left_y if side == "left" else self.dome_right_y


@dataclass(frozen=True)
class Findings:
    """Severities 0 (none) .. 3 (large / severe). Consolidation has one severity per zone (ZONE_NAMES)."""

    effusion_left: int = 0
    effusion_right: int = 0
    cardiomegaly: int = 0
    pneumothorax_left: int = 0
    pneumothorax_right: int = 0
    consolidation: tuple[int, ...] = (0,) * 6
    oedema: int = 0

    @classmethod
    def none(cls) -> Findings:
        return cls()


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A plausible adult PA chest, different for every draw."""
    u = rng.uniform
    return Anatomy(
        centre_x=u(0.48, 0.52), lung_offset=u(0.17, 0.21), lung_half_width=u(0.115, 0.145),
        apex_y=u(0.12, 0.18), dome_right_y=u(0.66, 0.72), dome_left_y=u(0.69, 0.76),
        heart_ratio=u(0.42, 0.47), heart_height=u(0.11, 0.14), mediastinum_half_width=u(0.04, 0.06),
        rib_count=int(rng.integers(8, 11)), rib_slope=u(0.7, 1.1), body_half_width=u(0.42, 0.49),
        soft_tissue=u(0.42, 0.56), lung_density=u(0.14, 0.24), contrast=u(0.9, 1.1), noise=u(0.008, 0.02),
        texture_seed=int(rng.integers(2**31)), consolidation_jitter=tuple(u(-1.0, 1.0, size=12)),
    )


class _Grid:
    """Normalised coordinates of a size x size image, and the anatomy's masks on it."""

    def __init__(self, anatomy: Anatomy, size: int) -> None:
        self.a, self.size = anatomy, size
        self.y, self.x = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size

    def lung(self, side: str) -> np.ndarray:
        a = self.a
        lx, dome = a.lung_x(side), a.dome_y(side)
        half_height = (dome + 0.06 - a.apex_y) / 2
        centre_y = a.apex_y + half_height
        lateral = (self.x - lx) * (1 if side == "left" else -1) > 0
        # boxier laterally and at the base, rounder at the apex, like a lung field
        exponent = np.where(lateral & (self.y > centre_y), 3.5, 2.2)
        inside = (np.abs((self.x - lx) / a.lung_half_width) ** exponent
                  + np.abs((self.y - centre_y) / half_height) ** 2.2)
        diaphragm = dome + 0.9 * (self.x - (lx - 0.02 * (1 if side == "left" else -1))) ** 2 * 4
        return (inside < 1.0) & (self.y < diaphragm)

    def heart(self, ratio: float) -> np.ndarray:
        a = self.a
        thorax = 2 * (a.lung_offset + a.lung_half_width)
        half_width = ratio * thorax / 2
        cx = a.centre_x + 0.3 * half_width
        cy = a.dome_left_y - a.heart_height * 1.05
        return ((self.x - cx) / half_width) ** 2 + ((self.y - cy) / a.heart_height) ** 2 < 1.0

    def zone(self, side: str, level: str) -> np.ndarray:
        lung = self.lung(side)
        a = self.a
        top, bottom = a.apex_y, a.dome_y(side)
        thirds = {"upper": (top, top + (bottom - top) / 3), "middle": (top + (bottom - top) / 3,
                  top + 2 * (bottom - top) / 3), "lower": (top + 2 * (bottom - top) / 3, bottom + 0.1)}[level]
        return lung & (self.y >= thirds[0]) & (self.y < thirds[1])

    def blur(self, image: np.ndarray, fraction: float) -> np.ndarray:
        return ndimage.gaussian_filter(image, sigma=max(fraction * self.size, 0.3))


def _smooth_noise(shape: tuple[int, int], seed: int, scale: float) -> np.ndarray:
    """Band-limited texture in [-1, 1], fixed by seed (lung markings belong to the patient, not the exposure)."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma=max(scale, 0.5))
    return (field / (np.abs(field).max() + 1e-6)).astype(np.float32)


def _anatomy_image(g: _Grid, findings: Findings) -> np.ndarray:
    a, x, y = g.a, g.x, g.y
    body = ((x - a.centre_x) / a.body_half_width) ** 2 + ((y - 0.62) / 0.62) ** 2 < 1.0
    image: np.ndarray = np.where(body, a.soft_tissue, 0.04).astype(np.float32)
    image += 0.2 * np.clip(y - a.dome_right_y, 0, 0.2) * body  # abdomen denser towards the bottom
    markings = _smooth_noise(image.shape, a.texture_seed, g.size / 90)
    lungs = np.zeros_like(image)
    for side in SIDES:
        lungs = np.maximum(lungs, g.lung(side).astype(np.float32))
    lungs = g.blur(lungs, 0.006)
    lung_level = a.lung_density + 0.05 * markings
    image = image * (1 - lungs) + lung_level * lungs
    mediastinum = (np.abs(x - a.centre_x) < a.mediastinum_half_width * (0.7 + 0.6 * np.clip(y - 0.1, 0, 0.5))) & (
        y > 0.08) & (y < a.dome_left_y)
    ratio = a.heart_ratio + 0.065 * findings.cardiomegaly
    dense = g.blur((mediastinum | g.heart(ratio)).astype(np.float32), 0.004)
    image = image * (1 - dense) + 0.68 * dense
    spine = g.blur((np.abs(x - a.centre_x) < 0.03).astype(np.float32) * body, 0.003)
    image += 0.04 * spine
    ribs = np.zeros_like(image)
    spacing = (a.dome_left_y - a.apex_y) / a.rib_count
    for i in range(a.rib_count):
        for side in SIDES:
            sign = 1 if side == "left" else -1
            lateral = (x - a.centre_x) * sign
            centre = a.apex_y + (i + 0.3) * spacing + a.rib_slope * 0.35 * lateral ** 2 - 0.04 * lateral
            ribs = np.maximum(ribs, ((np.abs(y - centre) < 0.009) & (lateral > 0.02) & (lateral < 0.36)))
    image += 0.09 * g.blur(ribs.astype(np.float32), 0.002) * body
    for side in SIDES:
        sign = 1 if side == "left" else -1
        lateral = (x - a.centre_x) * sign
        clavicle = (np.abs(y - (0.16 - 0.12 * (lateral - 0.05))) < 0.011) & (lateral > 0.04) & (lateral < 0.3)
        image += 0.12 * g.blur(clavicle.astype(np.float32), 0.002)
    return image


def _effusion(g: _Grid, side: str, severity: int) -> np.ndarray:
    """Basal opacity with a meniscus, rising laterally; height grows with severity."""
    lung = g.lung(side)
    a = g.a
    lx, sign = a.lung_x(side), (1 if side == "left" else -1)
    height = (0.0, 0.06, 0.13, 0.22)[severity] * (a.dome_y(side) - a.apex_y) * 2.2
    lateral = np.clip((g.x - lx) * sign / a.lung_half_width, -1, 1.2)
    surface = a.dome_y(side) + 0.03 - height - 0.04 * np.clip(lateral, 0, None) ** 2
    fluid = lung & (g.y > surface)
    return g.blur(fluid.astype(np.float32), 0.004) * 0.55


def _pneumothorax(g: _Grid, side: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
    """(lucency, pleural line): a rim without markings along the apex and lateral wall."""
    lung = g.lung(side)
    a = g.a
    lx, sign = a.lung_x(side), (1 if side == "left" else -1)
    depth = ndimage.distance_transform_edt(lung) / g.size
    width = (0.0, 0.018, 0.035, 0.06)[severity]
    apical_lateral = ((g.x - lx) * sign > -0.02) | (g.y < a.apex_y + 0.12)
    rim = lung & apical_lateral & (depth < width) & (g.y < a.dome_y(side) - 0.05)
    line = lung & apical_lateral & (np.abs(depth - width) < 0.004) & (g.y < a.dome_y(side) - 0.05)
    return rim.astype(np.float32), g.blur(line.astype(np.float32), 0.0015)


def _consolidation(g: _Grid, zone_index: int, severity: int) -> np.ndarray:
    side, level = ZONE_NAMES[zone_index].split("_")
    zone = g.zone(side, level)
    if not zone.any():
        return np.zeros_like(g.x)
    ys, xs = np.nonzero(zone)
    jitter = g.a.consolidation_jitter
    cy = ys.mean() / g.size + 0.02 * jitter[2 * zone_index]
    cx = xs.mean() / g.size + 0.02 * jitter[2 * zone_index + 1]
    radius = (0.0, 0.045, 0.065, 0.09)[severity]
    blob = ((g.x - cx) ** 2 + (g.y - cy) ** 2 < radius ** 2) & g.lung(side)
    patches = 0.65 + 0.35 * _smooth_noise(g.x.shape, g.a.texture_seed + 7 + zone_index, g.size / 60)
    return g.blur(blob.astype(np.float32), 0.01) * patches * (0.0, 0.22, 0.32, 0.42)[severity]


def _oedema(g: _Grid, severity: int) -> np.ndarray:
    """Perihilar haze fading outwards, with septal lines at the bases when moderate or worse."""
    a = g.a
    haze = np.zeros_like(g.x)
    lines = np.zeros_like(g.x)
    for side in SIDES:
        lung = g.lung(side)
        hilum_x = a.centre_x + (0.08 if side == "left" else -0.08)
        hilum_y = (a.apex_y + a.dome_y(side)) / 2 + 0.03
        distance = np.sqrt((g.x - hilum_x) ** 2 + ((g.y - hilum_y) * 0.8) ** 2)
        haze += lung * np.exp(-((distance / 0.16) ** 2))
        if severity >= 2:
            sign = 1 if side == "left" else -1
            depth = ndimage.distance_transform_edt(lung) / g.size
            rows = (np.mod(g.y * 70, 1.0) < 0.25) & (depth < 0.03) & ((g.x - a.lung_x(side)) * sign > 0)
            lines += rows & (g.y > a.dome_y(side) - 0.15) & lung
    return (0.0, 0.1, 0.17, 0.26)[severity] * g.blur(haze, 0.01) + 0.08 * g.blur(lines.astype(np.float32), 0.001)


def _render_clean(anatomy: Anatomy, findings: Findings, size: int) -> np.ndarray:
    g = _Grid(anatomy, size)
    image = _anatomy_image(g, findings)
    for side in SIDES:
        severity = getattr(findings, f"pneumothorax_{side}")
        if severity:
            rim, line = _pneumothorax(g, side, severity)
            image = image * (1 - rim) + (anatomy.lung_density * 0.45) * rim + 0.25 * line
    for index, severity in enumerate(findings.consolidation):
        if severity:
            image += _consolidation(g, index, severity)
    if findings.oedema:
        image += _oedema(g, findings.oedema)
    for side in SIDES:
        severity = getattr(findings, f"effusion_{side}")
        if severity:
            fluid = _effusion(g, side, severity)
            image = image * (1 - fluid / 0.55 * 0.9) + fluid / 0.55 * 0.9 * 0.72
    return image


def render_chest(anatomy: Anatomy, findings: Findings, size: int, rng: np.random.Generator) -> np.ndarray:
    """A PA chest radiograph, float32 [size, size] in [0, 1]; only the noise comes from ``rng``."""
    image = _render_clean(anatomy, findings, size)
    image = (image - 0.45) * anatomy.contrast + 0.45
    image = image + anatomy.noise * rng.standard_normal(image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def finding_mask(anatomy: Anatomy, findings_a: Findings, findings_b: Findings, size: int) -> np.ndarray:
    """Where two renderings of one patient may differ, dilated a little: the region a change 'touches'."""
    diff = np.abs(_render_clean(anatomy, findings_a, size) - _render_clean(anatomy, findings_b, size)) > 0.01
    return ndimage.binary_dilation(diff, iterations=max(1, size // 64))


def measurement_rois(anatomy: Anatomy, size: int) -> dict[str, np.ndarray]:
    """Regions whose mean intensity tracks each finding; all of them rise with severity."""
    g = _Grid(anatomy, size)
    rois: dict[str, np.ndarray] = {}
    for side in SIDES:
        lung = g.lung(side)
        rois[f"effusion_{side}"] = lung & (g.y > anatomy.apex_y + 0.4 * (anatomy.dome_y(side) - anatomy.apex_y))
        lx, sign = anatomy.lung_x(side), (1 if side == "left" else -1)
        depth = ndimage.distance_transform_edt(lung) / size
        rois[f"pneumothorax_{side}"] = lung & (depth < 0.05) & ((g.x - lx) * sign > -0.02) & (
            g.y < anatomy.dome_y(side) - 0.1)
    enlarged = g.heart(anatomy.heart_ratio + 0.2) & ~g.heart(anatomy.heart_ratio + 0.02)
    rois["cardiomegaly"] = enlarged & (g.y > anatomy.apex_y + 0.2)
    for name in ZONE_NAMES:
        side, level = name.split("_")
        rois[f"consolidation_{name}"] = g.zone(side, level)
    hila = np.zeros_like(g.x, dtype=bool)
    for side in SIDES:
        hilum_x = anatomy.centre_x + (0.12 if side == "left" else -0.12)
        hila |= g.lung(side) & (np.abs(g.x - hilum_x) < 0.06) & (np.abs(g.y - 0.42) < 0.1)
    rois["oedema"] = hila
    return rois


def measure_findings(image: np.ndarray, anatomy: Anatomy) -> dict[str, float]:
    """Analytic measurement of every finding on an image: higher means more of it.

    Pneumothorax makes its region darker, so its score is the negated mean.
    """
    scores = {}
    for name, roi in measurement_rois(anatomy, image.shape[0]).items():
        value = float(image[roi].mean()) if roi.any() else 0.0
        scores[name] = -value if name.startswith("pneumothorax") else value
    return scores
