"""The decode loop every engine shares, and the backend interface an engine implements.

The loop owns the order of things (prompt, score, sample, feed) and the sampler
owns every decision, so engines differ only in how they run the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from inference.errors import GenerationCancelled
from inference.sampler import Sampler

ProgressCallback = Callable[[int, int], None]
"""Called with (tokens done, tokens at most) after every generated token."""
CancelCheck = Callable[[], bool]
"""Returns True when the caller wants generation to stop."""


@dataclass(frozen=True)
class PromptBatch:
    """Prompts left-padded into one batch (conditional row first).

    Positions count real tokens only and padded slots are masked out, so each
    row sees exactly what it would see alone: the batched-CFG mistake behind
    broken images in Emu3's issue tracker was counting padding in RoPE positions.
    """

    input_ids: np.ndarray  # int64 [B, L]
    attention_mask: np.ndarray  # int64 [B, L]
    position_ids: np.ndarray  # int64 [B, L]

    @classmethod
    def left_padded(cls, rows: list[list[int]], pad_id: int) -> PromptBatch:
        length = max(len(row) for row in rows)
        ids = np.full((len(rows), length), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, length - len(row):] = row
            mask[i, length - len(row):] = 1
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        return cls(ids, mask, positions)

    def next_positions(self) -> np.ndarray:
        """int64 [B, 1]: the position of each row's next token."""
        return self.position_ids[:, -1:] + 1


class Backend(Protocol):
    """One runtime's way to run the language model with a KV cache."""

    def start(self, batch: PromptBatch) -> None:
        """Run the prompt and keep its cache."""

    def logits(self, first: int, stop: int) -> np.ndarray:
        """float32 [rows, stop - first]: scores of ids first..stop-1 at the last position."""

    def feed(self, token: int) -> None:
        """Append ``token`` to every row and run one step."""

    def drop_unconditional(self) -> None:
        """Keep only the conditional row from now on."""


class Engine(Protocol):
    name: str

    def generate(self, cond_prompt: list[int], uncond_prompt: list[int], sampler: Sampler, *,
                 progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> list[int]: ...

    def span_log_probs(self, prompt: list[int], continuation: list[int], span: tuple[int, int]) -> np.ndarray:
        """float64 [n]: teacher-forced log-probability of each ``continuation`` id in ``span`` (first, stop),
        given everything before it and normalised over the span (as the sampler chooses within it)."""
        ...


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-probabilities along the last axis, stable for large logits."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


def teacher_forced(backend: Backend, prompt: list[int], continuation: list[int], span: tuple[int, int]) -> np.ndarray:
    """:meth:`Engine.span_log_probs` one step at a time: for graphs that return only the last position's state."""
    first, stop = span
    scored = [i for i, token in enumerate(continuation) if first <= token < stop]
    backend.start(PromptBatch.left_padded([prompt], pad_id=0))  # one row: nothing is padded
    out = np.empty(len(scored))
    fed = 0
    for n, i in enumerate(scored):
        for token in continuation[fed:i]:
            backend.feed(token)
        fed = i
        out[n] = log_softmax(backend.logits(first, stop)[0])[continuation[i] - first]
    return out


def report(progress: ProgressCallback | None, cancel: CancelCheck | None, done: int, total: int) -> None:
    """Tell the caller how far generation is, and stop if it asked to."""
    if progress is not None:
        progress(done, total)
    if cancel is not None and cancel():
        raise GenerationCancelled("generation was cancelled")


def decode(backend: Backend, cond_prompt: list[int], uncond_prompt: list[int], sampler: Sampler, *,
           progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> list[int]:
    """Generate until EOS: CFG rows as one batch, only the sampler's scoring range scored, forced tokens unscored."""
    rows = [cond_prompt, uncond_prompt] if sampler.needs_uncond else [cond_prompt]
    backend.start(PromptBatch.left_padded(rows, sampler.state.layout.pad))
    paired = len(rows) == 2
    generated: list[int] = []
    total = sampler.state.total
    while True:
        span = sampler.scoring_range()
        if span is None:
            token = sampler.next_token(None)
        else:
            logits = backend.logits(*span)
            token = sampler.next_token(logits[0], logits[1] if paired else None, first_id=span[0])
        generated.append(token)
        if sampler.finished:
            report(progress, None, total, total)
            return generated
        report(progress, cancel, len(generated), total)
        if paired and not sampler.needs_uncond:
            backend.drop_unconditional()
            paired = False
        backend.feed(token)
