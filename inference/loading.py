"""Load a checkpoint with an engine: the one place that decides between PyTorch and onnxruntime.

Takes plain arguments (no application settings), so that anything that runs the
model (the CLI, a worker, a benchmark, an evaluation) loads it the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from inference.checkpoint import ONNX_DIR, checkpoint_identity
from inference.composition import Composition
from inference.errors import CheckpointError
from inference.hypothesis import MAX_HYPOTHESIS_CHARS

if TYPE_CHECKING:  # the pipeline pulls in torch; settings that only describe an engine must not
    from inference.pipeline import CounterfactualPipeline

log = logging.getLogger(__name__)

EngineName = Literal["auto", "torch", "onnx"]


@dataclass(frozen=True)
class EngineOptions:
    """How to run a checkpoint; the defaults suit the shipped demo model on a CPU."""

    engine: EngineName = "auto"
    device: str = "cpu"
    onnx_precision: Literal["fp32", "fp16"] = "fp32"
    onnx_providers: Sequence[str] = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    onnx_threads: int = 1


def onnx_export_for(model_path: Path) -> Path | None:
    """The ONNX export beside a checkpoint, if one was made (``progemu export-onnx``'s default place)."""
    candidate = Path(model_path) / ONNX_DIR
    return candidate if (candidate / "manifest.json").exists() else None


def choose_engine(model_path: Path, engine: EngineName) -> Literal["torch", "onnx"]:
    """``auto`` takes the ONNX engine when an export sits next to the checkpoint, else PyTorch."""
    if engine != "auto":
        return engine
    return "onnx" if onnx_export_for(model_path) else "torch"


def load_pipeline(model_path: Path, options: EngineOptions = EngineOptions(), *,
                  max_hypothesis_chars: int = MAX_HYPOTHESIS_CHARS,
                  composition: Composition | str = Composition.RESIDUAL) -> CounterfactualPipeline:
    """Load the checkpoint once with the chosen engine; an ONNX export must come from this very checkpoint."""
    from inference.pipeline import CounterfactualPipeline

    model_path = Path(model_path)
    engine = choose_engine(model_path, options.engine)
    if engine == "onnx":
        from inference.engines.onnx_engine import OnnxEngine
        from inference.onnx_bundle import OnnxProgEmu

        export = onnx_export_for(model_path)
        if export is None:
            raise CheckpointError(f"no ONNX export in {model_path / ONNX_DIR}; run `progemu export-onnx`")
        providers = ["CPUExecutionProvider"] if options.device == "cpu" else list(options.onnx_providers)
        model = OnnxProgEmu(export, precision=options.onnx_precision, providers=providers,
                            threads=options.onnx_threads)
        if model.checkpoint_sha256 != checkpoint_identity(model_path):
            raise CheckpointError(f"the ONNX export in {export} was made from another checkpoint; export again")
        return CounterfactualPipeline(model, OnnxEngine(model), max_hypothesis_chars=max_hypothesis_chars,
                                      composition=composition)
    from inference.engines.torch_engine import TorchEngine
    from inference.model import load_progemu

    torch_model = load_progemu(model_path, device=options.device)
    return CounterfactualPipeline(torch_model, TorchEngine(torch_model.text_model, torch_model.lm_head),
                                  max_hypothesis_chars=max_hypothesis_chars, composition=composition)
