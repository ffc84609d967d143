"""The decode loop on PyTorch: transformers' Emu3 text model with a KV cache."""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache, Emu3TextModel

from inference.engines.base import CancelCheck, ProgressCallback, PromptBatch, report
from inference.sampler import Sampler


class TorchEngine:
    """CFG as one batch of two rows; the unconditional row is dropped once the image is done."""

    name = "torch"

    def __init__(self, text_model: Emu3TextModel, lm_head: torch.nn.Linear) -> None:
        self.text_model = text_model
        self.lm_head = lm_head
        self.device = next(text_model.parameters()).device

    def _step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, cache: DynamicCache) -> np.ndarray:
        out = self.text_model(
            input_ids=torch.from_numpy(ids).to(self.device),
            attention_mask=torch.from_numpy(mask).to(self.device),
            position_ids=torch.from_numpy(positions).to(self.device),
            cache=cache, use_cache=True,
        )
        logits = self.lm_head(out.last_hidden_state[:, -1])
        return logits.float().cpu().numpy()

    @torch.inference_mode()
    def generate(self, cond_prompt: list[int], uncond_prompt: list[int], sampler: Sampler, *,
                 progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> list[int]:
        rows = [cond_prompt, uncond_prompt] if sampler.needs_uncond else [cond_prompt]
        batch = PromptBatch.left_padded(rows, sampler.state.layout.pad)
        mask, positions = batch.attention_mask, batch.next_positions()
        cache = DynamicCache(config=self.text_model.config)
        logits = self._step(batch.input_ids, mask, batch.position_ids, cache)
        generated: list[int] = []
        total = sampler.state.total
        while True:
            uncond = logits[1] if logits.shape[0] == 2 else None
            token = sampler.next_token(logits[0], uncond)
            generated.append(token)
            if sampler.finished:
                report(progress, None, total, total)
                return generated
            report(progress, cancel, len(generated), total)
            if logits.shape[0] == 2 and not sampler.needs_uncond:
                cache.batch_select_indices(torch.tensor([0], device=self.device))
                mask, positions = mask[:1], positions[:1]
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=np.int64)], axis=1)
            step_ids = np.full((mask.shape[0], 1), token, dtype=np.int64)
            logits = self._step(step_ids, mask, positions, cache)
            positions = positions + 1
