"""Export a loaded ProgEmu to ONNX: VQ encoder, VQ decoder, the language model with its KV cache, two heads.

The language model is one graph for prefill and decode (a zero-length past is
a prefill) that returns the last hidden state and the grown KV cache. The heads
are separate graphs so that, during the image phase, the engine scores only
the visual vocabulary (``head_visual``) instead of all of it (``head``).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import onnx
import torch
from transformers import DynamicCache, Emu3TextModel

from inference.checkpoint import sha256_file
from inference.model import ProgEmuModel
from inference.onnx_bundle import FORMAT, MANIFEST, SUPPORTED_OPSETS

log = logging.getLogger(__name__)

OPSET = SUPPORTED_OPSETS[-1]
PRECISIONS = ("fp32", "fp16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_EXTERNAL_DATA_BYTES = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with room for the graph itself


class _LanguageModel(torch.nn.Module):
    """Flat tensors in and out around transformers' text model and its DynamicCache."""

    def __init__(self, text_model: Emu3TextModel) -> None:
        super().__init__()
        self.text_model = text_model
        self.layers = text_model.config.num_hidden_layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.text_model.config)
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              cache=cache, use_cache=True)
        presents = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (out.last_hidden_state[:, -1], *presents)


class _Head(torch.nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.weight.t()


class _Call(torch.nn.Module):
    """Wraps a tokenizer's pure-torch method as a module to trace."""

    def __init__(self, module: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def kv_names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}_{kind}.{i}" for i in range(layers) for kind in ("key", "value")]


def _io_signature(path: Path) -> dict[str, list[dict]]:
    model = onnx.load(str(path), load_external_data=False)

    def describe(values: Iterable[onnx.ValueInfoProto]) -> list[dict]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            out.append({"name": value.name, "dtype": onnx.TensorProto.DataType.Name(tensor.elem_type).lower(),
                        "shape": shape})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def _export(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
            dynamic_shapes: tuple) -> None:
    program = torch.onnx.export(module, args, None, input_names=input_names, output_names=output_names,
                                dynamic_shapes=dynamic_shapes, opset_version=OPSET, dynamo=True)
    if program is None:  # only the legacy TorchScript exporter (dynamo=False) returns nothing
        raise RuntimeError("torch.onnx.export returned no program")
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    program.save(str(path), external_data=size > _EXTERNAL_DATA_BYTES)


def _export_precision(model: ProgEmuModel, directory: Path, dtype: torch.dtype) -> None:
    # Eager attention (plain MatMul/Softmax): the exporter's decomposition of SDPA adds masking and scaling
    # nodes to every layer, and onnxruntime decodes that graph measurably slower (docs/performance.md).
    config = model.text_model.config
    previous, config._attn_implementation = config._attn_implementation, "eager"
    try:
        _export_graphs(model, directory, dtype)
    finally:
        config._attn_implementation = previous
        model.text_model.to(torch.float32)  # type: ignore[arg-type]  # transformers' wrapped Module.to, as below


def _export_graphs(model: ProgEmuModel, directory: Path, dtype: torch.dtype) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    text_model = model.text_model
    # transformers wraps Module.to with functools.wraps, which typeshed types as an unbound callable
    text_model.to(dtype)  # type: ignore[arg-type]
    config = text_model.config
    # no key/value head count means one per attention head (plain multi-head attention)
    layers, kv_heads = config.num_hidden_layers, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    batch = torch.export.Dim("batch", min=1, max=64)
    seq = torch.export.Dim("seq", min=1, max=config.max_position_embeddings)
    total = torch.export.Dim("total", min=1, max=2 * config.max_position_embeddings)
    past_len = torch.export.Dim("past", min=0, max=config.max_position_embeddings)
    b, s, p = 2, 5, 3  # example sizes; all of them are dynamic in the graph
    past = tuple(torch.zeros(b, kv_heads, p, head_dim, dtype=dtype) for _ in range(2 * layers))
    args = (torch.zeros(b, s, dtype=torch.long), torch.ones(b, p + s, dtype=torch.long),
            torch.arange(p, p + s).repeat(b, 1), *past)
    _export(_LanguageModel(text_model).eval(), args, directory / "lm.onnx",
            ["input_ids", "attention_mask", "position_ids", *kv_names(layers, "past")],
            ["hidden", *kv_names(layers, "present")],
            ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
             tuple({0: batch, 2: past_len} for _ in range(2 * layers))))
    weight = model.lm_head.weight.to(dtype)
    lay = model.layout
    hidden = torch.zeros(b, config.hidden_size, dtype=dtype)
    visual_rows = weight[lay.visual_offset: lay.visual_offset + lay.codebook_size]
    for name, rows in (("head", weight), ("head_visual", visual_rows)):
        _export(_Head(rows).eval(), (hidden,), directory / f"{name}.onnx", ["hidden"], ["logits"], ({0: batch},))
    # The VQ stays in fp32 in both variants: it runs twice per request, and fp16 convolutions cost image fidelity.
    vision, size = model.vision, model.spec.image_size
    side = torch.export.Dim("side", min=1, max=256)
    height, width = side * 1, torch.export.Dim("width_units", min=1, max=256)
    images = torch.rand(2, size, size)  # batch 2: dynamo fixes a dimension traced at size 1
    _export(_Call(vision.module, vision.encode_tensor).eval(), (images,), directory / "vq_encoder.onnx",
            ["images"], ["codes"], ({0: batch, 1: height * vision.downsample, 2: width * vision.downsample},))
    grid = size // vision.downsample
    codes = torch.zeros(2, grid, grid, dtype=torch.long)
    _export(_Call(vision.module, vision.decode_tensor).eval(), (codes,), directory / "vq_decoder.onnx",
            ["codes"], ["images"], ({0: batch, 1: height, 2: width},))


def export_onnx(model: ProgEmuModel, out: str | Path, *, precisions: tuple[str, ...] = PRECISIONS,
                progress: Callable[[str], None] | None = None) -> dict:
    """Write every graph for each precision, the tokenizer files and ``manifest.json``; return the manifest."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    for precision in precisions:
        if progress:
            progress(f"exporting {precision}")
        _export_precision(model, directory / precision, torch.float16 if precision == "fp16" else torch.float32)
    for name in TOKENIZER_FILES:
        if (model.path / name).exists():
            shutil.copy2(model.path / name, directory / name)
    config = model.text_model.config
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        relative = path.relative_to(directory).as_posix()
        entry: dict = {"sha256": sha256_file(path)}
        if path.suffix == ".onnx":
            entry.update(_io_signature(path))
        files[relative] = entry
    manifest = {
        "format": FORMAT,
        "opset": OPSET,
        "precisions": list(precisions),
        "source_checkpoint_sha256": model.checkpoint_sha256,
        "spec": {"name": model.spec.name, "version": model.spec.version, "image_size": model.spec.image_size,
                 "max_text_tokens": model.spec.max_text_tokens, "ood": model.spec.ood},
        "vision": {"downsample": model.vision.downsample, "codebook_size": model.vision.codebook_size},
        "language_model": {"layers": config.num_hidden_layers, "kv_heads": config.num_key_value_heads,
                           "head_dim": getattr(config, "head_dim", None)
                           or config.hidden_size // config.num_attention_heads,
                           "hidden_size": config.hidden_size, "vocab_size": config.vocab_size,
                           "max_positions": config.max_position_embeddings},
        "files": files,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("exported ONNX graphs for %s to %s", ", ".join(precisions), directory)
    return manifest
