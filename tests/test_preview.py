"""The preview PNG: three panels and the texts, a neutral difference for identical images."""

import numpy as np

from dicom_io.records import ConsistencyCheck, InputCheck, ResultChecks
from dicom_io.rendering import difference_map, line_height, load_font
from plugin.preview import MARGIN, NOTICE_RED, PANEL_HEIGHT, render_preview
from tests.test_sr import FLAGGED, NORMAL


def image() -> np.ndarray:
    return np.tile(np.linspace(0.1, 0.9, 80, dtype=np.float32), (100, 1))


def test_identical_images_give_a_neutral_difference_panel() -> None:
    preview = np.asarray(render_preview(image(), image(), hypothesis="x", interpretation="y", checks=NORMAL))
    assert preview.shape[0] > PANEL_HEIGHT
    third_panel = preview[60:PANEL_HEIGHT, -200:-40].reshape(-1, 3).astype(int)
    assert np.abs(third_panel - third_panel.mean(axis=0)).max() < 8  # one flat colour: no change


def test_changes_show_up_in_colour() -> None:
    changed = image().copy()
    changed[50:, :] += 0.3
    preview = np.asarray(render_preview(image(), np.clip(changed, 0, 1), hypothesis="x", interpretation="y",
                                        checks=NORMAL))
    panel = preview[40:PANEL_HEIGHT, -300:-20].astype(int)
    assert (panel[..., 0] - panel[..., 2]).max() > 100  # red: brighter in the counterfactual


def test_long_text_wraps_within_the_width() -> None:
    text = "the left pleural effusion worsens " * 30
    preview = render_preview(image(), image(), hypothesis=text, interpretation=text, checks=NORMAL)
    short = render_preview(image(), image(), hypothesis="x", interpretation="y", checks=NORMAL)
    assert preview.width == short.width and preview.height > short.height + 100


def test_the_difference_panel_is_the_shared_difference_map_against_the_baseline() -> None:
    prior = np.tile(np.linspace(0.1, 0.9, PANEL_HEIGHT, dtype=np.float32)[:, None], (1, 100))  # no resampling
    counterfactual = np.clip(prior + np.linspace(-0.2, 0.2, 100, dtype=np.float32), 0, 1)
    baseline = np.clip(prior + 0.05, 0, 1)
    preview = np.asarray(render_preview(prior, counterfactual, baseline=baseline, hypothesis="x", interpretation="y",
                                        checks=NORMAL))
    top = MARGIN + line_height(load_font(20))
    panel = preview[top:top + PANEL_HEIGHT, MARGIN + 2 * (100 + MARGIN):][:, :100]
    assert np.array_equal(panel, difference_map(baseline, counterfactual).coloured())


def red_rows(preview: np.ndarray) -> np.ndarray:
    """Rows whose left margin, where no text reaches, is the notice red: the marking band."""
    margin = preview[:, : MARGIN // 2].astype(int)
    return np.flatnonzero((np.abs(margin - NOTICE_RED).max(axis=2) <= 2).all(axis=1))


def test_a_flagged_result_opens_with_a_red_band_and_a_normal_one_does_not() -> None:
    normal = np.asarray(render_preview(image(), image(), hypothesis="x", interpretation="y", checks=NORMAL))
    flagged = np.asarray(render_preview(image(), image(), hypothesis="x", interpretation="y", checks=FLAGGED))
    assert red_rows(normal).size == 0
    band = red_rows(flagged)
    assert band[0] == 0 and band.size == band[-1] + 1 > 2 * line_height(load_font(22, bold=True))  # two parts
    assert (flagged[: band[-1] + 1] == 255).all(axis=2).any()  # white lettering on it
    assert flagged.shape[1] == normal.shape[1] and flagged.shape[0] == normal.shape[0] + band.size


def test_the_checks_are_the_two_rows_under_the_texts() -> None:
    """Results that differ only in their checks differ only in the two rows after hypothesis and interpretation."""
    checks = ResultChecks(InputCheck(1.5, None), ConsistencyCheck(None, "no finding the check knows"))
    unchecked = np.asarray(render_preview(image(), image(), hypothesis="x", interpretation="y", checks=checks))
    normal = np.asarray(render_preview(image(), image(), hypothesis="x", interpretation="y", checks=NORMAL))
    body = line_height(load_font(18))
    top = 2 * MARGIN + line_height(load_font(20)) + PANEL_HEIGHT + 2 * body
    assert unchecked.shape == normal.shape
    assert np.array_equal(unchecked[:top], normal[:top]) and np.array_equal(unchecked[top + 2 * body:],
                                                                            normal[top + 2 * body:])
    assert not np.array_equal(unchecked[top:top + body], normal[top:top + body])  # input check
    assert not np.array_equal(unchecked[top + body:top + 2 * body], normal[top + body:top + 2 * body])  # consistency
