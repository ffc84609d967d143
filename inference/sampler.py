"""The one sampler every engine uses.

It owns everything that decides a token: classifier-free guidance (CFG)
mixing, ProgEmu's grid constraint counted from the last ``<|image token|>``,
the text phase up to EOS, top-k / top-p / temperature, and a seeded random
generator. Engines only supply logits (NumPy arrays), so the torch and ONNX
engines give the same tokens for the same seed. NumPy only: no torch import.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from inference.errors import GenerationCancelled, SamplerSettingsError
from inference.sequence import TokenLayout


@dataclass(frozen=True)
class SamplerSettings:
    """How to sample. ``cfg_scale`` 1 turns guidance off; ``temperature`` 0 is greedy; ``top_k`` 0 is off."""

    seed: int = 0
    # The one home of the sampler defaults (the CLI, the node and the evaluation take them from here);
    # tuned for the shipped demo model in docs/model.md. ProgEmu's paper uses CFG 3 with top-k 2048.
    cfg_scale: float = 1.5
    top_k: int = 20
    top_p: float = 1.0
    temperature: float = 0.5
    max_text_tokens: int | None = None
    """Longest interpretation; None: the checkpoint's own limit (``ModelSpec.max_text_tokens``), which also caps it."""
    min_text_tokens: int = 2

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.seed < 2**63, "seed must be an integer from 0 to 2**63-1"),
            (0.0 <= self.cfg_scale <= 30.0, "cfg-scale must be between 0 and 30"),
            (self.top_k >= 0, "top-k must be 0 (off) or a positive integer"),
            (0.0 < self.top_p <= 1.0, "top-p must be in (0, 1]"),
            (0.0 <= self.temperature <= 10.0, "temperature must be between 0 (greedy) and 10"),
            (self.max_text_tokens is None or 1 <= self.max_text_tokens <= 4096,
             "max-text-tokens must be between 1 and 4096"),
            (0 <= self.min_text_tokens <= (self.max_text_tokens or 4096), "min-text-tokens must be <= max-text-tokens"),
        ]
        for ok, message in checks:
            if not ok:
                raise SamplerSettingsError(message)

    def for_model(self, model_max_text_tokens: int) -> SamplerSettings:
        """These settings within a checkpoint's interpretation limit (the limit it was trained to)."""
        limit = model_max_text_tokens if self.max_text_tokens is None else min(self.max_text_tokens,
                                                                             model_max_text_tokens)
        return replace(self, max_text_tokens=limit, min_text_tokens=min(self.min_text_tokens, limit))

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale != 1.0

    def as_parameters(self) -> dict[str, str]:
        """Name -> text, as recorded in the SR's algorithm parameters and the FHIR output."""
        return {name: str(value) for name, value in asdict(self).items()}


class Phase(enum.Enum):
    IMAGE = "image"
    TEXT = "text"
    DONE = "done"


class GenerationState:
    """Where generation stands: position in the image grid, then in the interpretation.

    Positions are counted from 0 right after the last ``<|image token|>`` of the
    prompt (the counterfactual's trigger), never from the first: the prior image
    has its own trigger earlier in the prompt.
    """

    def __init__(self, layout: TokenLayout, height: int, width: int, *, min_text: int, max_text: int) -> None:
        self.layout = layout
        self.height = height
        self.width = width
        self.min_text = min_text
        self.max_text = max_text
        self.phase = Phase.IMAGE
        self.position = 0
        self.text_count = 0
        self._visual = np.arange(layout.visual_offset, layout.visual_offset + layout.codebook_size)
        self._text = np.arange(layout.text_limit)
        self._text_or_eos = np.append(self._text, layout.eos)

    @property
    def image_length(self) -> int:
        return self.layout.image_tokens_length(self.height, self.width)

    @property
    def total(self) -> int:
        """Upper bound of tokens to generate: the image plus the longest interpretation and EOS."""
        return self.image_length + self.max_text + 1

    def forced(self) -> int | None:
        """The only token allowed now, if there is exactly one (EOL, EOF, image end, EOS)."""
        lay = self.layout
        if self.phase is Phase.IMAGE:
            rows_done = self.height * (self.width + 1)
            if self.position < rows_done:
                return lay.eol if self.position % (self.width + 1) == self.width else None
            return lay.eof if self.position == rows_done else lay.image_end
        if self.phase is Phase.TEXT and self.text_count >= self.max_text:
            return lay.eos
        return None

    def candidates(self) -> np.ndarray:
        """Ids that may be sampled now (when no token is forced)."""
        if self.phase is Phase.IMAGE:
            return self._visual
        if self.phase is Phase.TEXT:
            return self._text if self.text_count < self.min_text else self._text_or_eos
        raise RuntimeError("generation is already done")

    def advance(self, token: int) -> None:
        if self.phase is Phase.IMAGE:
            self.position += 1
            if self.position == self.image_length:
                self.phase = Phase.TEXT
        elif self.phase is Phase.TEXT:
            if token == self.layout.eos:
                self.phase = Phase.DONE
            else:
                self.text_count += 1
        else:
            raise RuntimeError("generation is already done")


class Sampler:
    """Turns each step's logits into the next token, deterministically for a seed."""

    def __init__(self, settings: SamplerSettings, layout: TokenLayout, height: int, width: int) -> None:
        if settings.max_text_tokens is None:
            raise SamplerSettingsError("resolve the interpretation limit first (SamplerSettings.for_model)")
        self.settings = settings
        self.state = GenerationState(layout, height, width, min_text=settings.min_text_tokens,
                                     max_text=settings.max_text_tokens)
        self.rng = np.random.Generator(np.random.PCG64(settings.seed))

    @property
    def finished(self) -> bool:
        return self.state.phase is Phase.DONE

    @property
    def needs_uncond(self) -> bool:
        """CFG guides the image only: the interpretation is read from the conditional row alone."""
        return self.settings.uses_cfg and self.state.phase is Phase.IMAGE

    def scoring_range(self) -> tuple[int, int] | None:
        """The ids an engine must score for the next step: None when the token is forced.

        During the image rows only the visual tokens can be chosen, so an engine
        may compute logits for that slice of the vocabulary alone.
        """
        if self.state.forced() is not None:
            return None
        lay = self.state.layout
        if self.state.phase is Phase.IMAGE:
            return lay.visual_offset, lay.visual_offset + lay.codebook_size
        return 0, int(self.state.candidates()[-1]) + 1

    def next_token(self, cond: np.ndarray | None, uncond: np.ndarray | None = None, *, first_id: int = 0) -> int:
        """Choose the next token from the last position's logits (None where :meth:`scoring_range` is None).

        ``cond`` and ``uncond`` are 1-D logits for ids ``first_id .. first_id+len-1``
        (an engine may score only part of the vocabulary, e.g. the visual tokens).
        Raw logits can be mixed instead of log-softmax scores: the two differ by a
        per-row constant, which cancels in every step below.
        """
        token = self.state.forced()
        if token is None:
            if cond is None:
                raise ValueError("this step needs logits: no token is forced")
            token = self._sample(cond, uncond, first_id)
        self.state.advance(token)
        return token

    def _sample(self, cond: np.ndarray, uncond: np.ndarray | None, first_id: int) -> int:
        ids = self.state.candidates()
        index = ids - first_id
        if index[0] < 0 or index[-1] >= cond.shape[-1]:
            raise ValueError("the logits do not cover the ids allowed at this step")
        scores = np.asarray(cond, dtype=np.float64)[index]
        if self.needs_uncond:
            if uncond is None:
                raise ValueError("CFG is on but no unconditional logits were given")
            base = np.asarray(uncond, dtype=np.float64)[index]
            scores = base + self.settings.cfg_scale * (scores - base)
        return int(ids[self._choose(scores)])

    def _choose(self, scores: np.ndarray) -> int:
        settings = self.settings
        if settings.temperature == 0.0:
            return int(np.argmax(scores))
        scores = scores / settings.temperature
        if 0 < settings.top_k < scores.size:
            kth = np.partition(scores, -settings.top_k)[-settings.top_k]
            scores = np.where(scores >= kth, scores, -np.inf)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        if settings.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            before = np.cumsum(probs[order]) - probs[order]
            drop = order[before >= settings.top_p]
            probs[drop] = 0.0
            probs /= probs.sum()
        cumulative = np.cumsum(probs)
        index = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
        return min(index, scores.size - 1)


class GenerationTimeout(GenerationCancelled):
    """Generation ran past its deadline."""


class Deadline:
    """A monotonic deadline for one generation, ``seconds`` from now, checked between tokens.

    Pass it as the engines' ``cancel`` check: once the deadline has passed it raises GenerationTimeout, whose
    message names the limit. A worker thread cannot be killed from outside; this stops it from inside.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.at = clock() + seconds

    def __call__(self) -> bool:
        if self.clock() >= self.at:
            raise GenerationTimeout(f"generation exceeded the {self.seconds:g} s time limit")
        return False
