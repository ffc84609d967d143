"""Draw docs/images/demo-real.png: the demo model on held-out real radiographs, one worsening per finding.

    python scripts/real_data/make_demo_figure.py --data DIR [--model CKPT] [--out docs/images/demo-real.png]

DIR is a `progemu make-dataset --backgrounds` folder; its test split holds films of patients no training record
came from. For each finding the first test record that hypothesises it developing or worsening is run with the
default sampler settings and seed, as `progemu evaluate` runs it, and drawn beside the simulated ground truth.
The films are NIH ChestX-ray14 images, shown modified (findings simulated and generated; see NOTICE).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from inference.data.dataset import Dataset  # noqa: E402
from inference.evaluation.evaluate import example_grid  # noqa: E402
from inference.loading import EngineOptions, load_pipeline  # noqa: E402
from inference.model import quiet_transformers  # noqa: E402
from inference.sampler import SamplerSettings  # noqa: E402
from plugin.config import DEMO_MODEL  # noqa: E402

log = logging.getLogger("make_demo_figure")
FINDINGS = ("effusion", "cardiomegaly", "pneumothorax", "consolidation", "oedema")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "demo-real.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    quiet_transformers()
    dataset = Dataset.open(args.data)
    pipeline = load_pipeline(args.model, EngineOptions(engine="torch"))
    test = [r for r in dataset.split("test") if r["id"].startswith("real-")
            and r["labels"]["direction"] in ("develops", "worsens")]
    examples = []
    for finding in FINDINGS:
        entry = next(r for r in test if r["labels"]["finding"] == finding)
        prior, follow = dataset.image(entry, "prior"), dataset.image(entry, "follow-up")
        result = pipeline.run(prior, entry["progression-description"], SamplerSettings())
        log.info("%s (%s): %s", finding, entry["id"], result.interpretation)
        examples.append((prior, result.image, follow, entry["progression-description"], result.interpretation))
    example_grid(examples, args.out, count=len(examples))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
