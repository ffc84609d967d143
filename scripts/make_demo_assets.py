"""Make the assets `progemu demo` ships with: a synthetic DX prior study and the default checkpoint.

    python scripts/make_demo_assets.py --model /path/to/trained-checkpoint   # copy a trained demo model
    python scripts/make_demo_assets.py --random                              # a random-init stand-in

The prior is a procedural chest phantom (no patient data), marked as synthetic
in its header, 1024 x 1024 at 0.35 mm as a DX "for presentation".
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np

from dicom_io.synthetic import build_synthetic_image
from inference.checkpoint import ONNX_DIR, write_manifest
from inference.data.phantom import Findings, render_chest, sample_anatomy
from inference.model import ModelSpec, build_small_progemu, save_progemu
from plugin.config import DEMO_MODEL, DEMO_PRIOR

log = logging.getLogger("make_demo_assets")
DEMO_PATIENT_SEED = 20251124


def make_prior(path: Path) -> None:
    anatomy = sample_anatomy(np.random.default_rng(DEMO_PATIENT_SEED))
    image = render_chest(anatomy, Findings(), 1024, np.random.default_rng(DEMO_PATIENT_SEED + 1))
    # The full 12-bit window shows the phantom as rendered, the intensities the model was trained on; a window
    # spanning only the data would stretch its contrast, and the model then mistakes the heart for something else.
    ds = build_synthetic_image(np.round(image * 4095).astype(np.uint16), pixel_spacing_mm=0.35, window=(2048.0, 4096.0),
                               patient_name="PHANTOM^DEMO", patient_id="PHANTOM-DEMO-0001",
                               accession_number="DEMO0001", study_description="Synthetic chest phantom (demo)")
    ds.save_as(path, enforce_file_format=True)
    log.info("wrote %s", path)


def install_model(source: Path | None) -> None:
    if DEMO_MODEL.exists():
        shutil.rmtree(DEMO_MODEL)
    if source is None:
        network, tokenizer = build_small_progemu(seed=0)
        save_progemu(network, tokenizer, ModelSpec(version="random-init-0.1", image_size=128, max_text_tokens=64),
                     DEMO_MODEL)
    else:
        shutil.copytree(source, DEMO_MODEL, ignore=shutil.ignore_patterns(ONNX_DIR, "*.work"))
        write_manifest(DEMO_MODEL)
    log.info("installed the demo model in %s", DEMO_MODEL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", type=Path, help="a trained checkpoint to ship as the demo model")
    group.add_argument("--random", action="store_true", help="ship a random-init stand-in")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    make_prior(DEMO_PRIOR)
    if args.model or args.random:
        install_model(args.model)


if __name__ == "__main__":
    main()
