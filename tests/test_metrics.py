"""Evaluation metrics on known inputs."""

import numpy as np
import pytest

from inference.evaluation.metrics import (
    aligned,
    auroc,
    bleu3,
    finding_f1,
    masked_psnr,
    masked_ssim,
    meteor,
    pooled_psnr,
    rouge_l,
)
from inference.evaluation.text_findings import FindingTuple, extract

REF = "The left basal opacity has increased: the left pleural effusion has worsened from small to moderate."


def test_identical_text_scores_one() -> None:
    assert bleu3([REF], [REF]) > 0.99 and rouge_l([REF], [REF]) == 1.0 and meteor([REF], [REF]) > 0.99
    assert finding_f1([REF], [REF])["f1"] == 1.0


def test_reversed_finding_is_a_miss() -> None:
    reversed_text = REF.replace("increased", "decreased").replace("worsened", "improved")
    assert extract(reversed_text).direction == "improves"
    assert finding_f1([REF], [reversed_text])["f1"] == 0.0
    wrong_side = REF.replace("left", "right")
    assert finding_f1([REF], [wrong_side])["f1"] == 0.0
    assert rouge_l([REF], [reversed_text]) < 1.0


def test_extraction_reads_location_and_direction() -> None:
    assert extract("New patchy airspace opacity in the right lower zone, indicating a mild consolidation in the "
                   "right lower zone.") == FindingTuple("consolidation", "right_lower", "develops")
    assert extract("The cardiac silhouette is normal in size again: the cardiomegaly has resolved.") == FindingTuple(
        "cardiomegaly", None, "resolves")
    assert extract("garbage \x01 text") is None


def test_identical_image_gives_ssim_one_and_infinite_psnr() -> None:
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    keep = np.ones_like(image, dtype=bool)
    assert masked_ssim(image, image, keep) == 1.0
    assert masked_psnr(image, image, keep) == float("inf")
    noisy = np.clip(image + 0.1, 0, 1)
    assert masked_ssim(image, noisy, keep) < 1.0 and masked_psnr(image, noisy, keep) < 25
    # Pooled over images, an identical one adds zero error instead of making the mean infinite.
    assert pooled_psnr([20.0, 20.0]) == pytest.approx(20.0)
    assert pooled_psnr([20.0, float("inf")]) == pytest.approx(20.0 + 10 * np.log10(2))
    assert pooled_psnr([float("inf")]) == float("inf")


def test_mask_excludes_the_changed_region() -> None:
    image = np.full((64, 64), 0.5, dtype=np.float32)
    changed = image.copy()
    changed[:16] = 1.0
    keep = np.zeros_like(image, dtype=bool)
    keep[32:] = True
    assert masked_psnr(image, changed, keep) == float("inf")


def test_alignment_and_auroc() -> None:
    assert aligned("worsens", 0.05, 0.1) and not aligned("worsens", -0.05, 0.1)
    assert aligned("resolves", -0.05, 0.1) and not aligned("improves", 0.01, 0.1)
    assert aligned("unchanged", 0.01, 0.1) and not aligned("unchanged", 0.05, 0.1)
    assert auroc([0.9, 0.8, 0.7], [0.1, 0.2]) == 1.0
    assert auroc([0.1, 0.2], [0.9, 0.8]) == 0.0
