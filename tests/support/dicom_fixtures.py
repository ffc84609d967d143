"""Prior images for tests, built with the project's own synthetic builder and DCMTK's compressors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom

TEST_PHI: tuple[str, ...] = (
    "DOE^JANE", "MRN-778899", "19510203",  # tests/test_cli.py
    "MRN-998877", "19451231",  # tests/test_node.py, tests/test_retention.py
    "MRN12345", "19610203",  # tests/test_reader.py
    "PHANTOM^CHEST", "PHANTOM-0001", "19700101",  # dicom_io.synthetic.build_synthetic_image's defaults
    "PHANTOM^DEMO", "PHANTOM-DEMO-0001",  # the shipped demo prior, which tests/support/studies.py copies
    "PHANTOM^X", "SC-TEST-1", "SR-TEST-1", "RP-TEST-1", "FHIR-TEST-1",  # single tests' priors
    "FUZZ^PRIOR", "FUZZ-0001",  # benchmarks/reliability.py's priors, which tests mutate
)
"""Patient names, IDs and birth dates that tests write into DICOM objects: none may reach a log record.

tests/conftest.py checks every record of a test session against them.
"""


def chest_pixels(rows: int = 200, columns: int = 160, bits: int = 12) -> np.ndarray:
    """A smooth chest-like pattern with a bright centre and darker lung fields."""
    y, x = np.mgrid[0:rows, 0:columns] / np.array([[rows], [columns]]).reshape(2, 1, 1)
    lungs = np.exp(-(((x - 0.3) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2)) + np.exp(
        -(((x - 0.7) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2))
    values = (0.8 - 0.6 * lungs) * (2**bits - 1)
    return np.clip(values, 0, 2**bits - 1).astype(np.uint16 if bits > 8 else np.uint8)


def phantom_pixels(size: int = 256, bits: int = 12, seed: int = 5) -> np.ndarray:
    """A chest phantom as the demo model was trained on it: a prior its calibrated input gate accepts.

    ``chest_pixels`` is a cartoon the gate rightly refuses; tests that run the demo model on a prior use this.
    """
    from inference.data.phantom import Findings, render_chest, sample_anatomy

    rng = np.random.default_rng(seed)
    image = render_chest(sample_anatomy(rng), Findings(), size, rng)
    return np.round(np.clip(image, 0.0, 1.0) * (2**bits - 1)).astype(np.uint16 if bits > 8 else np.uint8)


def phantom_prior(**attributes: object) -> pydicom.Dataset:
    """``phantom_pixels`` as a DX/CR/SC prior with the full 12-bit window, the contrast the model was trained on
    (a window spanning only the data stretches the contrast, and the gate rightly refuses that prior)."""
    from dicom_io.synthetic import build_synthetic_image

    return build_synthetic_image(phantom_pixels(), window=(2048.0, 4096.0), **attributes)


def write(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def dcmtk_compress(source: Path, target: Path, tool: str, *options: str) -> Path:
    """Compress with DCMTK, a real peer: what a PACS would send us."""
    subprocess.run([tool, *options, str(source), str(target)], check=True, capture_output=True)
    return target
