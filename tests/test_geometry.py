"""Letterboxing to the model grid and back."""

import numpy as np
import pytest

from dicom_io.geometry import from_square, to_square


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (256, 256), (1000, 37)])
def test_round_trip_restores_the_source_shape(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    square, box = to_square(image, 128)
    assert square.shape == (128, 128)
    back = from_square(square, box)
    assert back.shape == shape


def test_aspect_is_kept_and_padding_is_zero() -> None:
    image = np.full((300, 150), 0.7, dtype=np.float32)
    square, box = to_square(image, 128)
    assert (box.height, box.width) == (128, 64) and (box.top, box.left) == (0, 32)
    assert np.all(square[:, :32] == 0) and np.all(square[:, 96:] == 0)
    np.testing.assert_allclose(square[:, 40:88], 0.7, atol=1e-5)


def test_smooth_content_survives_the_round_trip() -> None:
    y, x = np.mgrid[0:400, 0:300] / 400.0
    image = (0.5 + 0.4 * np.sin(3 * x) * np.cos(2 * y)).astype(np.float32)
    square, box = to_square(image, 256)
    assert np.abs(from_square(square, box) - image).mean() < 0.01
