"""What every generation engine offers, and the CFG batch both engines feed the model."""

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


class Engine(Protocol):
    """Runs the decode loop on some runtime; every decision about tokens is the sampler's."""

    name: str

    def generate(self, cond_prompt: list[int], uncond_prompt: list[int], sampler: Sampler, *,
                 progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> list[int]:
        """Return the generated ids (image block tokens, interpretation, EOS)."""
        ...


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


def report(progress: ProgressCallback | None, cancel: CancelCheck | None, done: int, total: int) -> None:
    """Tell the caller how far generation is, and stop if it asked to."""
    if progress is not None:
        progress(done, total)
    if cancel is not None and cancel():
        raise GenerationCancelled("generation was cancelled")
