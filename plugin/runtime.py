"""Builds the long-lived pieces from configuration: load the model once, then serve many requests."""

from __future__ import annotations

import logging
from pathlib import Path

from inference.checkpoint import ONNX_DIR, checkpoint_identity
from inference.errors import CheckpointError
from inference.pipeline import CounterfactualPipeline
from inference.sampler import SamplerSettings
from plugin.config import Settings
from plugin.counterfactual import CounterfactualService

log = logging.getLogger(__name__)

def _onnx_export_for(config: Settings) -> Path | None:
    candidate = config.model_path / ONNX_DIR
    return candidate if (candidate / "manifest.json").exists() else None


def choose_engine(config: Settings) -> str:
    """``auto`` takes the ONNX engine when an export sits next to the checkpoint, else PyTorch."""
    if config.engine != "auto":
        return config.engine
    return "onnx" if _onnx_export_for(config) else "torch"


def load_pipeline(config: Settings) -> CounterfactualPipeline:
    """Load the checkpoint with the configured engine; the model is loaded once per process."""
    engine = choose_engine(config)
    device = config.resolved_device()
    if engine == "onnx":
        from inference.engines.onnx_engine import OnnxEngine
        from inference.onnx_bundle import OnnxProgEmu

        export = _onnx_export_for(config)
        if export is None:
            raise CheckpointError(f"no ONNX export in {config.model_path / ONNX_DIR}; run `progemu export-onnx`")
        providers = ["CPUExecutionProvider"] if device == "cpu" else list(config.onnx_providers)
        model = OnnxProgEmu(export, precision=config.onnx_precision, providers=providers,
                            threads=config.onnx_threads)
        if model.checkpoint_sha256 != checkpoint_identity(config.model_path):
            raise CheckpointError(f"the ONNX export in {export} was made from another checkpoint; export again")
        return CounterfactualPipeline(model, OnnxEngine(model), max_hypothesis_chars=config.max_hypothesis_chars,
                                      composition=config.composition)
    from inference.engines.torch_engine import TorchEngine
    from inference.model import load_progemu

    model = load_progemu(config.model_path, device=device)
    return CounterfactualPipeline(model, TorchEngine(model.text_model, model.lm_head),
                                  max_hypothesis_chars=config.max_hypothesis_chars,
                                  composition=config.composition)


def load_service(config: Settings) -> CounterfactualService:
    return CounterfactualService(load_pipeline(config), config)


def default_sampler_settings(config: Settings, **overrides: object) -> SamplerSettings:
    """Sampler settings from configuration, with per-request overrides where given."""
    values = {"seed": config.seed, "cfg_scale": config.cfg_scale, "top_k": config.top_k,
              "top_p": config.top_p, "temperature": config.temperature}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SamplerSettings(**values)
