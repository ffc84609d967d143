"""Compare an ONNX export with the PyTorch checkpoint it came from, on the same inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from inference.engines.base import PromptBatch
from inference.engines.onnx_engine import OnnxEngine, OnnxHostBackend
from inference.engines.torch_engine import TorchBackend, TorchEngine
from inference.model import ProgEmuModel
from inference.onnx_bundle import OnnxExportError, OnnxProgEmu
from inference.pipeline import CounterfactualPipeline
from inference.sampler import SamplerSettings

LOGIT_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}


@dataclass(frozen=True)
class VerifyReport:
    precision: str
    max_abs_logit_diff: float
    logit_tolerance: float
    vq_codes_identical: bool
    tokens_identical: bool
    tokens_compared: int

    @property
    def passed(self) -> bool:
        """fp32 must reproduce the tokens exactly; fp16 rounding may change a near-tie, so it is held to the logits."""
        exact = self.tokens_identical or self.precision != "fp32"
        return self.max_abs_logit_diff <= self.logit_tolerance and self.vq_codes_identical and exact

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def test_image(size: int) -> np.ndarray:
    """A smooth, deterministic chest-like test pattern: no random input, so runs compare."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    lungs = np.exp(-(((x - 0.3) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2)) + np.exp(
        -(((x - 0.7) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2))
    return np.clip(0.8 - 0.5 * lungs + 0.05 * np.sin(25 * y), 0.0, 1.0).astype(np.float32)


def verify_onnx(model: ProgEmuModel, onnx_model: OnnxProgEmu, *, seed: int = 0,
                hypothesis: str = "A moderate left pleural effusion has developed.") -> VerifyReport:
    if onnx_model.checkpoint_sha256 != model.checkpoint_sha256:
        raise OnnxExportError("the export was made from another checkpoint "
                              f"({onnx_model.checkpoint_sha256[:12]}…, not {model.checkpoint_sha256[:12]}…)")
    image = test_image(model.spec.image_size)[None]
    codes_torch = model.vision.encode(image)
    codes_onnx = onnx_model.vision.encode(image)
    prompts = model.prompts
    cond = prompts.conditional_prompt(codes_torch[0], hypothesis)
    uncond = prompts.unconditional_prompt(*codes_torch.shape[1:])
    batch = PromptBatch.left_padded([cond, uncond], model.layout.pad)
    vocab = model.lm_head.weight.shape[0]
    with torch.inference_mode():
        reference = TorchBackend(model.text_model, model.lm_head)
        reference.start(batch)
        expected = reference.logits(0, vocab)
    candidate = OnnxHostBackend(onnx_model)
    candidate.start(batch)
    diff = float(np.abs(candidate.logits(0, vocab) - expected).max())
    settings = SamplerSettings(seed=seed, max_text_tokens=32)
    a = CounterfactualPipeline(model, TorchEngine(model.text_model, model.lm_head)).run(image[0], hypothesis, settings)
    b = CounterfactualPipeline(onnx_model, OnnxEngine(onnx_model)).run(image[0], hypothesis, settings)
    return VerifyReport(onnx_model.precision, diff, LOGIT_TOLERANCE[onnx_model.precision],
                        bool(np.array_equal(codes_torch, codes_onnx)), a.tokens == b.tokens, a.generated_tokens)
