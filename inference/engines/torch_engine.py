"""The decode loop on PyTorch: transformers' Emu3 text model with a DynamicCache."""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache, Emu3TextModel

from inference.engines.base import CancelCheck, ProgressCallback, PromptBatch, decode
from inference.sampler import Sampler


class TorchBackend:
    """Runs transformers' text model; scores only the requested slice of the head."""

    def __init__(self, text_model: Emu3TextModel, lm_head: torch.nn.Linear) -> None:
        self.text_model = text_model
        self.weight = lm_head.weight
        self.device = self.weight.device

    def _run(self, ids: np.ndarray) -> None:
        out = self.text_model(
            input_ids=torch.from_numpy(ids).to(self.device),
            attention_mask=torch.from_numpy(self.mask).to(self.device),
            position_ids=torch.from_numpy(self.positions).to(self.device),
            cache=self.cache, use_cache=True,
        )
        self.hidden = out.last_hidden_state[:, -1]

    def start(self, batch: PromptBatch) -> None:
        self.cache = DynamicCache(config=self.text_model.config)
        self.mask, self.positions = batch.attention_mask, batch.position_ids
        self._run(batch.input_ids)
        self.positions = batch.next_positions()

    def logits(self, first: int, stop: int) -> np.ndarray:
        return (self.hidden @ self.weight[first:stop].t()).float().cpu().numpy()

    def feed(self, token: int) -> None:
        rows = self.mask.shape[0]
        self.mask = np.concatenate([self.mask, np.ones((rows, 1), dtype=np.int64)], axis=1)
        self._run(np.full((rows, 1), token, dtype=np.int64))
        self.positions = self.positions + 1

    def drop_unconditional(self) -> None:
        self.cache.batch_select_indices(torch.tensor([0], device=self.device))
        self.mask, self.positions, self.hidden = self.mask[:1], self.positions[:1], self.hidden[:1]


class TorchEngine:
    name = "torch"

    def __init__(self, text_model: Emu3TextModel, lm_head: torch.nn.Linear) -> None:
        self.text_model = text_model
        self.lm_head = lm_head

    @torch.inference_mode()
    def generate(self, cond_prompt: list[int], uncond_prompt: list[int], sampler: Sampler, *,
                 progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> list[int]:
        backend = TorchBackend(self.text_model, self.lm_head)
        return decode(backend, cond_prompt, uncond_prompt, sampler, progress=progress, cancel=cancel)

    @torch.inference_mode()
    def span_log_probs(self, prompt: list[int], continuation: list[int], span: tuple[int, int]) -> np.ndarray:
        """One forward pass over prompt and continuation; the head runs only on the scored positions."""
        first, stop = span
        weight = self.lm_head.weight
        targets = torch.tensor(continuation, device=weight.device)
        where = ((targets >= first) & (targets < stop)).nonzero()[:, 0]
        ids = torch.tensor([prompt + continuation], device=weight.device)
        hidden = self.text_model(input_ids=ids, use_cache=False).last_hidden_state[0, len(prompt) - 1:]
        # the position before each scored token predicts it; chunks bound the [n, span] logits of a 64x64 grid
        out = [torch.log_softmax((hidden[rows] @ weight[first:stop].t()).float(), dim=-1)
               .gather(1, (targets[rows] - first)[:, None])[:, 0] for rows in where.split(1024)]
        return torch.cat(out).double().cpu().numpy()
