"""A synthetic longitudinal dataset in the shape of ICG-CXR: (prior, hypothesis, follow-up, interpretation).

Each record changes one finding of one synthetic patient; other findings may
be present and stay the same. Prior and follow-up share the anatomy and the
noise, so they differ only where the finding changed (ICG-CXR's pairs are
registered too). Output is deterministic for a seed, record by record.

The patient is a procedural phantom, or, with ``backgrounds`` (a folder from
scripts/real_data/build_backgrounds.py), a real radiograph with the finding
simulated on it (:mod:`inference.data.real_findings`); such records keep the
film's own train/val/test split, so no film is seen in training and testing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from inference.data import real_findings
from inference.data.anatomy import AnatomyError, ChestAnatomy, locate_anatomy
from inference.data.findings import DIRECTIONS, FINDINGS, SITES, FindingSite, severities_for
from inference.data.language import hypothesis_text, interpretation_text
from inference.data.phantom import Anatomy, Findings, render_chest, sample_anatomy

log = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"
IMAGES_DIR = "images"
TEST_FRACTION = 0.1
PAIRS_PER_PATIENT = 4
BACKGROUND_PROBABILITY = 0.3
BACKGROUNDS_INDEX = "backgrounds.json"  # written by scripts/real_data/build_backgrounds.py
BASE_ROLE = "background"

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class RealFilm:
    """A real radiograph from a backgrounds folder, the base under a record's simulated finding."""

    id: str
    patient: str
    split: str
    view: str
    source: str
    file: str


def load_backgrounds(root: Path) -> list[RealFilm]:
    """The folder's base films (manifest role "background"), sorted by id."""
    index = root / BACKGROUNDS_INDEX
    if not index.exists():
        raise FileNotFoundError(f"{root} has no {BACKGROUNDS_INDEX}: build it with "
                                f"scripts/real_data/build_backgrounds.py (a refused build leaves none)")
    items = json.loads(index.read_text())["items"]
    films = [RealFilm(item["id"], item["patient"], item["split"], item["view"], item["source"], item["file"])
             for item in items if item["role"] == BASE_ROLE]
    return sorted(films, key=lambda film: film.id)


@dataclass(frozen=True)
class PairPlan:
    """Everything needed to render and describe one record.

    For a record on a real film, ``film`` is set and ``anatomy`` is the phantom anatomy fitted to the film's
    located anatomy (:meth:`ChestAnatomy.as_phantom`): the phantom's analytic measurements then fall on the film.
    """

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
    film: RealFilm | None = None

    @property
    def record_id(self) -> str:
        return f"{'real' if self.film else 'syn'}-{self.index:06d}"

    @property
    def patient_id(self) -> str:
        return self.film.patient if self.film else f"SYN-P{self.patient:05d}"

    @property
    def split(self) -> str:
        """Held out by patient: no test patient is ever seen in training. A real film keeps its manifest split
        (train, val or test; training reads train, evaluation test)."""
        if self.film is not None:
            return self.film.split
        return "test" if np.random.default_rng([self.patient, 99]).random() < TEST_FRACTION else "train"


def _background(site: FindingSite, rng: np.random.Generator) -> Findings:
    """Occasionally another, unchanged finding, so the model learns to leave it alone."""
    findings = Findings()
    if rng.random() < BACKGROUND_PROBABILITY:
        other = SITES[int(rng.integers(len(SITES)))]
        if other.label != site.label:
            findings = other.with_severity(findings, int(rng.integers(1, 3)))
    return findings


def plan_pair(index: int, seed: int, film: RealFilm | None = None, fitted: Anatomy | None = None) -> PairPlan:
    """Record ``index``'s finding, change and texts; on a phantom patient unless ``film`` (with its ``fitted``
    phantom anatomy) is given."""
    rng = np.random.default_rng([seed, index])
    patient = index // PAIRS_PER_PATIENT
    anatomy = fitted or sample_anatomy(np.random.default_rng([seed, patient, 1]))
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
        interpretation=interpretation_text(site, direction, prior_severity, follow_severity), film=film,
    )


def render_pair(plan: PairPlan, size: int) -> tuple[np.ndarray, np.ndarray]:
    prior = render_chest(plan.anatomy, plan.prior, size, np.random.default_rng(plan.noise_seed))
    follow = render_chest(plan.anatomy, plan.followup, size, np.random.default_rng(plan.noise_seed))
    return prior, follow


def _unchanged_finding(plan: PairPlan) -> dict | None:
    """The other, unchanged finding present in both images, if any."""
    for site in SITES:
        severity = site.severity(plan.prior)
        if severity and site.label != plan.site.label:
            return {"finding": site.finding, "side": site.side, "zone": site.zone, "severity": severity}
    return None


def record(plan: PairPlan) -> dict:
    """ICG-CXR's field names, plus ground-truth labels kept for evaluation."""
    site = plan.site
    entry: dict[str, Any] = {
        "id": plan.record_id,
        "patient_id": plan.patient_id,
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
    if plan.film is not None:  # what Dataset.plan needs to rebuild the plan without the backgrounds folder
        entry["change-mask"] = f"{IMAGES_DIR}/{plan.record_id}_mask.png"
        entry["comment"] = {"confidence": 5, "source": f"simulated finding on a real radiograph ({plan.film.source})"}
        entry["labels"] |= {"film": dataclasses.asdict(plan.film), "unchanged": _unchanged_finding(plan),
                            "anatomy": dataclasses.asdict(plan.anatomy)}
    return entry


def _plan_from_record(entry: dict) -> PairPlan:
    labels = entry["labels"]
    site = FindingSite(labels["finding"], labels["side"], labels["zone"])
    base = Findings()
    if labels["unchanged"]:
        other = labels["unchanged"]
        base = FindingSite(other["finding"], other["side"], other["zone"]).with_severity(base, other["severity"])
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in labels["anatomy"].items()}
    return PairPlan(index=int(labels["seed_index"]), patient=-1, anatomy=Anatomy(**fields), site=site,
                    direction=labels["direction"], prior=site.with_severity(base, labels["prior_severity"]),
                    followup=site.with_severity(base, labels["followup_severity"]),
                    noise_seed=int(labels["noise_seed"]), hypothesis=entry["progression-description"],
                    interpretation=entry["changes-of-findings"], film=RealFilm(**labels["film"]))


def _located(root: Path, films: list[RealFilm],
             progress: Progress | None) -> list[tuple[RealFilm, ChestAnatomy]]:
    """Each base film with its anatomy; films where the anatomy cannot be found are skipped and counted."""
    located, rejected = [], Counter[str]()
    for done, film in enumerate(films, start=1):
        try:
            located.append((film, locate_anatomy(np.asarray(Image.open(root / film.file)))))
        except AnatomyError as error:
            rejected[str(error).split(";")[0].split(":")[0]] += 1  # the first failed check
        if progress is not None:
            progress("locating anatomy", done, len(films))
    log.info("anatomy located on %d of %d base films; skipped %d: %s", len(located), len(films),
             sum(rejected.values()), dict(rejected.most_common()))
    if not located:
        raise ValueError(f"no usable base film in {root}")
    return located


def _save(out: Path, entry: dict, images: dict[str, np.ndarray]) -> None:
    for key, image in images.items():
        Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(out / entry[key])


def make_dataset(out: Path, n: int, seed: int, *, size: int = 128, progress: Progress | None = None,
                 backgrounds: Path | None = None, phantom_fraction: float = 0.0) -> list[dict]:
    """Render ``n`` records into ``out``: PNG images and ``dataset.json``.

    With ``backgrounds``, records are drawn on its real films (each film in turn, in a seeded order), except a
    ``phantom_fraction`` of them, which stay phantoms; films whose anatomy cannot be located are skipped.
    """
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    located = _located(backgrounds, load_backgrounds(backgrounds), progress) if backgrounds else []
    order = np.random.default_rng([seed, 31]).permutation(len(located)) if located else np.array([], int)
    by_film: dict[int, list[int]] = {}
    phantoms = []
    for index in range(n):
        if not located or np.random.default_rng([seed, index, 2]).random() < phantom_fraction:
            phantoms.append(index)
        else:
            by_film.setdefault(int(order[index % len(located)]), []).append(index)
    entries: dict[int, dict] = {}

    def done(index: int, entry: dict) -> None:
        entries[index] = entry
        if progress is not None:
            progress("rendering", len(entries), n)

    for index in phantoms:
        plan = plan_pair(index, seed)
        entry = record(plan)
        _save(out, entry, dict(zip(("prior", "follow-up"), render_pair(plan, size), strict=True)))
        done(index, entry)
    for film_index, indices in sorted(by_film.items()):  # film by film: each base is prepared once
        assert backgrounds is not None
        film, anatomy = located[film_index]
        base = real_findings.prepare_base(np.asarray(Image.open(backgrounds / film.file)), anatomy)
        for index in indices:
            plan = plan_pair(index, seed, film, anatomy.as_phantom())
            entry = record(plan)
            images = real_findings.render_pair(base, plan.prior, plan.followup, plan.site, plan.noise_seed, size)
            _save(out, entry, dict(zip(("prior", "follow-up", "change-mask"), images, strict=True)))
            done(index, entry)
    records = [entries[index] for index in range(n)]
    manifest = {"format": "progemu-synthetic-icg/1", "seed": seed, "size": size, "n": n, "records": records}
    if backgrounds:
        manifest["backgrounds"] = {"root": str(backgrounds), "films": len(located),
                                   "phantom_fraction": phantom_fraction}
    (out / DATASET_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    splits = Counter(r["split"] for r in records)
    log.info("wrote %d records (%s) to %s", n, ", ".join(f"{k} {v}" for k, v in sorted(splits.items())), out)
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
        """Re-derive the record's plan (anatomy, findings) from the seed, or from the labels of a record on a real
        film: what the evaluation measures against."""
        if "film" in record_["labels"]:
            return _plan_from_record(record_)
        return plan_pair(int(record_["labels"]["seed_index"]), self.seed)
