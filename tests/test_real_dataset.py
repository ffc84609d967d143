"""Findings simulated on base films, the dataset made on a backgrounds folder, and the backgrounds builder.

The base films are procedural phantoms written as a backgrounds folder in the test (no real images, no mirrors);
the builder is run on a one-file git repository made in the test.
"""

import csv
import dataclasses
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.data.dataset import Dataset, make_dataset
from inference.data.findings import SITES, FindingSite
from inference.data.phantom import Findings, render_chest, sample_anatomy
from inference.data.real_findings import Base, prepare_base, render, render_pair
from inference.evaluation.evaluate import NEGATIVE, POSITIVE, measurement
from plugin.cli import main
from tests.support.git_repos import bare_clone, committed_repo

ROOT = Path(__file__).resolve().parents[1]
BUILDER = ROOT / "scripts" / "real_data" / "build_backgrounds.py"
FILMS = {  # id: (patient, split, phantom seed); one film per split and patient, two for nih:1
    "nih-00000001_000": ("nih:1", "train", 0), "nih-00000001_001": ("nih:1", "train", 2),
    "nih-00000002_000": ("nih:2", "val", 3), "nih-00000003_000": ("nih:3", "test", 4),
    "nih-00000004_000": ("nih:4", "test", 5),
}


def phantom_film(seed: int, size: int = 256) -> np.ndarray:
    return render_chest(sample_anatomy(np.random.default_rng(seed)), Findings(), size, np.random.default_rng(1))


@pytest.fixture(scope="module")
def backgrounds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backgrounds folder as build_backgrounds.py writes it, plus one blank film whose anatomy cannot be found."""
    root = tmp_path_factory.mktemp("backgrounds")
    items = []
    films = {**{k: v for k, v in FILMS.items()}, "nih-00000005_000": ("nih:5", "train", None)}
    for film_id, (patient, split, seed) in films.items():
        (root / split).mkdir(exist_ok=True)
        pixels = phantom_film(seed) if seed is not None else np.full((256, 256), 0.5, np.float32)
        Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(root / split / f"{film_id}.png")
        items.append({"id": film_id, "patient": patient, "split": split, "view": "PA", "source": "test/phantoms",
                      "role": "background", "labels": "No Finding", "age": 40, "sex": "F",
                      "file": f"{split}/{film_id}.png"})
    items.append({**items[0], "id": "mhh-reference", "role": "reference"})  # never a base
    (root / "backgrounds.json").write_text(json.dumps({"format": "progemu-backgrounds/1", "size": 256,
                                                       "items": items}))
    return root


@pytest.fixture(scope="module")
def base() -> Base:
    return prepare_base(phantom_film(0))


def site(label: str) -> FindingSite:
    return next(s for s in SITES if s.label == label)


def change(base: Base, label: str, severity: int = 2) -> np.ndarray:
    """The finding's effect on the film, without the matched noise (tested with the pairs below)."""
    quiet = dataclasses.replace(base, noise=0.0)
    image, _ = render(quiet, site(label).with_severity(Findings(), severity), seed=5)
    return image - base.image


def centroid(weights: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(weights)
    w = np.abs(weights[ys, xs])
    size = weights.shape[0]
    return float((xs * w).sum() / w.sum() + 0.5) / size, float((ys * w).sum() / w.sum() + 0.5) / size


@pytest.mark.parametrize("side", ["left", "right"])
def test_effusion_is_basal_denser_and_rises_with_severity(base: Base, side: str) -> None:
    lung = base.anatomy.lung(side)
    areas = []
    for severity in (1, 2, 3):
        delta = change(base, f"effusion:{side}", severity)
        assert delta.min() >= -1e-6 and delta.max() > 0.1  # only denser
        x, y = centroid(delta)
        assert (x - base.anatomy.midline) * lung.outward > 0  # the patient's side: left on the image's right
        assert y > (lung.apex + lung.costophrenic[1]) / 2  # the lower half of the field
        areas.append((delta > 0.02).sum())
    assert areas[0] < areas[1] < areas[2]
    # meniscus: at the lateral chest wall the fluid climbs higher than near the heart
    delta = change(base, f"effusion:{side}", 2) > 0.05
    columns = np.nonzero(delta.any(axis=0))[0]
    tops = {x: np.nonzero(delta[:, x])[0].min() for x in columns}
    lateral_x, medial_x = (columns.max(), columns.min()) if lung.outward > 0 else (columns.min(), columns.max())
    assert tops[lateral_x] < tops[medial_x]


def test_cardiomegaly_grows_to_the_left_and_down(base: Base) -> None:
    delta = change(base, "cardiomegaly", 3)
    assert delta.min() >= -1e-6
    x, y = centroid(delta)
    assert x > base.anatomy.midline  # mostly the left border (image right) moves
    assert y > base.anatomy.heart_centre[1] - 0.05
    left = delta[:, int(base.anatomy.midline * base.size):].sum()
    assert left > 3 * delta[:, :int(base.anatomy.midline * base.size)].sum()


@pytest.mark.parametrize("side", ["left", "right"])
def test_pneumothorax_is_a_peripheral_lucency_with_a_line(base: Base, side: str) -> None:
    lung = base.anatomy.lung(side)
    delta = change(base, f"pneumothorax:{side}", 3)
    darker = delta < -0.01
    assert darker.sum() > 50 and (delta > 0.03).any()  # the rim, and the pleural line
    x, y = centroid(np.where(darker, delta, 0))
    assert (x - base.anatomy.midline) * lung.outward > 0
    lung_centre_x = (lung.lateral + lung.medial) / 2
    assert (x - lung_centre_x) * lung.outward > 0  # lateral half of the lung: along the chest wall
    assert y < lung.costophrenic[1] - 0.1  # apical-lateral, not basal
    # no lung markings outside the line: the rim's fine detail is gone
    rim = delta < -0.05
    assert np.std(base.image[rim] + delta[rim] - base.lung_level) < np.std(base.image[rim] - base.lung_level)


@pytest.mark.parametrize("zone", ["right_upper", "right_middle", "right_lower", "left_upper", "left_lower"])
def test_consolidation_sits_in_its_zone(base: Base, zone: str) -> None:
    side, level = zone.split("_")
    lung = base.anatomy.lung(side)
    delta = change(base, f"consolidation:{zone}", 2)
    assert delta.min() >= -1e-6 and delta.max() > 0.05
    x, y = centroid(delta)
    assert (x - base.anatomy.midline) * lung.outward > 0
    third = (lung.costophrenic[1] - lung.apex) / 3
    index = ("upper", "middle", "lower").index(level)
    assert lung.apex + (index - 0.3) * third < y < lung.apex + (index + 1.3) * third


def test_oedema_is_bilateral_and_perihilar(base: Base) -> None:
    delta = change(base, "oedema", 3)
    midline = int(base.anatomy.midline * base.size)
    assert delta[:, :midline].sum() > 0.3 * delta.sum() and delta[:, midline:].sum() > 0.3 * delta.sum()
    for side in ("right", "left"):
        lung = base.anatomy.lung(side)
        mask = base.lungs[side]
        inner = mask & ((base.x - lung.medial) * lung.outward < 0.3 * abs(lung.lateral - lung.medial))
        outer = mask & ((base.x - lung.lateral) * -lung.outward < 0.15 * abs(lung.lateral - lung.medial))
        assert delta[inner].mean() > 3 * delta[outer].mean()  # the outer third is spared


@pytest.mark.parametrize(("label", "prior", "followup", "other"), [
    ("effusion:left", 0, 3, None), ("cardiomegaly", 3, 1, "oedema"), ("pneumothorax:right", 2, 2, None),
    ("consolidation:right_lower", 1, 0, "effusion:right"), ("oedema", 1, 3, "pneumothorax:left")])
def test_prior_equals_followup_outside_the_edit_mask(base: Base, label: str, prior: int, followup: int,
                                                     other: str | None) -> None:
    changed = site(label)
    background = site(other).with_severity(Findings(), 2) if other else Findings()
    before, after, mask = render_pair(base, changed.with_severity(background, prior),
                                      changed.with_severity(background, followup), changed, seed=9, size=64)
    assert before.shape == after.shape == mask.shape == (64, 64)
    assert np.array_equal(before[~mask], after[~mask])
    assert (np.abs(before - after)[mask].max() > 0.02) == (prior != followup)


def test_make_dataset_on_backgrounds(backgrounds: Path, tmp_path: Path) -> None:
    records = make_dataset(tmp_path, 14, seed=3, size=64, backgrounds=backgrounds, phantom_fraction=0.2)
    dataset = Dataset.open(tmp_path)
    real = [r for r in dataset.records if r["id"].startswith("real-")]
    assert real and len(real) < len(records)  # some records stay phantoms
    assert {r["labels"]["film"]["id"] for r in real} <= set(FILMS)  # the blank film and the reference are skipped
    assert dataset.split("train") and dataset.split("test")
    for entry in real:
        patient, split, _ = FILMS[entry["labels"]["film"]["id"]]
        assert (entry["patient_id"], entry["split"]) == (patient, split)  # the film's own split, by patient
        prior, follow = dataset.image(entry, "prior"), dataset.image(entry, "follow-up")
        mask = np.asarray(Image.open(tmp_path / entry["change-mask"])) > 0
        assert prior.shape == (64, 64) and np.array_equal(prior[~mask], follow[~mask])
        plan = dataset.plan(entry)
        assert plan.film is not None and plan.record_id == entry["id"]
        assert plan.site.severity(plan.prior) == entry["labels"]["prior_severity"]
    train = {r["patient_id"] for r in dataset.split("train")}
    assert not train & {r["patient_id"] for r in dataset.split("test")}
    again = tmp_path / "again"
    make_dataset(again, 14, seed=3, size=64, backgrounds=backgrounds, phantom_fraction=0.2)
    assert json.loads((again / "dataset.json").read_text())["records"] == dataset.records
    assert (again / real[0]["prior"]).read_bytes() == (tmp_path / real[0]["prior"]).read_bytes()


def test_evaluation_measures_a_real_record_where_its_finding_was_drawn(backgrounds: Path, tmp_path: Path) -> None:
    """The ground-truth follow-up moves the measure the record's way; a change outside the mask does not count."""
    make_dataset(tmp_path, 14, seed=3, size=64, backgrounds=backgrounds)
    dataset = Dataset.open(tmp_path)
    moving = [r for r in dataset.records if r["labels"]["direction"] in POSITIVE + NEGATIVE]
    assert moving
    for entry in moving:
        measured = measurement(dataset, entry)
        prior, follow = dataset.image(entry, "prior"), dataset.image(entry, "follow-up")
        change = measured.measure(follow) - measured.measure(prior)
        assert np.sign(change) == (1 if entry["labels"]["direction"] in POSITIVE else -1), entry["labels"]
        elsewhere = prior.copy()
        elsewhere[measured.keep] = 1 - elsewhere[measured.keep]  # everything outside the change, inverted
        assert measured.measure(elsewhere) == measured.measure(prior)
        assert not measured.keep[np.asarray(Image.open(tmp_path / entry["change-mask"])) > 0].any()


def test_cli_make_dataset_backgrounds(backgrounds: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["make-dataset", "--backgrounds", str(backgrounds), "--n", "6", "--size", "32",
                 "--out", str(tmp_path / "data")]) == 0
    assert "6 on real films" in capsys.readouterr().out
    assert main(["make-dataset", "--phantom-fraction", "0.5", "--n", "2", "--out", str(tmp_path / "x")]) == 2
    assert "needs --backgrounds" in capsys.readouterr().err


def git_repo(root: Path, files: dict[str, bytes], *, bare: bool = False) -> Path:
    """A repository with ``files`` committed; a bare clone of it if asked (what the mirrors are)."""
    work = committed_repo(root / "work", files)
    return bare_clone(work, root / "mirror.git") if bare else work


def rgba_png() -> bytes:
    grey = np.round(phantom_film(0, 64) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)]), "RGBA").save(out, format="PNG")
    return out.getvalue()


def one_row_manifest(path: Path, digest: str) -> Path:
    row = {"id": "nih-00000001_000", "source": "jrzech/reproduce-chexnet", "path": "starter_images/00000001_000.png",
           "sha256": digest, "licence": "NIH ChestX-ray14 terms", "patient": "nih:1", "view": "PA", "age": "40",
           "sex": "F", "labels": "No Finding", "split": "test", "role": "background"}
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(row))
        writer.writeheader()
        writer.writerow(row)
    return path


def build(tmp_path: Path, repo: Path, manifest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BUILDER), "--chexnet", str(repo), "--out", str(tmp_path / "out"),
                           "--size", "32", "--manifest", str(manifest)], capture_output=True, text=True)


@pytest.mark.parametrize("bare", [False, True], ids=["clone", "bare-mirror"])
def test_builder_writes_verified_greyscale_films(tmp_path: Path, bare: bool) -> None:
    data = rgba_png()
    repo = git_repo(tmp_path, {"starter_images/00000001_000.png": data}, bare=bare)
    done = build(tmp_path, repo, one_row_manifest(tmp_path / "m.csv", hashlib.sha256(data).hexdigest()))
    assert done.returncode == 0, done.stderr
    film = Image.open(tmp_path / "out" / "test" / "nih-00000001_000.png")
    assert (film.mode, film.size) == ("L", (32, 32))
    index = json.loads((tmp_path / "out" / "backgrounds.json").read_text())
    assert [(i["id"], i["patient"], i["split"], i["view"]) for i in index["items"]] == [
        ("nih-00000001_000", "nih:1", "test", "PA")]


def test_builder_refuses_a_hash_mismatch(tmp_path: Path) -> None:
    repo = git_repo(tmp_path, {"starter_images/00000001_000.png": rgba_png()}, bare=True)
    done = build(tmp_path, repo, one_row_manifest(tmp_path / "m.csv", "0" * 64))
    assert done.returncode == 2
    assert "sha256 mismatch" in done.stderr and "starter_images/00000001_000.png" in done.stderr
    assert not (tmp_path / "out" / "backgrounds.json").exists()


def test_builder_refuses_a_missing_repository(tmp_path: Path) -> None:
    done = build(tmp_path, tmp_path / "nowhere", one_row_manifest(tmp_path / "m.csv", "0" * 64))
    assert done.returncode == 2 and "no such directory" in done.stderr
