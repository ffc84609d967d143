"""Anatomy located on frontal films: lungs on the right sides, heart, domes, midline; loud failure when it cannot.

The films are procedural phantoms (their true anatomy is known), at 256 px, so no real image is needed.
"""

import numpy as np
import pytest

from inference.data.anatomy import AnatomyError, ChestAnatomy, locate_anatomy
from inference.data.phantom import Anatomy, Findings, render_chest, sample_anatomy

SEEDS = (0, 2, 3)


def phantom(seed: int, size: int = 256) -> tuple[Anatomy, np.ndarray]:
    truth = sample_anatomy(np.random.default_rng(seed))
    return truth, render_chest(truth, Findings(), size, np.random.default_rng(1))


@pytest.fixture(scope="module", params=SEEDS)
def located(request: pytest.FixtureRequest) -> tuple[Anatomy, ChestAnatomy]:
    truth, film = phantom(request.param)
    return truth, locate_anatomy(film)


def centre_x(mask: np.ndarray) -> float:
    return float(np.nonzero(mask)[1].mean() + 0.5) / mask.shape[1]


def test_two_lungs_on_the_correct_sides(located: tuple[Anatomy, ChestAnatomy]) -> None:
    truth, anatomy = located
    right, left = anatomy.right, anatomy.left
    # display convention: the patient's right lung on the image's left
    assert right.lateral < right.medial < anatomy.midline < left.medial < left.lateral
    assert centre_x(right.mask) == pytest.approx(truth.lung_x("right"), abs=0.04)
    assert centre_x(left.mask) == pytest.approx(truth.lung_x("left"), abs=0.04)
    assert not (right.mask & left.mask).any()
    assert anatomy.midline == pytest.approx(truth.centre_x, abs=0.03)


def test_heart_sits_left_of_the_midline_with_its_ratio(located: tuple[Anatomy, ChestAnatomy]) -> None:
    truth, anatomy = located
    x0, y0, x1, y1 = anatomy.heart
    assert x0 < anatomy.midline < x1
    assert anatomy.heart_centre[0] > anatomy.midline  # two thirds of the heart on the patient's left
    assert anatomy.ctr == pytest.approx(truth.heart_ratio, abs=0.05)
    assert y0 < y1 <= max(truth.dome_right_y, truth.dome_left_y) + 0.05


def test_domes_and_costophrenic_angles(located: tuple[Anatomy, ChestAnatomy]) -> None:
    truth, anatomy = located
    for lung in (anatomy.right, anatomy.left):
        assert lung.dome[1] == pytest.approx(truth.dome_y(lung.side), abs=0.06)
        assert lung.apex < truth.apex_y + 0.05
        # the angle is lateral to the dome and at least as low
        assert (lung.costophrenic[0] - lung.dome[0]) * lung.outward > 0
        assert lung.costophrenic[1] >= lung.dome[1] - 0.01


def test_robust_to_exposure() -> None:
    truth, film = phantom(SEEDS[0])
    reference = locate_anatomy(film)
    for exposed in (0.2 + 0.5 * film, film**1.6, np.round(film * 255).astype(np.uint8)):
        other = locate_anatomy(exposed)
        for side in ("right", "left"):
            a, b = reference.lung(side).mask, other.lung(side).mask
            assert (a & b).sum() / (a | b).sum() > 0.85


def test_fitted_phantom_anatomy_matches(located: tuple[Anatomy, ChestAnatomy]) -> None:
    truth, anatomy = located
    fitted = anatomy.as_phantom()
    assert fitted.centre_x == pytest.approx(truth.centre_x, abs=0.03)
    assert fitted.lung_x("left") == pytest.approx(truth.lung_x("left"), abs=0.04)
    assert fitted.dome_y("right") == pytest.approx(truth.dome_right_y, abs=0.06)


@pytest.mark.parametrize("film", [np.full((256, 256), 0.5, np.float32),
                                  np.random.default_rng(0).uniform(0, 1, (256, 256)).astype(np.float32)],
                         ids=["flat", "noise"])
def test_no_chest_fails_loudly(film: np.ndarray) -> None:
    with pytest.raises(AnatomyError):
        locate_anatomy(film)


def test_a_white_hemithorax_fails_loudly() -> None:
    """A film with one lung lost (here: whited out as if by a massive effusion) has no pair of lungs."""
    _, film = phantom(SEEDS[0])
    film = film.copy()
    film[:, : film.shape[1] // 2 - 10] = np.maximum(film[:, : film.shape[1] // 2 - 10], 0.7)
    with pytest.raises(AnatomyError):
        locate_anatomy(film)
