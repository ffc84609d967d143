"""The preview a person looks at first: prior, counterfactual and difference side by side, with the texts.

A flagged result (see ``ResultChecks``) opens with a red band that carries its marking, above everything else.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from dicom_io.output_common import check_rows, marking_parts, quantize
from dicom_io.records import SYNTHETIC_NOTICE, ResultChecks
from dicom_io.rendering import difference_map, line_height, load_font, wrap_text

PANEL_HEIGHT = 512
MARGIN = 16
_MAX_TEXT_LINES = 12
"""Per text: bounds the PNG whatever the model writes (the hypothesis itself is a few lines at most)."""
_MAX_MARKING_LINES = 3
"""Per part of the marking, for the same reason."""
NOTICE_RED = (200, 0, 0)


def _panel(pixels: np.ndarray, height: int) -> Image.Image:
    """8-bit grey or RGB pixels scaled to ``height``, keeping the aspect ratio, as RGB."""
    width = max(1, round(pixels.shape[1] * height / pixels.shape[0]))
    return Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS).convert("RGB")


def render_preview(prior: np.ndarray, counterfactual: np.ndarray, *, hypothesis: str, interpretation: str,
                   checks: ResultChecks, baseline: np.ndarray | None = None,
                   notice: str = SYNTHETIC_NOTICE) -> Image.Image:
    """Three panels of equal height, titled, over a caption with the hypothesis, interpretation, checks and notice.

    The difference is taken against ``baseline`` when given (see
    ``inference.composition.baseline``): for a decoded image, the prior as the
    model's tokenizer reproduces it, so that the map shows what the model changed
    rather than what its tokenizer cannot represent.
    """
    difference = difference_map(prior if baseline is None else baseline, counterfactual)
    panels = [_panel(quantize(prior), PANEL_HEIGHT), _panel(quantize(counterfactual), PANEL_HEIGHT),
              _panel(difference.coloured(), PANEL_HEIGHT)]
    titles = ["prior", "counterfactual (synthetic)",
              f"difference (blue darker, red brighter, ±{difference.scale:.2f})"]
    width = sum(p.width for p in panels) + MARGIN * (len(panels) + 1)
    title_font, body_font, marking_font = load_font(20), load_font(18), load_font(22, bold=True)
    title_height, body_height = line_height(title_font), line_height(body_font)
    marking = [line for part in marking_parts(checks)
               for line in wrap_text(part, marking_font, width - 2 * MARGIN, _MAX_MARKING_LINES)]
    band_height = len(marking) * line_height(marking_font) + MARGIN if marking else 0
    labelled = [("Hypothesis:", hypothesis), ("Interpretation:", interpretation or "(none)"),
                *((f"{label}:", value) for label, value in check_rows(checks))]
    label_width = round(max(body_font.getlength(label) for label, _ in labelled)) + MARGIN // 2
    text_width = width - 2 * MARGIN - label_width
    wrapped = [(label, wrap_text(text, body_font, text_width, _MAX_TEXT_LINES)) for label, text in labelled]
    text_top = band_height + MARGIN * 2 + title_height + PANEL_HEIGHT
    notice_top = text_top + sum(len(lines) for _, lines in wrapped) * body_height + MARGIN // 2
    canvas = Image.new("RGB", (width, notice_top + title_height + MARGIN), "white")
    draw = ImageDraw.Draw(canvas)
    if marking:
        draw.rectangle((0, 0, width - 1, band_height - 1), fill=NOTICE_RED)
        for number, line in enumerate(marking):
            draw.text((MARGIN, MARGIN // 2 + number * line_height(marking_font)), line, fill="white",
                      font=marking_font)
    x = MARGIN
    for panel, title in zip(panels, titles, strict=True):
        draw.text((x, band_height + MARGIN), title, fill="black", font=title_font)
        canvas.paste(panel, (x, band_height + MARGIN + title_height))
        x += panel.width + MARGIN
    y = text_top
    for label, lines in wrapped:
        draw.text((MARGIN, y), label, fill="black", font=body_font)
        for line in lines:
            draw.text((MARGIN + label_width, y), line, fill="black", font=body_font)
            y += body_height
    draw.text((MARGIN, notice_top), notice, fill=NOTICE_RED, font=title_font)
    return canvas
