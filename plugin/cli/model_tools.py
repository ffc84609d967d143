"""``progemu export-onnx``, ``verify-onnx`` and ``convert-checkpoint``: making and checking what the engines run."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from dicom_io.geometry import to_square
from dicom_io.reader import read_prior
from inference.checkpoint import checkpoint_identity
from plugin.cli.options import add_settings_options, settings
from plugin.cli.progress import StageBars
from plugin.errors import UsageError


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
    convert.add_argument("source", type=Path,
                         help="the language model as published: remote-code Emu3ForCausalLM, safetensors")
    convert.add_argument("out", type=Path, help="where the HF-format checkpoint goes")
    convert.add_argument("--text-tokenizer", type=Path,
                         help="BAAI's Emu3 text tokenizer (emu3.tiktoken, emu3_vision_tokens.txt; default: SOURCE)")
    convert.add_argument("--vision-tokenizer", type=Path,
                         help="BAAI's Emu3 vision tokenizer (default: SOURCE/vision_tokenizer)")
    convert.add_argument("--version", default="progemu", help="model version recorded in every output")
    convert.add_argument("--image-size", type=int, default=512)
    convert.set_defaults(handler=_convert)

    calibrate = commands.add_parser(
        "calibrate", help="calibrate a checkpoint's input gate on a folder of its intended inputs (stored in it)")
    add_settings_options(calibrate, ("model_path",))
    source = calibrate.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="a folder of intended priors: DICOM (.dcm) or PNG/JPEG files")
    source.add_argument("--dataset", type=Path, help="a `progemu make-dataset` folder: its training priors")
    calibrate.add_argument("--quantile", type=float, default=0.99,
                           help="share of such inputs the gate must pass (needs at least 1/(1-q) images)")
    calibrate.add_argument("--limit", type=int, help="use at most this many images")
    calibrate.set_defaults(handler=_calibrate)


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
    identity = convert_checkpoint(args.source, args.out, text_tokenizer_dir=args.text_tokenizer,
                                  vision_dir=args.vision_tokenizer, spec=spec)
    print(f"converted {args.source} to {args.out} (checkpoint sha256 {identity})")


def _calibrate(args: argparse.Namespace) -> None:
    import itertools

    from inference.model import quiet_transformers
    from inference.ood import calibrate

    config = settings(args)
    quiet_transformers()
    size = _image_size(config.model_path)
    priors = _dataset_priors(args.dataset) if args.dataset else folder_priors(args.images, config.max_image_pixels)
    squares = (to_square(pixels, size)[0] for pixels in itertools.islice(priors, args.limit))
    with StageBars("image") as bars:
        result = calibrate(config.model_path, squares, quantile=args.quantile, device=config.resolved_device(),
                           progress=lambda done: bars("scoring", done, args.limit or done))
    print(f"calibrated {config.model_path} on {result.images} images: limit {result.limit:.2f} "
          f"(the {args.quantile:g} quantile); checkpoint sha256 {checkpoint_identity(config.model_path)}")


def _image_size(model_path: Path) -> int:
    from inference.model import read_spec

    return read_spec(model_path).image_size


def _dataset_priors(directory: Path) -> Iterator[np.ndarray]:
    from inference.data.dataset import Dataset

    dataset = Dataset.open(directory)
    for record in dataset.split("train"):
        yield dataset.image(record, "prior")


def folder_priors(directory: Path, max_pixels: int) -> Iterator[np.ndarray]:
    """Every image in the folder as the node reads it: DICOM through the prior reader, PNG/JPEG as greyscale."""
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in {".dcm", ".png", ".jpg", ".jpeg"})
    if not files:
        raise UsageError(f"{directory} holds no .dcm, .png or .jpg images")
    for path in files:
        yield image_pixels(path, max_pixels)


def image_pixels(path: Path, max_pixels: int) -> np.ndarray:
    """One image as the node reads it: DICOM through the prior reader, PNG/JPEG as greyscale in [0, 1]."""
    if path.suffix.lower() == ".dcm":
        return read_prior(path, max_pixels=max_pixels).pixels
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
