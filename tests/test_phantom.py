"""Chest phantoms: determinism, findings that change only their region, measurements that track severity."""

import dataclasses

import numpy as np
import pytest

from inference.data.phantom import ZONE_NAMES, Findings, finding_mask, measure_findings, render_chest, sample_anatomy

ANATOMIES = [sample_anatomy(np.random.default_rng(seed)) for seed in range(4)]
SCALAR_FINDINGS = ["effusion_left", "effusion_right", "cardiomegaly", "pneumothorax_left", "pneumothorax_right",
                   "oedema"]


def with_severity(name: str, severity: int) -> Findings:
    if name.startswith("consolidation_"):
        zones = [0] * 6
        zones[ZONE_NAMES.index(name.removeprefix("consolidation_"))] = severity
        return Findings(consolidation=tuple(zones))
    return dataclasses.replace(Findings(), **{name: severity})


def test_same_seed_same_image_and_range() -> None:
    a = render_chest(ANATOMIES[0], Findings(effusion_left=2), 128, np.random.default_rng(1))
    b = render_chest(ANATOMIES[0], Findings(effusion_left=2), 128, np.random.default_rng(1))
    c = render_chest(ANATOMIES[0], Findings(effusion_left=2), 128, np.random.default_rng(2))
    assert a.dtype == np.float32 and a.shape == (128, 128)
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_patients_differ() -> None:
    images = [render_chest(a, Findings(), 64, np.random.default_rng(0)) for a in ANATOMIES]
    assert all(np.abs(images[0] - other).mean() > 0.01 for other in images[1:])


@pytest.mark.parametrize("name", SCALAR_FINDINGS + [f"consolidation_{z}" for z in ZONE_NAMES])
def test_measurement_rises_with_severity(name: str) -> None:
    for anatomy in ANATOMIES:
        values = [measure_findings(render_chest(anatomy, with_severity(name, s), 128, np.random.default_rng(5)),
                                   anatomy)[name] for s in range(4)]
        assert all(np.diff(values) > 0), (name, values)


@pytest.mark.parametrize("name", ["effusion", "pneumothorax"])
def test_sided_findings_change_their_own_side(name: str) -> None:
    anatomy = ANATOMIES[1]
    clean = measure_findings(render_chest(anatomy, Findings(), 128, np.random.default_rng(0)), anatomy)
    left = measure_findings(render_chest(anatomy, with_severity(f"{name}_left", 3), 128, np.random.default_rng(0)),
                            anatomy)
    assert left[f"{name}_left"] - clean[f"{name}_left"] > 0.02
    assert abs(left[f"{name}_right"] - clean[f"{name}_right"]) < 0.005
    image = render_chest(anatomy, with_severity(f"{name}_left", 3), 128, np.random.default_rng(0))
    diff = np.abs(image - render_chest(anatomy, Findings(), 128, np.random.default_rng(0)))
    assert diff[:, 64:].sum() > 10 * diff[:, :64].sum()  # the patient's left is the image's right


def test_follow_up_differs_only_inside_the_finding_mask() -> None:
    anatomy = ANATOMIES[2]
    prior, follow = Findings(cardiomegaly=1, effusion_right=1), Findings(cardiomegaly=1, effusion_right=3)
    a = render_chest(anatomy, prior, 128, np.random.default_rng(9))
    b = render_chest(anatomy, follow, 128, np.random.default_rng(9))
    mask = finding_mask(anatomy, prior, follow, 128)
    assert mask.any() and mask.mean() < 0.25
    assert np.abs(a - b)[~mask].max() < 0.02
    assert np.abs(a - b)[mask].max() > 0.2


def test_full_resolution_renders() -> None:
    image = render_chest(ANATOMIES[3], Findings(oedema=2), 512, np.random.default_rng(0))
    assert image.shape == (512, 512) and 0.2 < image.mean() < 0.7
