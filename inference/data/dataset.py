"""A synthetic longitudinal dataset in the shape of ICG-CXR: (prior, hypothesis, follow-up, interpretation).

Each record changes one finding of one synthetic patient; other findings may
be present and stay the same. Prior and follow-up share the anatomy and the
noise, so they differ only where the finding changed (ICG-CXR's pairs are
registered too). Output is deterministic for a seed, record by record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from inference.data.findings import DIRECTIONS, FINDINGS, SITES, FindingSite, severities_for
from inference.data.language import hypothesis_text, interpretation_text
from inference.data.phantom import Anatomy, Findings, render_chest, sample_anatomy

log = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"
IMAGES_DIR = "images"
TEST_FRACTION = 0.1
PAIRS_PER_PATIENT = 4
BACKGROUND_PROBABILITY = 0.3


@dataclass(frozen=True)
class PairPlan:
    """Everything needed to render and describe one record."""

    index: int
    patient: int
    anatomy: Anatomy
    site: FindingSite
    direction: str
    prior: Findings
    followup: Findings
    noise_seed: int
    hypothesis: str
    interpretation: str

    @property
    def record_id(self) -> str:
        return f"syn-{self.index:06d}"

    @property
    def split(self) -> str:
        """Held out by patient: no test patient is ever seen in training."""
        return "test" if np.random.default_rng([self.patient, 99]).random() < TEST_FRACTION else "train"


def _background(site: FindingSite, rng: np.random.Generator) -> Findings:
    """Occasionally another, unchanged finding, so the model learns to leave it alone."""
    findings = Findings()
    if rng.random() < BACKGROUND_PROBABILITY:
        other = SITES[int(rng.integers(len(SITES)))]
        if other.label != site.label:
            findings = other.with_severity(findings, int(rng.integers(1, 3)))
    return findings


def plan_pair(index: int, seed: int) -> PairPlan:
    rng = np.random.default_rng([seed, index])
    patient = index // PAIRS_PER_PATIENT
    anatomy = sample_anatomy(np.random.default_rng([seed, patient, 1]))
    finding = FINDINGS[int(rng.integers(len(FINDINGS)))]  # each finding equally often, whatever its sites
    sites = [s for s in SITES if s.finding == finding]
    site = sites[int(rng.integers(len(sites)))]
    direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    prior_severity, follow_severity = severities_for(direction, rng)
    base = _background(site, rng)
    return PairPlan(
        index=index, patient=patient, anatomy=anatomy, site=site, direction=direction,
        prior=site.with_severity(base, prior_severity), followup=site.with_severity(base, follow_severity),
        noise_seed=int(rng.integers(2**31)),
        hypothesis=hypothesis_text(site, direction, prior_severity, follow_severity, rng),
        interpretation=interpretation_text(site, direction, prior_severity, follow_severity),
    )


def render_pair(plan: PairPlan, size: int) -> tuple[np.ndarray, np.ndarray]:
    prior = render_chest(plan.anatomy, plan.prior, size, np.random.default_rng(plan.noise_seed))
    follow = render_chest(plan.anatomy, plan.followup, size, np.random.default_rng(plan.noise_seed))
    return prior, follow


def record(plan: PairPlan) -> dict:
    """ICG-CXR's field names, plus ground-truth labels kept for evaluation."""
    site = plan.site
    return {
        "id": plan.record_id,
        "patient_id": f"SYN-P{plan.patient:05d}",
        "split": plan.split,
        "prior": f"{IMAGES_DIR}/{plan.record_id}_prior.png",
        "follow-up": f"{IMAGES_DIR}/{plan.record_id}_followup.png",
        "progression-description": plan.hypothesis,
        "changes-of-findings": plan.interpretation,
        "comment": {"confidence": 5, "source": "synthetic phantom"},
        "labels": {
            "finding": site.finding, "side": site.side, "zone": site.zone, "direction": plan.direction,
            "prior_severity": site.severity(plan.prior), "followup_severity": site.severity(plan.followup),
            "noise_seed": plan.noise_seed, "seed_index": plan.index,
        },
    }


def make_dataset(out: Path, n: int, seed: int, *, size: int = 128,
                 progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Render ``n`` records into ``out``: PNG images and ``dataset.json``."""
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(n):
        plan = plan_pair(index, seed)
        prior, follow = render_pair(plan, size)
        entry = record(plan)
        for key, image in (("prior", prior), ("follow-up", follow)):
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(out / entry[key])
        records.append(entry)
        if progress is not None:
            progress(index + 1, n)
    manifest = {"format": "progemu-synthetic-icg/1", "seed": seed, "size": size, "n": n, "records": records}
    (out / DATASET_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    log.info("wrote %d records (%d test) to %s", n, sum(r["split"] == "test" for r in records), out)
    return records


@dataclass(frozen=True)
class Dataset:
    """A dataset directory as written by :func:`make_dataset`."""

    root: Path
    seed: int
    size: int
    records: list[dict]

    @classmethod
    def open(cls, root: str | Path) -> Dataset:
        root = Path(root)
        path = root / DATASET_FILE
        if not path.exists():
            raise FileNotFoundError(f"{root} has no {DATASET_FILE}: make one with `progemu make-dataset`")
        data = json.loads(path.read_text())
        return cls(root, int(data["seed"]), int(data["size"]), list(data["records"]))

    def split(self, name: str) -> list[dict]:
        return [r for r in self.records if r["split"] == name]

    def image(self, record_: dict, key: str) -> np.ndarray:
        return np.asarray(Image.open(self.root / record_[key]), dtype=np.float32) / 255.0

    def images(self, records: list[dict]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for entry in records:
            yield self.image(entry, "prior"), self.image(entry, "follow-up")

    def plan(self, record_: dict) -> PairPlan:
        """Re-derive the record's plan (anatomy, findings) from the seed: what the evaluation measures against."""
        return plan_pair(int(record_["labels"]["seed_index"]), self.seed)
