"""Measure the input gate's content check: how many held-out frontal films pass, how many foreign images it refuses.

    python scripts/real_data/measure_gate.py [--model CKPT] [--backgrounds DIR [--split test]] [--ood DIR]
                                             [--json OUT] [--engine auto|torch|onnx] [--device auto|cpu|cuda]

--backgrounds is a folder from build_backgrounds.py: its frontal films (view PA or AP, every role) of the chosen
splits (default test; --split test,val for more) are what the gate should pass. --ood is a folder from
build_ood_set.py: lateral chest radiographs, radiographs of other body parts and non-radiographs, which it should
refuse. Either may be omitted. The images are PNGs, without any DICOM header, so only the content check decides.

This measures the real gate, not a copy of it: the checkpoint loads as the node loads it (load_pipeline with the
configured engine), every image is read as `progemu calibrate --images` reads a PNG (plugin.cli.model_tools), is
letterboxed to the model's grid by dicom_io.geometry.to_square and scored by pipeline.assess_prior, as
plugin/counterfactual.py does before generating, against the calibration stored in the checkpoint's progemu.json.
The Markdown table goes to stdout; --json writes every image's score and components too.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from build_ood_set import CATEGORIES, INDEX_FILE

from dicom_io.geometry import to_square
from inference.checkpoint import checkpoint_identity
from inference.loading import load_pipeline
from inference.model import quiet_transformers
from plugin.cli.model_tools import image_pixels
from plugin.cli.options import add_settings_options, settings
from plugin.cli.progress import StageBars

log = logging.getLogger("measure_gate")

FRONTAL = "frontal"
"""The category of the held-out real frontal films: the only one the gate should pass."""
FRONTAL_VIEWS = frozenset({"PA", "AP"})
TARGET = 0.95
"""The requirement: at least 95% of frontal films pass, at least 95% of each foreign category are refused."""
BACKGROUNDS_INDEX = "backgrounds.json"


class MeasureError(Exception):
    """A reason to stop before scoring anything."""


@dataclass(frozen=True)
class Image:
    id: str
    category: str
    source: str
    file: Path


@dataclass(frozen=True)
class Scored:
    image: Image
    score: float
    passed: bool
    components: dict[str, float]


def frontal_images(folder: Path, splits: list[str]) -> list[Image]:
    """The PA and AP films of ``splits`` in a build_backgrounds.py folder, every role."""
    index_path = folder / BACKGROUNDS_INDEX
    if not index_path.is_file():
        raise MeasureError(f"--backgrounds {folder}: no {BACKGROUNDS_INDEX} (build it with build_backgrounds.py)")
    items = json.loads(index_path.read_text())["items"]
    chosen = [Image(item["id"], FRONTAL, f"{item['source']} ({item['role']}, {item['split']})", folder / item["file"])
              for item in items if item["split"] in splits and item["view"] in FRONTAL_VIEWS]
    if not chosen:
        raise MeasureError(f"--backgrounds {folder}: no PA or AP film in split(s) {', '.join(splits)}")
    return chosen


def ood_images(folder: Path) -> list[Image]:
    """Every image of a build_ood_set.py folder."""
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        raise MeasureError(f"--ood {folder}: no {INDEX_FILE} (build it with build_ood_set.py)")
    items = json.loads(index_path.read_text())["items"]
    return [Image(item["id"], item["category"], item["source"], folder / item["file"]) for item in items]


def read_pixels(images: list[Image], max_pixels: int) -> Iterator[tuple[Image, np.ndarray]]:
    """Each image with its pixels as `progemu calibrate --images` reads them, folder by folder in its own order.

    Refuses at once (not when first iterated) if an indexed image is missing.
    """
    missing = [image.file for image in images if not image.file.is_file()]
    if missing:
        raise MeasureError(f"{len(missing)} indexed images are missing, e.g. {missing[0]}")
    return _read(images, max_pixels)


def _read(images: list[Image], max_pixels: int) -> Iterator[tuple[Image, np.ndarray]]:
    for image in images:
        yield image, image_pixels(image.file, max_pixels)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def table(results: list[Scored], limit: float | None) -> str:
    """The Markdown table: one row per category, then all foreign images together."""
    order = [FRONTAL, *CATEGORIES]
    groups = {name: [r for r in results if r.image.category == name] for name in order}
    foreign = [r for r in results if r.image.category != FRONTAL]
    rows = [(name, groups[name]) for name in order if groups[name]]
    if len({r.image.category for r in foreign}) > 1:
        rows.append(("all foreign", foreign))
    limit_text = "none (uncalibrated)" if limit is None else f"{limit:.2f}"
    lines = ["| category | n | passed | refused | pass rate | refusal rate | score median | p5 | p95 | limit | "
             "target | met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, group in rows:
        n = len(group)
        passed = sum(r.passed for r in group)
        scores = [r.score for r in group]
        if name == FRONTAL:
            target, met = f"pass >= {TARGET:.0%}", passed / n >= TARGET
        else:
            target, met = f"refuse >= {TARGET:.0%}", (n - passed) / n >= TARGET
        lines.append(f"| {name} | {n} | {passed} | {n - passed} | {passed / n:.1%} | {(n - passed) / n:.1%} | "
                     f"{percentile(scores, 50):.2f} | {percentile(scores, 5):.2f} | {percentile(scores, 95):.2f} | "
                     f"{limit_text} | {target} | {'yes' if met else 'no'} |")
    return "\n".join(lines)


def by_source(results: list[Scored]) -> str:
    """A second table: the same counts per category and source, to see which kind of image gets through."""
    keys = sorted({(r.image.category, r.image.source) for r in results})
    lines = ["| category | source | n | passed | refused | score median |", "|---|---|---|---|---|---|"]
    for category, source in keys:
        group = [r for r in results if (r.image.category, r.image.source) == (category, source)]
        passed = sum(r.passed for r in group)
        lines.append(f"| {category} | {source} | {len(group)} | {passed} | {len(group) - passed} | "
                     f"{percentile([r.score for r in group], 50):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_settings_options(parser, ("model_path", "engine", "device", "max_image_pixels"))
    parser.add_argument("--backgrounds", type=Path, help="a build_backgrounds.py folder: its frontal films")
    parser.add_argument("--split", default="test", help="splits of --backgrounds to use, comma-separated")
    parser.add_argument("--ood", type=Path, help="a build_ood_set.py folder")
    parser.add_argument("--json", type=Path, help="write every image's score and components here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.backgrounds is None and args.ood is None:
        parser.error("give --backgrounds, --ood or both")
    config = settings(args)
    try:
        images = []
        if args.backgrounds is not None:
            images += frontal_images(args.backgrounds, args.split.split(","))
        if args.ood is not None:
            images += ood_images(args.ood)
        stream = read_pixels(images, config.max_image_pixels)
        quiet_transformers()
        pipeline = load_pipeline(config.model_path, config.engine_options())
        calibration = pipeline.calibration
        limit = None if calibration is None else calibration.limit
        log.info("%s (%s, %s engine), limit %s; %d images", config.model_path, pipeline.model.spec.version,
                 pipeline.engine.name, "none" if limit is None else f"{limit:.2f}", len(images))
        results = []
        totals = Counter(image.category for image in images)
        done = Counter[str]()
        with StageBars("image") as bars:
            for image, pixels in stream:
                square, _ = to_square(pixels, pipeline.image_size)
                assessment = pipeline.assess_prior(square)
                results.append(Scored(image, assessment.score, assessment.within_limit, assessment.components))
                done[image.category] += 1
                bars(image.category, done[image.category], totals[image.category])
    except MeasureError as error:
        print(f"measure_gate: {error}", file=sys.stderr)
        return 2
    identity = checkpoint_identity(config.model_path)
    print(f"Gate content check: {pipeline.model.spec.name} {pipeline.model.spec.version} "
          f"(checkpoint sha256 {identity[:12]}), {pipeline.engine.name} engine, limit "
          f"{'none' if limit is None else f'{limit:.2f}'}"
          f"{'' if calibration is None else f' (q {calibration.quantile:g}, {calibration.images} images)'}\n")
    print(table(results, limit))
    print()
    print(by_source(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": str(config.model_path), "version": pipeline.model.spec.version, "checkpoint_sha256": identity,
            "engine": pipeline.engine.name, "limit": limit,
            "images": [{"id": r.image.id, "category": r.image.category, "source": r.image.source,
                        "file": str(r.image.file), "score": r.score, "passed": r.passed,
                        "components": r.components} for r in results]}, indent=1) + "\n")
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
