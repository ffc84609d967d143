"""Drawing shared by the report page and the preview: fonts, text wrapped in pixels, and the difference map.

One difference map for both, so the report page and the preview can never disagree on how strong a change looks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from matplotlib import colormaps
from PIL import ImageFont

from dicom_io.output_common import quantize

log = logging.getLogger(__name__)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

MIN_DIFFERENCE_SCALE = 0.05
"""Floor of the difference display range, so quantisation noise is not stretched to full black and white."""
DIFFERENCE_PERCENTILE = 99.5
"""The display range ends at this percentile of |difference|: the strongest changes near-saturate, outliers clip."""
DIFFERENCE_COLOURMAP = "RdBu_r"
"""Diverging: blue = darker in the counterfactual, red = brighter, white = no change."""
ELLIPSIS = "\u2026"


@lru_cache(maxsize=32)
def load_font(size: int, *, bold: bool = False) -> Font:
    """DejaVu Sans at ``size`` pixels, or Pillow's built-in font where DejaVu is not installed."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        log.debug("%s not found, using Pillow's default font", name)
        return ImageFont.load_default(size=size)


def line_height(font: Font) -> int:
    return round(getattr(font, "size", 12) * 1.35)


def wrap_text(text: str, font: Font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; overlong words are split, and text past ``max_lines`` ends in an ellipsis.

    Measured in pixels with the real font, so wide glyphs and non-ASCII text cannot overflow the image.
    """
    words = "".join(c if c.isprintable() else " " for c in text).split()
    lines: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while font.getlength(word) > width and len(lines) <= max_lines:
            cut = _longest_fitting_prefix(word, font, width)
            lines.append(word[:cut])
            word = word[cut:]
        current = word
        if len(lines) > max_lines:
            break
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _with_ellipsis(lines[-1], font, width)
    return lines or [""]


def _longest_fitting_prefix(word: str, font: Font, width: int) -> int:
    low, high = 1, len(word)
    while low < high:
        middle = (low + high + 1) // 2
        if font.getlength(word[:middle]) <= width:
            low = middle
        else:
            high = middle - 1
    return low


def _with_ellipsis(line: str, font: Font, width: int) -> str:
    while line and font.getlength(line + ELLIPSIS) > width:
        line = line[:-1]
    return line.rstrip() + ELLIPSIS


@dataclass(frozen=True)
class DifferenceMap:
    """counterfactual - prior for display."""

    normalised: np.ndarray
    """In [0, 1]: 0.5 is no change, 1 is +``scale`` or more, 0 is -``scale`` or less."""
    scale: float
    """The difference (in [0, 1] image units) shown at full strength."""

    def coloured(self) -> np.ndarray:
        """8-bit RGB on the diverging colour map."""
        return quantize(colormaps[DIFFERENCE_COLOURMAP](self.normalised)[..., :3])


def difference_map(prior: np.ndarray, counterfactual: np.ndarray) -> DifferenceMap:
    """The signed difference, stretched so the strongest changes near-saturate but noise is not amplified."""
    diff = counterfactual - prior
    scale = max(float(np.percentile(np.abs(diff), DIFFERENCE_PERCENTILE)), MIN_DIFFERENCE_SCALE)
    return DifferenceMap(np.clip(0.5 + 0.5 * diff / scale, 0.0, 1.0), scale)
