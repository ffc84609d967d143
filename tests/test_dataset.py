"""The synthetic ICG-style dataset: deterministic by seed, held out by patient, texts that name the change."""

import json
from pathlib import Path

import numpy as np
import pytest

from inference.data.dataset import Dataset, make_dataset
from inference.data.phantom import finding_mask
from inference.evaluation.text_findings import extract


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out = tmp_path_factory.mktemp("synth")
    make_dataset(out, 60, seed=7, size=64)
    return Dataset.open(out)


def test_same_seed_same_dataset(dataset: Dataset, tmp_path: Path) -> None:
    make_dataset(tmp_path, 60, seed=7, size=64)
    assert json.loads((tmp_path / "dataset.json").read_text())["records"] == dataset.records
    first = dataset.records[5]
    assert (tmp_path / first["prior"]).read_bytes() == (dataset.root / first["prior"]).read_bytes()
    make_dataset(tmp_path / "other", 60, seed=8, size=64)
    other = json.loads((tmp_path / "other" / "dataset.json").read_text())["records"]
    assert [r["progression-description"] for r in other] != [r["progression-description"] for r in dataset.records]


def test_records_have_icg_fields_and_labels(dataset: Dataset) -> None:
    entry = dataset.records[0]
    for key in ("prior", "follow-up", "progression-description", "changes-of-findings", "comment", "labels"):
        assert key in entry
    assert {"finding", "side", "zone", "direction", "prior_severity", "followup_severity"} <= set(entry["labels"])
    directions = {r["labels"]["direction"] for r in dataset.records}
    assert directions == {"develops", "worsens", "improves", "resolves", "unchanged"}


def test_test_split_is_held_out_by_patient(dataset: Dataset) -> None:
    train = {r["patient_id"] for r in dataset.split("train")}
    test = {r["patient_id"] for r in dataset.split("test")}
    assert train and not train & test


def test_interpretation_names_the_labelled_change(dataset: Dataset) -> None:
    for entry in dataset.records:
        labels = entry["labels"]
        found = extract(entry["changes-of-findings"])
        assert found is not None, entry["changes-of-findings"]
        assert (found.finding, found.direction) == (labels["finding"], labels["direction"])
        location = labels["zone"] if labels["finding"] == "consolidation" else labels["side"]
        assert found.location == location


def test_pairs_differ_only_in_the_changed_region(dataset: Dataset) -> None:
    for entry in dataset.records[:10]:
        plan = dataset.plan(entry)
        prior, follow = dataset.image(entry, "prior"), dataset.image(entry, "follow-up")
        outside = ~finding_mask(plan.anatomy, plan.prior, plan.followup, 64)
        assert np.abs(prior - follow)[outside].max() <= 0.01 + 2 / 255  # the mask threshold plus 8-bit rounding
        if entry["labels"]["direction"] != "unchanged":
            assert np.abs(prior - follow).max() > 0.05
