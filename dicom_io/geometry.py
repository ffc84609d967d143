"""Map an image to the model's square grid keeping its aspect (letterbox), and back to the source geometry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Letterbox:
    """Where the source image sits inside the square: what is needed to undo the mapping."""

    source_shape: tuple[int, int]
    size: int
    top: int
    left: int
    height: int
    width: int


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased resampling in float: Pillow's 'F' mode (from a float32 array) keeps the full precision."""
    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize((width, height),
                                                                                  Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.float32)


def to_square(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Scale the longer side to ``size`` and pad the shorter one with zeros, centred.

    Keeping the aspect matters: a stretched chest changes heart and lung proportions the model reads as findings.
    """
    if image.ndim != 2 or size < 1:
        raise ValueError(f"need a 2-D image and a positive size, got shape {image.shape} and size {size}")
    rows, columns = image.shape
    scale = size / max(rows, columns)
    height, width = max(1, round(rows * scale)), max(1, round(columns * scale))
    top, left = (size - height) // 2, (size - width) // 2
    square = np.zeros((size, size), dtype=np.float32)
    square[top:top + height, left:left + width] = np.clip(_resize(image, height, width), 0.0, 1.0)
    return square, Letterbox((rows, columns), size, top, left, height, width)


def from_square(square: np.ndarray, box: Letterbox) -> np.ndarray:
    """Crop the content box and resize it back to the source rows and columns."""
    if square.shape != (box.size, box.size):
        raise ValueError(f"expected a {box.size}x{box.size} square, got shape {square.shape}")
    content = square[box.top:box.top + box.height, box.left:box.left + box.width]
    return np.clip(_resize(content, *box.source_shape), 0.0, 1.0)
