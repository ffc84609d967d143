"""The preview a person looks at first: prior, counterfactual and difference side by side, with the texts."""

from __future__ import annotations

import textwrap

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

PANEL_HEIGHT = 512
MARGIN = 16
NOTICE = "SYNTHETIC - NOT FOR DIAGNOSIS"


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _gray_panel(image: np.ndarray, height: int) -> Image.Image:
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).resize(
        (width, height), Image.LANCZOS).convert("RGB")


def _difference_panel(prior: np.ndarray, counterfactual: np.ndarray, height: int) -> tuple[Image.Image, float]:
    """Signed difference on a diverging map: blue = darker in the counterfactual, red = brighter."""
    diff = counterfactual - prior
    scale = max(float(np.percentile(np.abs(diff), 99.5)), 0.05)
    coloured = colormaps["RdBu_r"](np.clip(0.5 + 0.5 * diff / scale, 0, 1))[..., :3]
    panel = Image.fromarray(np.round(coloured * 255).astype(np.uint8))
    width = max(1, round(diff.shape[1] * height / diff.shape[0]))
    return panel.resize((width, height), Image.LANCZOS), scale


def render_preview(prior: np.ndarray, counterfactual: np.ndarray, *, hypothesis: str, interpretation: str,
                   baseline: np.ndarray | None = None, notice: str = NOTICE) -> Image.Image:
    """Three panels of equal height, titled, over a caption with the hypothesis, interpretation and notice.

    The difference is taken against ``baseline`` when given (see
    ``inference.composition.baseline``): for a decoded image, the prior as the
    model's tokenizer reproduces it, so that the map shows what the model changed
    rather than what its tokenizer cannot represent.
    """
    baseline = prior if baseline is None else baseline
    panels = [_gray_panel(prior, PANEL_HEIGHT), _gray_panel(counterfactual, PANEL_HEIGHT)]
    diff_panel, scale = _difference_panel(baseline, counterfactual, PANEL_HEIGHT)
    panels.append(diff_panel)
    titles = ["prior", "counterfactual (synthetic)", f"difference (blue darker, red brighter, ±{scale:.2f})"]
    width = sum(p.width for p in panels) + MARGIN * (len(panels) + 1)
    title_font, body_font = _font(20), _font(18)
    chars = max(40, int(width / (body_font.size * 0.55)))
    lines = [("Hypothesis:", hypothesis), ("Interpretation:", interpretation or "(none)")]
    wrapped = [(label, textwrap.wrap(text, chars - len(label) - 1) or [""]) for label, text in lines]
    caption_lines = sum(len(w) for _, w in wrapped) + 2
    height = MARGIN * 3 + 28 + PANEL_HEIGHT + caption_lines * 26
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = MARGIN
    for panel, title in zip(panels, titles, strict=True):
        draw.text((x, MARGIN), title, fill="black", font=title_font)
        canvas.paste(panel, (x, MARGIN + 28))
        x += panel.width + MARGIN
    y = MARGIN * 2 + 28 + PANEL_HEIGHT
    for label, text_lines in wrapped:
        for i, line in enumerate(text_lines):
            draw.text((MARGIN, y), f"{label if i == 0 else ' ' * len(label)} {line}", fill="black", font=body_font)
            y += 26
    draw.text((MARGIN, y + 8), notice, fill=(200, 0, 0), font=title_font)
    return canvas
