"""The ``progemu`` command."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError
from tqdm import tqdm

from dicom_io.errors import DicomInputError
from inference.errors import InferenceError
from inference.sampler import SamplerSettings
from plugin import __version__
from plugin.config import DEMO_PRIOR, Settings
from plugin.errors import UsageError

if TYPE_CHECKING:
    from inference.training.run import TrainConfig

log = logging.getLogger("progemu")

DEMO_HYPOTHESIS = "A moderate left pleural effusion has developed."


def _add_sampler_options(parser: argparse.ArgumentParser, *, with_out: bool = True) -> None:
    if with_out:
        parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--seed", type=int, help="sampling seed (same seed, same output)")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the shipped demo model)")
    parser.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--top-k", type=int, help="top-k sampling (0 = off)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling threshold")
    parser.add_argument("--temperature", type=float, help="sampling temperature (0 = greedy)")
    parser.add_argument("--fhir-version", choices=("R5", "R4B"), help="FHIR release of fhir.json")
    parser.add_argument("--composition", choices=("residual", "decoded"),
                        help="residual (default): the prior plus the model's change; decoded: the decoder's image")
    parser.add_argument("--engine", choices=("auto", "torch", "onnx"),
                        help="generation engine (default auto: ONNX when an export sits next to the checkpoint)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="progemu", description="Counterfactual chest X-ray progression (ProgEmu).")
    parser.add_argument("--version", action="version", version=f"progemu-pacs {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cf = commands.add_parser("counterfactual", help="generate a counterfactual from a prior DICOM image")
    cf.add_argument("prior", type=Path, help="the prior image (CR, DX or grayscale SC)")
    cf.add_argument("--hypothesis", required=True, help='e.g. "the left pleural effusion worsens"')
    _add_sampler_options(cf)

    demo = commands.add_parser("demo", help="run on the shipped synthetic prior with the shipped demo model")
    demo.add_argument("--hypothesis", default=DEMO_HYPOTHESIS, help=f'default: "{DEMO_HYPOTHESIS}"')
    _add_sampler_options(demo)

    export = commands.add_parser("export-onnx", help="export a checkpoint to ONNX (fp32 and fp16) with a manifest")
    export.add_argument("--model", type=Path, help="checkpoint directory (default: the shipped demo model)")
    export.add_argument("--out", type=Path, help="export directory (default: MODEL/onnx, where auto finds it)")
    export.add_argument("--precision", choices=("fp32", "fp16"), action="append",
                        help="only this precision (repeatable; default both)")

    convert = commands.add_parser("convert-checkpoint",
                                  help="convert ProgEmu's/Emu3's original hub layout to the Hugging Face format")
    convert.add_argument("source", type=Path, help="original layout: remote-code Emu3ForCausalLM + emu3.tiktoken")
    convert.add_argument("out", type=Path, help="where the HF-format checkpoint goes")
    convert.add_argument("--vision-tokenizer", type=Path, help="vision tokenizer (default: SOURCE/vision_tokenizer)")
    convert.add_argument("--version", default="progemu", help="model version recorded in every output")
    convert.add_argument("--image-size", type=int, default=512)

    dataset = commands.add_parser("make-dataset", help="render a synthetic ICG-style longitudinal dataset")
    dataset.add_argument("--out", type=Path, required=True)
    dataset.add_argument("--n", type=int, required=True, help="number of (prior, follow-up) records")
    dataset.add_argument("--seed", type=int, default=0)
    dataset.add_argument("--size", type=int, default=128, help="image side in pixels")

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
    train.add_argument("--from", dest="start_from", type=Path, metavar="CHECKPOINT",
                       help="take the VQ tokenizer and language model from this trained checkpoint; refine only")
    train.add_argument("--seed", type=int, default=0)

    evaluate = commands.add_parser("evaluate", help="score a model on a dataset's held-out split, CFG on and off")
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--out", type=Path, required=True)
    evaluate.add_argument("--limit", type=int, default=100, help="held-out records to score")
    _add_sampler_options(evaluate, with_out=False)

    for name, help_text in (("serve", "run the DICOM node: listener, REST API and an embedded worker"),
                            ("listen", "run only the DICOM listener (studies are spooled and handed to workers)")):
        node = commands.add_parser(name, help=help_text)
        _add_node_options(node, api=name == "serve")

    worker = commands.add_parser("worker", help="run a Celery worker (needs PROGEMU_BROKER_URL)")
    worker.add_argument("--queues", help="comma-separated queues (default PROGEMU_WORKER_QUEUES: gpu,io)")
    worker.add_argument("--concurrency", type=int, help="worker processes; each loads the model once")
    worker.add_argument("--broker-url", help="redis://… or amqp://… (env PROGEMU_BROKER_URL)")
    worker.add_argument("--database-url", help="job store (env PROGEMU_DATABASE_URL)")
    worker.add_argument("--data-dir", type=Path, help="shared with the node (env PROGEMU_DATA_DIR)")
    worker.add_argument("--model", type=Path, help="checkpoint directory (default: the shipped demo model)")

    verify = commands.add_parser("verify-onnx", help="compare an ONNX export with its PyTorch checkpoint")
    verify.add_argument("export_dir", type=Path, help="the export directory")
    verify.add_argument("--model", type=Path, help="the checkpoint it came from (default: the shipped demo model)")
    verify.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    verify.add_argument("--seed", type=int, default=0)
    return parser


def _add_node_options(parser: argparse.ArgumentParser, *, api: bool) -> None:
    """Flags of the node; each also has a PROGEMU_* environment variable (plugin/config.py)."""
    parser.add_argument("--ae-title", help="our AE title (env PROGEMU_AE_TITLE)")
    parser.add_argument("--bind-host", help="interface to listen on (env PROGEMU_BIND_HOST; 0.0.0.0 in containers)")
    parser.add_argument("--dicom-port", type=int, help="DICOM port (env PROGEMU_DICOM_PORT)")
    parser.add_argument("--peer", action="append", dest="peers", metavar="AET@HOST:PORT",
                        help="an AE allowed to send to us (repeatable; env PROGEMU_PEERS, comma-separated)")
    parser.add_argument("--pacs-url", help="Orthanc REST URL of the PACS (env PROGEMU_PACS_URL)")
    parser.add_argument("--destination", help="AET@HOST:PORT for results (env PROGEMU_DESTINATION; "
                        "default: the peer that sent the study)")
    parser.add_argument("--fhir-url", help="FHIR base URL for the results (env PROGEMU_FHIR_URL)")
    parser.add_argument("--data-dir", type=Path, help="spool, results and SQLite job store (env PROGEMU_DATA_DIR)")
    parser.add_argument("--database-url", help="job store URL (env PROGEMU_DATABASE_URL)")
    parser.add_argument("--broker-url", help="Celery broker (env PROGEMU_BROKER_URL; default: embedded)")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the shipped demo model)")
    if api:
        parser.add_argument("--http-port", type=int, help="REST API port (env PROGEMU_HTTP_PORT)")


_NODE_FIELDS = ("ae_title", "bind_host", "dicom_port", "peers", "pacs_url", "destination", "fhir_url", "data_dir",
                "database_url", "broker_url", "http_port", "worker_concurrency")


def _node_settings(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name, None) for name in _NODE_FIELDS}
    overrides["model_path"] = args.model
    if getattr(args, "queues", None):
        overrides["worker_queues"] = args.queues
    if getattr(args, "concurrency", None):
        overrides["worker_concurrency"] = args.concurrency
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _serve(args: argparse.Namespace) -> None:
    import signal

    from plugin.server import serve

    config = _node_settings(args)
    if args.command == "serve" and config.api_token is None:
        raise UsageError("the REST API needs a bearer token: set PROGEMU_API_TOKEN (e.g. openssl rand -hex 32)")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly, as on Ctrl-C
    serve(config, with_api=args.command == "serve")


def _worker(args: argparse.Namespace) -> None:
    from plugin.tasks import configure

    config = _node_settings(args)
    if not config.broker_url:
        raise UsageError("`progemu worker` needs a broker: set PROGEMU_BROKER_URL (redis://… or amqp://…); "
                         "without one, `progemu serve` runs its own worker")
    app = configure(config)
    app.worker_main(["worker", "--queues", ",".join(config.worker_queues), "--concurrency",
                     str(config.worker_concurrency), "--pool", "prefork", "--loglevel",
                     logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                     "--hostname", f"progemu-{'-'.join(config.worker_queues)}@%h"])


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {"model_path": args.model, "fhir_version": getattr(args, "fhir_version", None),
                 "engine": getattr(args, "engine", None), "composition": getattr(args, "composition", None)}
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _sampler_settings(args: argparse.Namespace, config: Settings) -> SamplerSettings:
    return config.sampler(seed=args.seed, cfg_scale=args.cfg_scale, top_k=args.top_k,
                                    top_p=args.top_p, temperature=args.temperature)


def _run_counterfactual(args: argparse.Namespace, prior: Path, out: Path) -> None:
    from inference.model import quiet_transformers
    from plugin.counterfactual import load_use_case, write_outputs

    if not prior.is_file():
        raise UsageError(f"prior image {prior} does not exist")
    config = _settings(args)
    sampler = _sampler_settings(args, config)
    started = time.perf_counter()
    quiet_transformers()
    service = load_use_case(config)
    with tqdm(desc="generating", unit="tok", leave=False, file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        outputs = service.run(prior, args.hypothesis, sampler, progress=progress)
    paths = write_outputs(outputs, out)
    result = outputs.result
    print(f"wrote {', '.join(p.name for p in paths.values())} to {out} in {time.perf_counter() - started:.1f} s"
          f" | {outputs.algorithm.name} {outputs.algorithm.version} ({service.pipeline.engine.name})"
          f" | seed {result.settings.seed}"
          f" | {result.generated_tokens} tokens in {result.seconds:.1f} s"
          f" | interpretation: {result.interpretation[:120]!r}")


def _export_onnx(args: argparse.Namespace) -> None:
    from inference.checkpoint import ONNX_DIR
    from inference.model import load_progemu, quiet_transformers
    from inference.onnx_export import PRECISIONS, export_onnx

    config = _settings(args)
    quiet_transformers()
    model = load_progemu(config.model_path)
    out = args.out or config.model_path / ONNX_DIR
    precisions = tuple(args.precision) if args.precision else PRECISIONS
    manifest = export_onnx(model, out, precisions=precisions, progress=lambda step: print(f"{step}…", file=sys.stderr))
    print(f"exported {len(manifest['files'])} files ({', '.join(precisions)}, opset {manifest['opset']}) to {out}")


def _verify_onnx(args: argparse.Namespace) -> int:
    import json

    from inference.model import load_progemu, quiet_transformers
    from inference.onnx_bundle import OnnxProgEmu
    from inference.onnx_verify import verify_onnx

    config = _settings(args)
    quiet_transformers()
    report = verify_onnx(load_progemu(config.model_path),
                         OnnxProgEmu(args.export_dir, precision=args.precision, providers=["CPUExecutionProvider"]),
                         seed=args.seed)
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.passed else 1


class _Bar:
    """One tqdm bar per stage, fed by (stage, done, total[, loss]) callbacks."""

    def __init__(self) -> None:
        self.bars: dict[str, tqdm] = {}

    def __call__(self, stage: str, done: int, total: int, loss: float | None = None) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, unit="step")
        bar.update(done - bar.n)
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4f}")
        if done >= total:
            bar.close()


def _convert(args: argparse.Namespace) -> None:
    from inference.convert import convert_checkpoint
    from inference.model import ModelSpec

    spec = {"name": "ProgEmu", "version": args.version, "image_size": args.image_size,
            "max_text_tokens": ModelSpec.max_text_tokens}
    identity = convert_checkpoint(args.source, args.out, vision_dir=args.vision_tokenizer, spec=spec)
    print(f"converted {args.source} to {args.out} (checkpoint sha256 {identity})")


def _make_dataset(args: argparse.Namespace) -> None:
    from inference.data.dataset import make_dataset

    bar = _Bar()
    records = make_dataset(args.out, args.n, args.seed, size=args.size,
                           progress=lambda done, total: bar("rendering", done, total))
    test = sum(r["split"] == "test" for r in records)
    print(f"wrote {len(records)} records ({len(records) - test} train, {test} held out) to {args.out}")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The recipe's defaults with what the command line overrides."""
    import dataclasses

    from inference.training.run import TrainConfig

    config = TrainConfig()
    weight = config.lm.changed_token_weight if args.changed_token_weight is None else args.changed_token_weight
    return dataclasses.replace(
        config,
        vq=dataclasses.replace(config.vq, steps=args.vq_steps or config.vq.steps, seed=args.seed),
        lm=dataclasses.replace(config.lm, steps=args.lm_steps or config.lm.steps, seed=args.seed,
                               changed_token_weight=weight),
        refine=config.refine if args.refine_steps is None else dataclasses.replace(config.refine,
                                                                                   steps=args.refine_steps))


def _train(args: argparse.Namespace) -> None:
    from inference.training.run import train_demo_model

    config = train_config(args)
    work = args.work or args.out.with_name(args.out.name + ".work")
    started = time.perf_counter()
    identity = train_demo_model(args.data, args.out, work, config, start_from=args.start_from, progress=_Bar())
    print(f"trained {args.out} in {(time.perf_counter() - started) / 60:.1f} min (checkpoint sha256 {identity}); "
          f"loss curves in {work}")


def _evaluate(args: argparse.Namespace) -> None:
    from inference.data.dataset import Dataset
    from inference.evaluation.evaluate import evaluate
    from inference.loading import load_pipeline
    from inference.model import quiet_transformers

    quiet_transformers()
    config = _settings(args)
    pipeline = load_pipeline(config.model_path, config.engine_options(), composition=config.composition)
    bar = _Bar()
    report = evaluate(pipeline, Dataset.open(args.data), args.out, limit=args.limit, progress=bar,
                      sampler=_sampler_settings(args, config))
    print((args.out / "metrics.md").read_text(), end="")
    print(f"{report['data']['records']} held-out records; details in {args.out / 'metrics.json'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    handlers = {
        "counterfactual": lambda: _run_counterfactual(args, args.prior, args.out or Path("progemu-output")),
        "demo": lambda: _run_counterfactual(args, DEMO_PRIOR, args.out or Path("progemu-demo")),
        "export-onnx": lambda: _export_onnx(args),
        "verify-onnx": lambda: _verify_onnx(args),
        "convert-checkpoint": lambda: _convert(args),
        "make-dataset": lambda: _make_dataset(args),
        "train": lambda: _train(args),
        "evaluate": lambda: _evaluate(args),
        "serve": lambda: _serve(args),
        "listen": lambda: _serve(args),
        "worker": lambda: _worker(args),
    }
    try:
        return handlers[args.command]() or 0
    except (DicomInputError, InferenceError, UsageError) as exc:
        print(f"progemu: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"progemu: error: bad configuration: {problems}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"progemu: error: {exc.strerror or exc} ({exc.filename or ''})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
