"""Prior images for tests, built with the project's own synthetic builder and DCMTK's compressors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom


def chest_pixels(rows: int = 200, columns: int = 160, bits: int = 12) -> np.ndarray:
    """A smooth chest-like pattern with a bright centre and darker lung fields."""
    y, x = np.mgrid[0:rows, 0:columns] / np.array([[rows], [columns]]).reshape(2, 1, 1)
    lungs = np.exp(-(((x - 0.3) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2)) + np.exp(
        -(((x - 0.7) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2))
    values = (0.8 - 0.6 * lungs) * (2**bits - 1)
    return np.clip(values, 0, 2**bits - 1).astype(np.uint16 if bits > 8 else np.uint8)


def write(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def dcmtk_compress(source: Path, target: Path, tool: str, *options: str) -> Path:
    """Compress with DCMTK, a real peer: what a PACS would send us."""
    subprocess.run([tool, *options, str(source), str(target)], check=True, capture_output=True)
    return target
