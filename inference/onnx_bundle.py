"""Open an ONNX export: check its manifest, choose execution providers, and load the sessions.

Nothing here imports torch: a worker that runs the ONNX engine needs only
onnxruntime, NumPy and the tokenizer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from transformers import PreTrainedTokenizerFast

from inference.checkpoint import sha256_file
from inference.errors import CheckpointError
from inference.sequence import PromptBuilder, TokenLayout

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "progemu-onnx/1"
SUPPORTED_OPSETS = (18,)
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GRAPHS = ("vq_encoder", "vq_decoder", "lm", "head", "head_visual")
_warned: set[tuple[str, ...]] = set()


class OnnxExportError(CheckpointError):
    """A broken or incompatible export directory."""


def select_providers(requested: Sequence[str] = PROVIDER_ORDER) -> list[str]:
    """The requested providers this onnxruntime has, in order; each missing one is warned about once."""
    available = set(ort.get_available_providers())
    chosen = [p for p in requested if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    missing = tuple(p for p in requested if p not in available)
    if missing and missing not in _warned:
        _warned.add(missing)
        log.warning("onnxruntime lacks %s; using %s", ", ".join(missing), chosen[0])
    return chosen


def read_manifest(directory: Path, *, verify_hashes: bool = True) -> dict:
    """Load and check ``manifest.json``: format, opset, every file present and matching its sha256."""
    path = directory / MANIFEST
    if not path.exists():
        raise OnnxExportError(f"{directory} is not an ONNX export: no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        raise OnnxExportError(f"{path} is not valid JSON") from None
    if manifest.get("format") != FORMAT:
        raise OnnxExportError(f"{directory}: unknown export format {manifest.get('format')!r}")
    if manifest.get("opset") not in SUPPORTED_OPSETS:
        raise OnnxExportError(f"{directory}: opset {manifest.get('opset')} is not supported "
                              f"(expected {', '.join(map(str, SUPPORTED_OPSETS))}); export again")
    for name, entry in manifest.get("files", {}).items():
        file = directory / name
        if not file.exists():
            raise OnnxExportError(f"{directory}: {name} is missing; export again")
        if verify_hashes and sha256_file(file) != entry["sha256"]:
            raise OnnxExportError(f"{directory}: {name} does not match its sha256 in {MANIFEST}")
    return manifest


@dataclass(frozen=True)
class OnnxSpec:
    name: str
    version: str
    image_size: int
    max_text_tokens: int
    ood: dict | None = None
    """The checkpoint's out-of-distribution calibration, copied at export or by ``inference.ood.calibrate``."""


class OnnxVisionTokenizer:
    """The exported VQ encoder and decoder as an ``ImageCodec`` (NumPy in, NumPy out)."""

    def __init__(self, encoder: ort.InferenceSession, decoder: ort.InferenceSession, downsample: int,
                 codebook_size: int) -> None:
        self.encoder, self.decoder = encoder, decoder
        self.downsample, self.codebook_size = downsample, codebook_size

    def encode(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 3 or images.shape[1] % self.downsample or images.shape[2] % self.downsample:
            raise ValueError(f"images must be [B, H, W] with H and W multiples of {self.downsample}")
        return self.encoder.run(None, {"images": images})[0].astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        batch = self.decoder.get_inputs()[0].shape[0]
        if isinstance(batch, int) and len(codes) != batch:
            # the exporter fixes the batch of Emu3's VQ decoder at its traced 2: run the graph on groups of that
            # size, the last one filled up with repeats (a prior scored alone is a batch of one)
            filled = np.concatenate([codes, np.repeat(codes[-1:], -len(codes) % batch, axis=0)])
            return np.concatenate([self.decode(group) for group in np.split(filled, len(filled) // batch)])[:len(codes)]
        images = self.decoder.run(None, {"codes": codes})[0]
        return np.clip(images, 0.0, 1.0).astype(np.float32)


class OnnxProgEmu:
    """An ONNX export loaded for inference: what the pipeline needs, without torch."""

    def __init__(self, directory: str | Path, *, precision: str = "fp32",
                 providers: Sequence[str] = PROVIDER_ORDER, verify_hashes: bool = True, threads: int = 0) -> None:
        """``threads``: onnxruntime's intra-op threads, 0 for its default. A small model decodes faster
        on one thread: per-step work is too small to pay for synchronising two."""
        self.path = Path(directory)
        manifest = read_manifest(self.path, verify_hashes=verify_hashes)
        if precision not in manifest["precisions"]:
            raise OnnxExportError(f"{self.path} has no {precision} graphs (it has {', '.join(manifest['precisions'])})")
        self.manifest = manifest
        self.precision = precision
        self.providers = select_providers(providers)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        self.sessions = {}
        for graph in GRAPHS:
            file = self.path / precision / f"{graph}.onnx"
            if not file.exists():
                raise OnnxExportError(f"{self.path}: {precision}/{graph}.onnx is missing; export again")
            self.sessions[graph] = ort.InferenceSession(str(file), options, providers=self.providers)
        self.spec = OnnxSpec(**manifest["spec"])
        self.checkpoint_sha256 = manifest["source_checkpoint_sha256"]
        lm = manifest["language_model"]
        self.max_positions = int(lm["max_positions"])
        self.layers, self.kv_heads, self.head_dim = int(lm["layers"]), int(lm["kv_heads"]), int(lm["head_dim"])
        self.kv_dtype = np.float16 if precision == "fp16" else np.float32
        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(self.path)
        vision = manifest["vision"]
        self.vision = OnnxVisionTokenizer(self.sessions["vq_encoder"], self.sessions["vq_decoder"],
                                          int(vision["downsample"]), int(vision["codebook_size"]))
        self.layout = TokenLayout.from_tokenizer(self.tokenizer, self.vision.codebook_size)

    @property
    def prompts(self) -> PromptBuilder:
        return PromptBuilder(self.layout, self.tokenizer)

    @property
    def on_cuda(self) -> bool:
        return self.sessions["lm"].get_providers()[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
