"""The metrics: text similarity, finding-level F1, image preservation, and progression alignment."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nltk.stem.porter import PorterStemmer
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
from nltk.translate.meteor_score import meteor_score
from rouge_score import rouge_scorer
from scipy.stats import mannwhitneyu
from skimage.metrics import structural_similarity

from inference.consistency import moves_as_hypothesised
from inference.findings_text import extract


class _NoSynonyms:
    """METEOR's WordNet stage needs corpus data that cannot be downloaded here: exact and stem matches only."""

    @staticmethod
    def synsets(word: str) -> list:
        return []


def _tokens(text: str) -> list[str]:
    return text.lower().replace(",", " ").replace(".", " ").replace(":", " ").split()


def bleu3(references: Sequence[str], candidates: Sequence[str]) -> float:
    return float(corpus_bleu([[_tokens(r)] for r in references], [_tokens(c) for c in candidates],
                             weights=(1 / 3, 1 / 3, 1 / 3), smoothing_function=SmoothingFunction().method1))


def meteor(references: Sequence[str], candidates: Sequence[str]) -> float:
    stemmer = PorterStemmer()
    scores = [meteor_score([_tokens(r)], _tokens(c), stemmer=stemmer, wordnet=_NoSynonyms)
              for r, c in zip(references, candidates, strict=True)]
    return float(np.mean(scores)) if scores else 0.0


def rouge_l(references: Sequence[str], candidates: Sequence[str]) -> float:
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score(r, c)["rougeL"].fmeasure for r, c in zip(references, candidates, strict=True)]
    return float(np.mean(scores)) if scores else 0.0


def finding_f1(references: Sequence[str], candidates: Sequence[str]) -> dict[str, float]:
    """Micro precision/recall/F1 over (finding, location, direction) tuples read from the texts."""
    true_positive = predicted = expected = 0
    for reference, candidate in zip(references, candidates, strict=True):
        ref, cand = extract(reference), extract(candidate)
        expected += ref is not None
        predicted += cand is not None
        true_positive += ref is not None and ref == cand
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def masked_ssim(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> float:
    """Mean of the SSIM map over ``keep`` (e.g. outside the region the hypothesis touches)."""
    _, ssim_map = structural_similarity(a, b, data_range=1.0, full=True)
    return float(ssim_map[keep].mean())


def masked_psnr(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> float:
    mse = float(np.mean((a[keep] - b[keep]) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def pooled_psnr(psnrs: Sequence[float]) -> float:
    """PSNR of the mean squared error over many images: finite when some of them are identical (PSNR inf)."""
    mse = float(np.mean([10 ** (-p / 10) for p in psnrs]))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def auroc(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic over all positive/negative pairs."""
    if not positive_scores or not negative_scores:
        return float("nan")
    statistic = mannwhitneyu(positive_scores, negative_scores, alternative="two-sided").statistic
    return float(statistic / (len(positive_scores) * len(negative_scores)))


def aligned(direction: str, change: float, expected_step: float) -> bool:
    """Did the measured change move the hypothesised way?

    ``expected_step`` is the size of a one-grade change of that finding: a
    directional change must move at least a quarter of it in the right sign,
    and "unchanged" must stay within a quarter of it.
    """
    return moves_as_hypothesised(direction, change, 0.25 * expected_step)
