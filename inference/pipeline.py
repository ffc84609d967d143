"""Image + hypothesis in, counterfactual image + interpretation out, whichever engine runs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from inference.composition import Composition, compose
from inference.engines.base import CancelCheck, Engine, ProgressCallback
from inference.errors import HypothesisError
from inference.hypothesis import MAX_HYPOTHESIS_CHARS, clean_text, normalise_hypothesis
from inference.sampler import Sampler, SamplerSettings
from inference.sequence import PromptBuilder, TokenLayout
from inference.vision_tokenizer import VisionTokenizer

log = logging.getLogger(__name__)


class ModelSpecLike(Protocol):
    name: str
    version: str
    image_size: int
    max_text_tokens: int


class GenerativeModel(Protocol):
    """What the pipeline needs of a loaded model: a PyTorch checkpoint or an ONNX export."""

    vision: VisionTokenizer
    layout: TokenLayout
    spec: ModelSpecLike
    checkpoint_sha256: str
    max_positions: int
    tokenizer: object

    @property
    def prompts(self) -> PromptBuilder: ...


@dataclass(frozen=True)
class Counterfactual:
    """One generated follow-up: images are float32 [S, S] in [0, 1] at the model's image size."""

    image: np.ndarray
    """The delivered counterfactual: ``decoded`` composed onto the prior (``composition``)."""
    decoded: np.ndarray
    """The VQ decoder's image of the generated codes."""
    prior_reconstruction: np.ndarray
    """The prior as the VQ tokenizer sees it: the baseline the model's change is measured from."""
    composition: Composition
    hypothesis: str
    interpretation: str
    settings: SamplerSettings
    tokens: tuple[int, ...]
    """Every generated id, image block and interpretation: what engine parity is checked on."""
    seconds: float

    @property
    def generated_tokens(self) -> int:
        return len(self.tokens)


class CounterfactualPipeline:
    """Runs ProgEmu's sequence: encode the prior, prompt, generate, decode image and text."""

    def __init__(self, model: GenerativeModel, engine: Engine, *, max_hypothesis_chars: int = MAX_HYPOTHESIS_CHARS,
                 composition: Composition | str = Composition.RESIDUAL) -> None:
        self.model = model
        self.engine = engine
        self.max_hypothesis_chars = max_hypothesis_chars
        self.composition = Composition(composition)

    @property
    def image_size(self) -> int:
        return self.model.spec.image_size

    def run(self, prior: np.ndarray, hypothesis: str, settings: SamplerSettings, *,
            progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> Counterfactual:
        started = time.perf_counter()
        model = self.model
        hypothesis = normalise_hypothesis(hypothesis, max_chars=self.max_hypothesis_chars)
        size = self.image_size
        if prior.shape != (size, size):
            raise ValueError(f"the prior must be {size}x{size} for this model, not {prior.shape}")
        prior = np.clip(prior, 0.0, 1.0).astype(np.float32)
        codes = model.vision.encode(prior[None])[0]
        grid = codes.shape[0]
        prompts = model.prompts
        cond = prompts.conditional_prompt(codes, hypothesis)
        uncond = prompts.unconditional_prompt(grid, grid)
        settings = settings.for_model(model.spec.max_text_tokens)
        sampler = Sampler(settings, model.layout, grid, grid)
        context = model.max_positions
        if len(cond) + sampler.state.total > context:
            raise HypothesisError(f"the hypothesis is too long for this model's context of {context} tokens")
        generated = self.engine.generate(cond, uncond, sampler, progress=progress, cancel=cancel)
        image_length = model.layout.image_tokens_length(grid, grid)
        out_codes = prompts.codes_from_generated(generated[:image_length], grid, grid)
        decoded = model.vision.decode(np.stack([out_codes, codes]))
        text_ids = [t for t in generated[image_length:] if t != model.layout.eos]
        interpretation = clean_text(model.tokenizer.decode(text_ids, skip_special_tokens=True))
        seconds = time.perf_counter() - started
        log.info("generated %d tokens in %.2f s with the %s engine", len(generated), seconds, self.engine.name)
        image = compose(prior, decoded[0], decoded[1], self.composition)
        return Counterfactual(image, decoded[0], decoded[1], self.composition, hypothesis, interpretation, settings,
                              tuple(generated), seconds)
