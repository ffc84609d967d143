"""Letterboxing to the model grid and back."""

import numpy as np
import pytest

from dicom_io.geometry import Letterbox, from_square, to_square


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (256, 256), (1000, 37), (64, 64)])
def test_round_trip_restores_the_source_shape(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    square, box = to_square(image, 128)
    assert square.shape == (128, 128) and square.dtype == np.float32
    back = from_square(square, box)
    assert back.shape == shape and back.dtype == np.float32
    assert back.min() >= 0.0 and back.max() <= 1.0  # Lanczos overshoot is clipped


@pytest.mark.parametrize("shape, box", [
    ((300, 150), Letterbox((300, 150), 128, top=0, left=32, height=128, width=64)),  # portrait: pad left/right
    ((150, 300), Letterbox((150, 300), 128, top=32, left=0, height=64, width=128)),  # landscape: pad top/bottom
    ((300, 200), Letterbox((300, 200), 128, top=0, left=21, height=128, width=85)),  # odd padding: 21 + 85 + 22
    ((64, 64), Letterbox((64, 64), 128, top=0, left=0, height=128, width=128)),  # square: upscaled, no padding
])
def test_content_box_keeps_the_aspect(shape: tuple[int, int], box: Letterbox) -> None:
    assert to_square(np.full(shape, 0.5, np.float32), 128)[1] == box


@pytest.mark.parametrize("shape", [(300, 150), (150, 300)])
def test_padding_is_zero_and_content_is_kept(shape: tuple[int, int]) -> None:
    square, box = to_square(np.full(shape, 0.7, dtype=np.float32), 128)
    content = np.zeros_like(square, dtype=bool)
    content[box.top:box.top + box.height, box.left:box.left + box.width] = True
    assert np.all(square[~content] == 0)
    np.testing.assert_allclose(square[content], 0.7, atol=1e-5)


def test_smooth_content_survives_the_round_trip() -> None:
    y, x = np.mgrid[0:400, 0:300] / 400.0
    image = (0.5 + 0.4 * np.sin(3 * x) * np.cos(2 * y)).astype(np.float32)
    square, box = to_square(image, 256)
    assert np.abs(from_square(square, box) - image).mean() < 0.01


def test_orientation_is_not_flipped() -> None:
    image = np.zeros((200, 100), np.float32)
    image[:50, :25] = 1.0  # a bright top-left corner
    square, box = to_square(image, 64)
    assert square[box.top + 2, box.left + 2] > 0.9 and square[box.top + box.height - 3, box.left + box.width - 3] < 0.1
    assert from_square(square, box)[10, 10] > 0.9


def test_wrong_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        to_square(np.zeros((4, 4, 3), np.float32), 8)
    _, box = to_square(np.zeros((4, 8), np.float32), 8)
    with pytest.raises(ValueError, match="8x8"):
        from_square(np.zeros((16, 16), np.float32), box)
