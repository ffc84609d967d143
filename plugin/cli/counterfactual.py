"""``progemu counterfactual`` and ``progemu demo``: one counterfactual from a prior image, written to a folder."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from plugin.cli.options import GENERATION_FIELDS, add_settings_options, sampler, settings
from plugin.cli.progress import StageBars
from plugin.config import DEMO_PRIOR
from plugin.errors import UsageError

if TYPE_CHECKING:
    from dicom_io.reader import PriorImage

DEMO_HYPOTHESIS = "A moderate left pleural effusion has developed."


def register(commands: argparse._SubParsersAction) -> None:
    cf = commands.add_parser("counterfactual", help="generate a counterfactual from a prior DICOM image")
    cf.add_argument("prior", type=Path, help="the prior image (CR, DX or grayscale SC)")
    cf.add_argument("--hypothesis", required=True, help='e.g. "the left pleural effusion worsens"')
    cf.add_argument("--out", type=Path, default=Path("progemu-output"), help="output directory")
    add_settings_options(cf, GENERATION_FIELDS)
    _add_override(cf)
    cf.set_defaults(handler=_run)

    demo = commands.add_parser("demo", help="run on the shipped synthetic prior with the shipped demo model")
    demo.add_argument("--hypothesis", default=DEMO_HYPOTHESIS, help=f'default: "{DEMO_HYPOTHESIS}"')
    demo.add_argument("--out", type=Path, default=Path("progemu-demo"), help="output directory")
    add_settings_options(demo, GENERATION_FIELDS)
    _add_override(demo)
    demo.set_defaults(handler=_run, prior=DEMO_PRIOR)


def _add_override(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-out-of-distribution", action="store_true",
                        help="research only: generate even for a prior outside what the model was trained on; "
                             "the override and the prior's score are recorded in every output")


def _read_prior(path: Path, max_pixels: int) -> PriorImage:
    """The prior, read and checked before the model loads: a malformed file is refused at once, in one line."""
    from dicom_io.reader import check_patient_record, read_prior

    prior = read_prior(path, max_pixels=max_pixels)
    check_patient_record(prior.dataset)
    return prior


def _run(args: argparse.Namespace) -> None:
    if not args.prior.is_file():
        raise UsageError(f"prior image {args.prior} does not exist")
    config = settings(args)
    request = sampler(args, config)
    prior = _read_prior(args.prior, config.max_image_pixels)

    from inference.model import quiet_transformers  # torch: only once the request is known to be good
    from plugin.counterfactual import load_use_case, write_outputs

    started = time.perf_counter()
    quiet_transformers()
    service = load_use_case(config)
    with StageBars("tok", leave=False) as bars:
        outputs = service.run(prior, args.hypothesis, request,
                              allow_out_of_distribution=args.allow_out_of_distribution,
                              progress=lambda done, total: bars("generating", done, total))
    paths = write_outputs(outputs, args.out)
    result = outputs.result
    print(f"wrote {', '.join(p.name for p in paths.values())} to {args.out} in {time.perf_counter() - started:.1f} s"
          f" | {outputs.algorithm.name} {outputs.algorithm.version} ({service.pipeline.engine.name})"
          f" | seed {result.settings.seed}"
          f" | {result.generated_tokens} tokens in {result.seconds:.1f} s"
          f" | interpretation: {result.interpretation[:120]!r}")
    checks = outputs.checks
    if checks.flagged:
        print(f"progemu: warning: the result is marked {checks.consistency.summary}; input: {checks.input.summary}",
              file=sys.stderr)
