"""``progemu export-onnx``, ``verify-onnx`` and ``convert-checkpoint``: making and checking what the engines run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from plugin.cli.options import add_settings_options, settings


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export-onnx", help="export a checkpoint to ONNX (fp32 and fp16) with a manifest")
    add_settings_options(export, ("model_path",))
    export.add_argument("--out", type=Path, help="export directory (default: MODEL/onnx, where auto finds it)")
    export.add_argument("--precision", choices=("fp32", "fp16"), action="append",
                        help="only this precision (repeatable; default both)")
    export.set_defaults(handler=_export_onnx)

    verify = commands.add_parser("verify-onnx", help="compare an ONNX export with its PyTorch checkpoint")
    verify.add_argument("export_dir", type=Path, help="the export directory")
    add_settings_options(verify, ("model_path",))
    verify.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    verify.add_argument("--seed", type=int, default=0)
    verify.set_defaults(handler=_verify_onnx)

    convert = commands.add_parser("convert-checkpoint",
                                  help="convert ProgEmu's/Emu3's original hub layout to the Hugging Face format")
    convert.add_argument("source", type=Path, help="original layout: remote-code Emu3ForCausalLM + emu3.tiktoken")
    convert.add_argument("out", type=Path, help="where the HF-format checkpoint goes")
    convert.add_argument("--vision-tokenizer", type=Path, help="vision tokenizer (default: SOURCE/vision_tokenizer)")
    convert.add_argument("--version", default="progemu", help="model version recorded in every output")
    convert.add_argument("--image-size", type=int, default=512)
    convert.set_defaults(handler=_convert)


def _export_onnx(args: argparse.Namespace) -> None:
    from inference.checkpoint import ONNX_DIR
    from inference.model import load_progemu, quiet_transformers
    from inference.onnx_export import PRECISIONS, export_onnx

    config = settings(args)
    quiet_transformers()
    model = load_progemu(config.model_path)
    out = args.out or config.model_path / ONNX_DIR
    precisions = tuple(args.precision) if args.precision else PRECISIONS
    manifest = export_onnx(model, out, precisions=precisions, progress=lambda step: print(f"{step}…", file=sys.stderr))
    print(f"exported {len(manifest['files'])} files ({', '.join(precisions)}, opset {manifest['opset']}) to {out}")


def _verify_onnx(args: argparse.Namespace) -> int:
    from inference.model import load_progemu, quiet_transformers
    from inference.onnx_bundle import OnnxProgEmu
    from inference.onnx_verify import verify_onnx

    config = settings(args)
    quiet_transformers()
    report = verify_onnx(load_progemu(config.model_path),
                         OnnxProgEmu(args.export_dir, precision=args.precision, providers=["CPUExecutionProvider"]),
                         seed=args.seed)
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.passed else 1


def _convert(args: argparse.Namespace) -> None:
    from inference.convert import convert_checkpoint
    from inference.model import ModelSpec

    spec = {"name": "ProgEmu", "version": args.version, "image_size": args.image_size,
            "max_text_tokens": ModelSpec.max_text_tokens}
    identity = convert_checkpoint(args.source, args.out, vision_dir=args.vision_tokenizer, spec=spec)
    print(f"converted {args.source} to {args.out} (checkpoint sha256 {identity})")
