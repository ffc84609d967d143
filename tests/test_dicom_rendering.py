"""Shared drawing: pixel-accurate wrapping, font fallback, and the one difference map the page and preview show."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageFont

from dicom_io import rendering
from dicom_io.rendering import (
    ELLIPSIS,
    MIN_DIFFERENCE_SCALE,
    difference_map,
    load_font,
    wrap_text,
)

LONG = "Pleuraerguss links größer, the left pleural effusion worsens " * 400 + "x" * 5000


@pytest.mark.parametrize("bold", [True, False])
def test_wrap_fits_the_width_and_ends_truncated_text_with_an_ellipsis(bold) -> None:
    font = load_font(22, bold=bold)
    lines = wrap_text(LONG, font, 500, 4)
    assert len(lines) == 4 and lines[-1].endswith(ELLIPSIS)
    assert all(font.getlength(line) <= 500 for line in lines)
    word = wrap_text("y" * 3000, font, 300, 3)
    assert len(word) == 3 and all(font.getlength(line) <= 300 for line in word)
    assert wrap_text("Pleuraerguss links größer", font, 1000, 2) == ["Pleuraerguss links größer"]
    assert wrap_text("a\x00b\nc", font, 1000, 2) == ["a b c"]  # control characters never reach the image


def test_without_dejavu_the_pillow_font_is_used(monkeypatch) -> None:
    truetype = ImageFont.truetype

    def without_files(font, *args, **kwargs):  # Pillow's own default font is in memory, not a file
        if isinstance(font, str):
            raise OSError("cannot open resource")
        return truetype(font, *args, **kwargs)

    monkeypatch.setattr(ImageFont, "truetype", without_files)
    rendering.load_font.cache_clear()
    try:
        font = load_font(17, bold=True)
        assert font.getname()[0] != "DejaVu Sans"
        assert all(font.getlength(line) <= 200 for line in wrap_text(LONG, font, 200, 3))
    finally:
        rendering.load_font.cache_clear()


def test_no_change_is_mid_scale_with_the_floor_as_scale() -> None:
    image = np.tile(np.linspace(0, 1, 50, dtype=np.float32), (40, 1))
    difference = difference_map(image, image)
    assert difference.scale == MIN_DIFFERENCE_SCALE
    assert np.all(difference.normalised == 0.5)
    assert np.all(np.abs(np.diff(difference.coloured().reshape(-1, 3), axis=0)) == 0)  # one flat colour


def test_small_changes_are_not_stretched_past_the_floor() -> None:
    prior = np.full((40, 50), 0.5, np.float32)
    difference = difference_map(prior, prior + 0.01)
    assert difference.scale == MIN_DIFFERENCE_SCALE
    assert np.allclose(difference.normalised, 0.5 + 0.5 * 0.01 / MIN_DIFFERENCE_SCALE)


def test_the_scale_is_the_995th_percentile_so_outliers_clip() -> None:
    prior = np.zeros((100, 100), np.float32)
    counterfactual = prior.copy()
    counterfactual[:50] = 0.2  # half the image brighter by 0.2 ...
    counterfactual[99, 99] = 1.0  # ... and one outlier
    difference = difference_map(prior, counterfactual)
    assert difference.scale == pytest.approx(0.2)
    assert difference.normalised[99, 99] == 1.0 and difference.normalised[0, 0] == pytest.approx(1.0)


def test_colours_brighter_red_and_darker_blue() -> None:
    prior = np.full((10, 20), 0.5, np.float32)
    counterfactual = prior.copy()
    counterfactual[:, :10] += 0.3
    counterfactual[:, 10:] -= 0.3
    red, blue = difference_map(prior, counterfactual).coloured()[0, [0, 19]].astype(int)
    assert red[0] - red[2] > 50 and blue[2] - blue[0] > 50
