"""Image + hypothesis in, counterfactual image + interpretation out, whichever engine runs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol, cast

import numpy as np

from inference.composition import Composition, compose
from inference.engines.base import CancelCheck, Engine, ProgressCallback
from inference.errors import HypothesisError
from inference.hypothesis import MAX_HYPOTHESIS_CHARS, clean_text, normalise_hypothesis
from inference.ood import Calibration, PriorAssessment, assess, prior_components
from inference.sampler import Sampler, SamplerSettings
from inference.sequence import PromptBuilder, TextTokenizer, TokenLayout
from inference.vision_tokenizer import ImageCodec

log = logging.getLogger(__name__)


class ModelSpecLike(Protocol):
    """What the pipeline reads of a checkpoint's spec; read-only, as in the frozen ``ModelSpec`` and ``OnnxSpec``."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def image_size(self) -> int: ...

    @property
    def max_text_tokens(self) -> int: ...

    @property
    def ood(self) -> dict | None:
        """The out-of-distribution calibration (``inference.ood``), None when the checkpoint has none."""
        ...


class GenerativeModel(Protocol):
    """What the pipeline needs of a loaded model: a PyTorch checkpoint or an ONNX export.

    Every member is read-only: the pipeline never sets them, and read-only members let each model
    declare its own, narrower types (``ModelSpec``, a transformers tokenizer, ``OnnxVisionTokenizer``).
    """

    @property
    def vision(self) -> ImageCodec: ...

    @property
    def layout(self) -> TokenLayout: ...

    @property
    def spec(self) -> ModelSpecLike: ...

    @property
    def checkpoint_sha256(self) -> str: ...

    @property
    def max_positions(self) -> int: ...

    @property
    def tokenizer(self) -> TextTokenizer: ...

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

    @cached_property
    def calibration(self) -> Calibration | None:
        return Calibration.from_dict(self.model.spec.ood) if self.model.spec.ood else None

    def checked_prior(self, prior: np.ndarray) -> np.ndarray:
        """The prior as the model takes it: the model's square, float32, clipped to [0, 1]."""
        size = self.image_size
        if prior.shape != (size, size):
            raise ValueError(f"the prior must be {size}x{size} for this model, not {prior.shape}")
        return np.clip(prior, 0.0, 1.0).astype(np.float32)

    def prior_components(self, prior: np.ndarray) -> dict[str, float]:
        """The out-of-distribution score's raw components for a prior (``inference.ood``)."""
        model, calibration = self.model, self.calibration
        return prior_components(model.vision, model.prompts, self.engine, self.checked_prior(prior),
                                calibration.layout if calibration is not None else None)

    def assess_prior(self, prior: np.ndarray) -> PriorAssessment:
        """Whether the prior lies within what the checkpoint was trained on: to refuse it before generating."""
        return assess(self.prior_components(prior), self.calibration)

    def run(self, prior: np.ndarray, hypothesis: str, settings: SamplerSettings, *,
            progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> Counterfactual:
        started = time.perf_counter()
        model = self.model
        hypothesis = normalise_hypothesis(hypothesis, max_chars=self.max_hypothesis_chars)
        prior = self.checked_prior(prior)
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
        # a flat id list decodes to one str (only a batch of lists gives list[str])
        interpretation = clean_text(cast(str, model.tokenizer.decode(text_ids, skip_special_tokens=True)))
        seconds = time.perf_counter() - started
        log.info("generated %d tokens in %.2f s with the %s engine", len(generated), seconds, self.engine.name)
        image = compose(prior, decoded[0], decoded[1], self.composition)
        return Counterfactual(image, decoded[0], decoded[1], self.composition, hypothesis, interpretation, settings,
                              tuple(generated), seconds)
