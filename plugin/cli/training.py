"""``progemu make-dataset``, ``train`` and ``evaluate``: the demo model's data, training and scoring."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from inference.loading import load_pipeline
from plugin.cli.options import GENERATION_FIELDS, add_settings_options, sampler, settings
from plugin.cli.progress import StageBars
from plugin.errors import UsageError

if TYPE_CHECKING:
    from inference.training.run import TrainConfig


def register(commands: argparse._SubParsersAction) -> None:
    dataset = commands.add_parser("make-dataset", help="render a synthetic ICG-style longitudinal dataset")
    dataset.add_argument("--out", type=Path, required=True)
    dataset.add_argument("--n", type=int, required=True, help="number of (prior, follow-up) records")
    dataset.add_argument("--seed", type=int, default=0)
    dataset.add_argument("--size", type=int, default=128, help="image side in pixels")
    dataset.add_argument("--backgrounds", type=Path, metavar="DIR",
                         help="simulate the findings on the real radiographs of DIR (made by "
                              "scripts/real_data/build_backgrounds.py) instead of on phantoms; records keep each "
                              "film's train/val/test split")
    dataset.add_argument("--phantom-fraction", type=float, default=0.0, metavar="F",
                         help="with --backgrounds: this share of the records stays on phantoms (default 0)")
    dataset.set_defaults(handler=_make_dataset)

    train = commands.add_parser("train", help="train the demo model (VQ tokenizer, language model, refine)")
    train.add_argument("--data", type=Path, required=True, help="a make-dataset directory")
    train.add_argument("--out", type=Path, required=True, help="the checkpoint to write")
    train.add_argument("--work", type=Path, help="resumable state, loss history and curves (default: OUT.work)")
    train.add_argument("--vq-steps", type=int)
    train.add_argument("--lm-steps", type=int)
    train.add_argument("--changed-token-weight", type=float,
                       help="language-model stage: loss weight of follow-up codes that differ from the prior's "
                            "(default 1: a plain mean)")
    train.add_argument("--refine-steps", type=int, help="steps of the weighted refine stage (0 skips it)")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--from", dest="start_from", type=Path, metavar="CHECKPOINT",
                       help="take the VQ tokenizer and language model from this trained checkpoint; refine only")
    start.add_argument("--warm-start", type=Path, metavar="CHECKPOINT",
                       help="run every stage, each starting from this trained checkpoint's weights")
    train.add_argument("--version", help="the version the checkpoint reports (default: the recipe's)")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="score a model on a dataset's held-out split, CFG on and off")
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--out", type=Path, required=True)
    evaluate.add_argument("--limit", type=int, default=100, help="held-out records to score")
    add_settings_options(evaluate, GENERATION_FIELDS)
    evaluate.set_defaults(handler=_evaluate)


def _make_dataset(args: argparse.Namespace) -> None:
    from inference.data.dataset import make_dataset

    if args.phantom_fraction and not args.backgrounds:
        raise UsageError("--phantom-fraction needs --backgrounds (without it every record is a phantom)")
    if not 0.0 <= args.phantom_fraction <= 1.0:
        raise UsageError("--phantom-fraction must be between 0 and 1")
    if args.backgrounds and not args.backgrounds.is_dir():
        raise UsageError(f"--backgrounds {args.backgrounds} is not a directory (build one with "
                         "scripts/real_data/build_backgrounds.py)")
    with StageBars() as bars:
        records = make_dataset(args.out, args.n, args.seed, size=args.size, progress=bars,
                               backgrounds=args.backgrounds, phantom_fraction=args.phantom_fraction)
    splits = Counter(r["split"] for r in records)
    real = sum(r["id"].startswith("real-") for r in records)
    parts = ", ".join(f"{splits[name]} {label}" for name, label in (("train", "train"), ("val", "validation"),
                                                                   ("test", "held out")) if splits[name])
    print(f"wrote {len(records)} records ({parts}; {real} on real films) to {args.out}")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The recipe's defaults with what the command line overrides."""
    from inference.training.run import TrainConfig

    config = TrainConfig()
    weight = config.lm.changed_token_weight if args.changed_token_weight is None else args.changed_token_weight
    return dataclasses.replace(
        config,
        vq=dataclasses.replace(config.vq, steps=args.vq_steps or config.vq.steps, seed=args.seed),
        lm=dataclasses.replace(config.lm, steps=args.lm_steps or config.lm.steps, seed=args.seed,
                               changed_token_weight=weight),
        refine=config.refine if args.refine_steps is None else dataclasses.replace(config.refine,
                                                                                   steps=args.refine_steps),
        version=args.version or config.version)


def _train(args: argparse.Namespace) -> None:
    from inference.training.run import train_demo_model

    config = train_config(args)
    work = args.work or args.out.with_name(args.out.name + ".work")
    started = time.perf_counter()
    with StageBars() as bars:
        identity = train_demo_model(args.data, args.out, work, config, start_from=args.start_from,
                                    warm_start=args.warm_start, progress=bars)
    print(f"trained {args.out} in {(time.perf_counter() - started) / 60:.1f} min (checkpoint sha256 {identity}); "
          f"loss curves in {work}")


def _evaluate(args: argparse.Namespace) -> None:
    from inference.data.dataset import Dataset
    from inference.evaluation.evaluate import evaluate
    from inference.model import quiet_transformers

    quiet_transformers()
    config = settings(args)
    pipeline = load_pipeline(config.model_path, config.engine_options(), composition=config.composition)
    with StageBars() as bars:
        report = evaluate(pipeline, Dataset.open(args.data), args.out, limit=args.limit, progress=bars,
                          sampler=sampler(args, config))
    print((args.out / "metrics.md").read_text(), end="")
    print(f"{report['data']['records']} held-out records; details in {args.out / 'metrics.json'}")
