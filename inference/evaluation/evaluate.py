"""Run a model on the held-out split and score it, with CFG on and off.

Writes ``metrics.json``, ``metrics.md`` (a table) and ``examples.png`` (a grid of
prior, counterfactual and ground-truth follow-up).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from scipy import ndimage

from inference.composition import baseline
from inference.data.dataset import Dataset
from inference.data.phantom import finding_mask, measure_findings
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
from inference.findings_text import DIRECTION_SENSE
from inference.pipeline import CounterfactualPipeline
from inference.sampler import SamplerSettings

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)

POSITIVE = tuple(direction for direction, sense in DIRECTION_SENSE.items() if sense > 0)
NEGATIVE = tuple(direction for direction, sense in DIRECTION_SENSE.items() if sense < 0)


@dataclass
class Outcome:
    record_id: str
    finding: str
    direction: str
    hypothesis: str
    reference: str
    interpretation: str
    change: float
    expected_change: float
    step: float
    aligned: bool
    ssim_outside: float
    """The delivered image (the pipeline's composition) against the prior."""
    psnr_outside: float
    ssim_outside_decoded: float
    """The decoder's image against the prior: what the tokenizer and the model preserve on their own."""
    psnr_outside_decoded: float
    ssim_outside_vs_reconstruction: float
    """The decoder's image against the prior's reconstruction: what the language model alone preserves."""


def measurement_key(labels: dict) -> str:
    """Which analytic measurement tracks this record's finding."""
    if labels["finding"] == "consolidation":
        return f"consolidation_{labels['zone']}"
    return f"{labels['finding']}_{labels['side']}" if labels["side"] else labels["finding"]


DARKENING = frozenset({"pneumothorax"})
"""Findings that make their region darker as they worsen (air); every other finding makes it denser."""


@dataclass(frozen=True)
class Measurement:
    """How a record's finding is read from an image, and where the image may not change.

    A phantom record is measured in the phantom's analytic regions. A record on a real film is measured where
    its simulated finding was drawn (the record's change mask): the mean signed change there, so a change
    elsewhere (another lung, the whole film darkening) neither counts for nor against the finding.
    """

    measure: Callable[[np.ndarray], float]
    keep: np.ndarray
    """Pixels outside the change, where the result should equal the prior."""


def measurement(dataset: Dataset, entry: dict) -> Measurement:
    labels, plan = entry["labels"], dataset.plan(entry)
    size = dataset.size
    if "change-mask" in entry:
        region = dataset.image(entry, "change-mask") > 0.5
        sign = -1.0 if labels["finding"] in DARKENING else 1.0
        touched = ndimage.binary_dilation(region, iterations=max(1, size // 64))
        return Measurement(lambda image: sign * float(image[region].mean()) if region.any() else 0.0, ~touched)
    key = measurement_key(labels)
    return Measurement(lambda image: measure_findings(image, plan.anatomy)[key],
                       ~finding_mask(plan.anatomy, plan.prior, plan.followup, size))


def _one_grade_steps(dataset: Dataset, records: list[dict]) -> dict[str, float]:
    """Typical measured change per severity grade, per finding, from the ground-truth pairs."""
    changes: dict[str, list[float]] = {}
    for entry in records:
        labels = entry["labels"]
        grades = abs(labels["followup_severity"] - labels["prior_severity"])
        if grades == 0:
            continue
        measure = measurement(dataset, entry).measure
        delta = measure(dataset.image(entry, "follow-up")) - measure(dataset.image(entry, "prior"))
        changes.setdefault(labels["finding"], []).append(abs(delta) / grades)
    return {finding: float(np.median(values)) for finding, values in changes.items()}


def _evaluate_setting(pipeline: CounterfactualPipeline, dataset: Dataset, records: list[dict],
                      settings: SamplerSettings, steps: dict[str, float],
                      progress: Callable[[int, int], None] | None) -> tuple[list[Outcome], list]:
    outcomes, examples = [], []
    for i, entry in enumerate(records):
        labels, measured = entry["labels"], measurement(dataset, entry)
        prior, follow = dataset.image(entry, "prior"), dataset.image(entry, "follow-up")
        result = pipeline.run(prior, entry["progression-description"], settings)
        reference = baseline(prior, result.prior_reconstruction, result.composition)
        change = measured.measure(result.image) - measured.measure(reference)
        expected = measured.measure(follow) - measured.measure(prior)
        step = steps.get(labels["finding"], abs(expected) or 1.0)
        keep = measured.keep
        outcomes.append(Outcome(
            entry["id"], labels["finding"], labels["direction"], entry["progression-description"],
            entry["changes-of-findings"], result.interpretation, change, expected, step,
            aligned(labels["direction"], change, step), masked_ssim(prior, result.image, keep),
            masked_psnr(prior, result.image, keep), masked_ssim(prior, result.decoded, keep),
            masked_psnr(prior, result.decoded, keep), masked_ssim(result.prior_reconstruction, result.decoded, keep)))
        examples.append((prior, result.image, follow, entry["progression-description"], result.interpretation))
        if progress is not None:
            progress(i + 1, len(records))
    return outcomes, examples


def summarise(outcomes: list[Outcome]) -> dict[str, float]:
    references = [o.reference for o in outcomes]
    candidates = [o.interpretation for o in outcomes]
    positive = [o.change / o.step for o in outcomes if o.direction in POSITIVE]
    negative = [o.change / o.step for o in outcomes if o.direction in NEGATIVE]
    return {
        "n": len(outcomes),
        "alignment_accuracy": float(np.mean([o.aligned for o in outcomes])),
        "alignment_auroc": auroc(positive, negative),
        **{key: float(np.mean([getattr(o, key) for o in outcomes]))
           for key in ("ssim_outside", "ssim_outside_decoded", "ssim_outside_vs_reconstruction")},
        **{key: pooled_psnr([getattr(o, key) for o in outcomes]) for key in ("psnr_outside", "psnr_outside_decoded")},
        "bleu3": bleu3(references, candidates),
        "meteor": meteor(references, candidates),
        "rouge_l": rouge_l(references, candidates),
        **{f"finding_{k}": v for k, v in finding_f1(references, candidates).items()},
    }


TABLE_ROWS = (("alignment accuracy", "alignment_accuracy"), ("alignment AUROC", "alignment_auroc"),
              ("SSIM outside change, delivered vs prior", "ssim_outside"),
              ("PSNR outside change, delivered vs prior (dB)", "psnr_outside"),
              ("SSIM outside change, decoded vs prior", "ssim_outside_decoded"),
              ("PSNR outside change, decoded vs prior (dB)", "psnr_outside_decoded"),
              ("SSIM outside change, decoded vs VQ reconstruction", "ssim_outside_vs_reconstruction"),
              ("finding-level F1", "finding_f1"), ("BLEU-3", "bleu3"), ("METEOR", "meteor"), ("ROUGE-L", "rouge_l"))


def alignment_breakdown(outcomes: list[Outcome]) -> dict[str, dict[str, list[int]]]:
    """Aligned and total records per finding and per direction: where a model falls short, not only by how much."""
    breakdown: dict[str, dict[str, list[int]]] = {"finding": {}, "direction": {}}
    for outcome in outcomes:
        for field, counts in breakdown.items():
            tally = counts.setdefault(getattr(outcome, field), [0, 0])
            tally[0] += int(outcome.aligned)
            tally[1] += 1
    return {field: dict(sorted(counts.items())) for field, counts in breakdown.items()}


def markdown_table(results: dict[str, dict[str, float]],
                   breakdowns: dict[str, dict[str, dict[str, list[int]]]]) -> str:
    names = list(results)

    def head(first: str) -> list[str]:
        return [f"| {first} | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    lines = head("metric")
    for label, key in TABLE_ROWS:
        lines.append(f"| {label} | " + " | ".join(f"{results[n][key]:.3f}" for n in names) + " |")
    for field in ("finding", "direction"):
        lines += ["", *head(f"aligned, by {field}")]
        for value in breakdowns[names[0]][field]:
            lines.append(f"| {value} | " + " | ".join(
                "{}/{}".format(*breakdowns[n][field][value]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def example_grid(examples: list, path: Path, count: int = 6) -> None:
    shown = examples[:count]
    figure, axes = plt.subplots(len(shown), 3, figsize=(9, 3.2 * len(shown)), dpi=90, squeeze=False)
    for row, (prior, generated, truth, hypothesis, interpretation) in zip(axes, shown, strict=True):
        for axis, image, title in zip(row, (prior, generated, truth), ("prior", "counterfactual", "ground truth"),
                                      strict=True):
            axis.imshow(image, cmap="gray", vmin=0, vmax=1)
            axis.set_title(title, fontsize=9)
            axis.axis("off")
        row[0].set_title(f"prior\n{hypothesis[:60]}", fontsize=8)
        row[1].set_title(f"counterfactual\n{interpretation[:60]}", fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def evaluate(pipeline: CounterfactualPipeline, dataset: Dataset, out: Path, *, limit: int = 100,
             sampler: SamplerSettings | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Score ``sampler`` with its CFG and with CFG off on the first ``limit`` held-out records; write the reports."""
    sampler = sampler or SamplerSettings()
    out.mkdir(parents=True, exist_ok=True)
    records = dataset.split("test")[:limit]
    steps = _one_grade_steps(dataset, dataset.split("test"))
    settings = {f"CFG {sampler.cfg_scale:g}": sampler, "CFG off": dataclasses.replace(sampler, cfg_scale=1.0)}
    results, breakdowns, details = {}, {}, {}
    for name, setting in settings.items():
        outcomes, examples = _evaluate_setting(
            pipeline, dataset, records, setting, steps,
            functools.partial(progress, name) if progress else None)
        results[name] = summarise(outcomes)
        breakdowns[name] = alignment_breakdown(outcomes)
        details[name] = [o.__dict__ for o in outcomes]
        if name.startswith("CFG") and name != "CFG off":
            example_grid(examples, out / "examples.png")
    report = {"model": {"name": pipeline.model.spec.name, "version": pipeline.model.spec.version,
                        "checkpoint_sha256": pipeline.model.checkpoint_sha256, "engine": pipeline.engine.name,
                        "composition": str(pipeline.composition)},
              "data": {"root": str(dataset.root), "seed": dataset.seed, "split": "test", "records": len(records)},
              "sampler": sampler.as_parameters(),
              "one_grade_steps": steps, "results": results, "alignment_breakdown": breakdowns,
              "per_record": details}
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "metrics.md").write_text(markdown_table(results, breakdowns))
    return report
