"""Builds the long-lived pieces from configuration: load the model once, then serve many requests."""

from __future__ import annotations

import logging

from inference.engines.torch_engine import TorchEngine
from inference.model import load_progemu
from inference.pipeline import CounterfactualPipeline
from inference.sampler import SamplerSettings
from plugin.config import Settings
from plugin.counterfactual import CounterfactualService

log = logging.getLogger(__name__)


def quiet_transformers() -> None:
    """transformers' own progress bars and notices would drown ours; errors still show."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_service(config: Settings) -> CounterfactualService:
    model = load_progemu(config.model_path, device=config.resolved_device())
    pipeline = CounterfactualPipeline(model, TorchEngine(model.text_model, model.lm_head),
                                      max_hypothesis_chars=config.max_hypothesis_chars)
    return CounterfactualService(pipeline, config)


def default_sampler_settings(config: Settings, **overrides: object) -> SamplerSettings:
    """Sampler settings from configuration, with per-request overrides where given."""
    values = {"seed": config.seed, "cfg_scale": config.cfg_scale, "top_k": config.top_k,
              "top_p": config.top_p, "temperature": config.temperature}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SamplerSettings(**values)
