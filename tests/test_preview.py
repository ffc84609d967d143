"""The preview PNG: three panels and the texts, a neutral difference for identical images."""

import numpy as np

from dicom_io.rendering import difference_map, line_height, load_font
from plugin.preview import MARGIN, PANEL_HEIGHT, render_preview


def image() -> np.ndarray:
    return np.tile(np.linspace(0.1, 0.9, 80, dtype=np.float32), (100, 1))


def test_identical_images_give_a_neutral_difference_panel() -> None:
    preview = np.asarray(render_preview(image(), image(), hypothesis="x", interpretation="y"))
    assert preview.shape[0] > PANEL_HEIGHT
    third_panel = preview[60:PANEL_HEIGHT, -200:-40].reshape(-1, 3).astype(int)
    assert np.abs(third_panel - third_panel.mean(axis=0)).max() < 8  # one flat colour: no change


def test_changes_show_up_in_colour() -> None:
    changed = image().copy()
    changed[50:, :] += 0.3
    preview = np.asarray(render_preview(image(), np.clip(changed, 0, 1), hypothesis="x", interpretation="y"))
    panel = preview[40:PANEL_HEIGHT, -300:-20].astype(int)
    assert (panel[..., 0] - panel[..., 2]).max() > 100  # red: brighter in the counterfactual


def test_long_text_wraps_within_the_width() -> None:
    text = "the left pleural effusion worsens " * 30
    preview = render_preview(image(), image(), hypothesis=text, interpretation=text)
    short = render_preview(image(), image(), hypothesis="x", interpretation="y")
    assert preview.width == short.width and preview.height > short.height + 100


def test_the_difference_panel_is_the_shared_difference_map_against_the_baseline() -> None:
    prior = np.tile(np.linspace(0.1, 0.9, PANEL_HEIGHT, dtype=np.float32)[:, None], (1, 100))  # no resampling
    counterfactual = np.clip(prior + np.linspace(-0.2, 0.2, 100, dtype=np.float32), 0, 1)
    baseline = np.clip(prior + 0.05, 0, 1)
    preview = np.asarray(render_preview(prior, counterfactual, baseline=baseline, hypothesis="x", interpretation="y"))
    top = MARGIN + line_height(load_font(20))
    panel = preview[top:top + PANEL_HEIGHT, MARGIN + 2 * (100 + MARGIN):][:, :100]
    assert np.array_equal(panel, difference_map(baseline, counterfactual).coloured())
