"""Stage 2: train ProgEmu's decoder language model on tokenised quadruples.

Each example is ``BOS prior hypothesis follow-up interpretation EOS`` built by
the same :class:`PromptBuilder` inference uses; the loss covers the follow-up
image and the interpretation only. A fraction of examples drops the prior and
the hypothesis (ProgEmu's null prompt) so that CFG has an unconditional model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import Emu3ForCausalLM, Emu3TextConfig

from inference.sequence import IGNORE_INDEX, PromptBuilder
from inference.training.history import StageLog
from inference.training.state import resume, save_state


@dataclass(frozen=True)
class LMTrainConfig:
    # Sized so that the recipe trains on a 2-core CPU: a wider, deeper model was too slow per step. The step
    # count trades training time for held-out alignment, which steps beyond the first demo model's raised
    # enough to be worth the time (step times and alignment per demo model: docs/model.md).
    hidden_size: int = 192
    layers: int = 4
    heads: int = 6
    intermediate_size: int = 576
    max_positions: int = 1024
    steps: int = 4000
    batch_size: int = 8
    learning_rate: float = 2e-3
    final_learning_rate: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.05
    null_prompt_prob: float = 0.1
    changed_token_weight: float = 1.0
    """Loss weight of the follow-up image tokens whose code differs from the prior's (1 = a plain mean).

    Most follow-up codes copy the prior; the few that carry the hypothesised change are what alignment
    depends on, and a plain mean dilutes them among the copies. A weight above 1 helps as a fine-tune of a
    plainly trained model (the recipe's refine stage), but from scratch it teaches over-editing (docs/model.md)."""
    seed: int = 0
    save_every: int = 100
    max_text_tokens: int = 200
    """Recorded in the checkpoint's spec: the longest interpretation inference will generate."""


@dataclass(frozen=True)
class TokenisedPairs:
    """Training quadruples with images already turned into VQ codes."""

    prior_codes: np.ndarray  # int [N, h, w]
    followup_codes: np.ndarray  # int [N, h, w]
    hypotheses: list[str]
    interpretations: list[str]

    def __len__(self) -> int:
        return len(self.hypotheses)


def build_language_model(config: LMTrainConfig, prompts: PromptBuilder, vocab_size: int) -> Emu3ForCausalLM:
    lay = prompts.layout
    text = Emu3TextConfig(
        vocab_size=vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.heads,
        max_position_embeddings=config.max_positions, pad_token_id=lay.pad, bos_token_id=lay.bos,
        eos_token_id=lay.eos, attention_dropout=0.0,
    )
    torch.manual_seed(config.seed)
    return Emu3ForCausalLM(text)


def _changed_weights(prior: np.ndarray, followup: np.ndarray, weight: float) -> np.ndarray:
    """Per-token weights of a follow-up image body (rows of codes, each closed by EOL, then EOF, image end)."""
    rows = np.where(prior != followup, weight, 1.0)
    body = np.concatenate([rows, np.ones((rows.shape[0], 1))], axis=1).reshape(-1)
    return np.concatenate([body, [1.0, 1.0]])


def _batch(pairs: TokenisedPairs, indices: np.ndarray, drop: np.ndarray, prompts: PromptBuilder,
           changed_token_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded ids, labels, attention mask and per-token loss weights."""
    rows = [prompts.training_example(pairs.prior_codes[i], pairs.hypotheses[i], pairs.followup_codes[i],
                                     pairs.interpretations[i], unconditional=bool(d))
            for i, d in zip(indices, drop, strict=True)]
    length = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), length), prompts.layout.pad, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    weights = torch.ones((len(rows), length), dtype=torch.float32)
    for r, ((row_ids, row_labels), i, d) in enumerate(zip(rows, indices, drop, strict=True)):
        ids[r, : len(row_ids)] = torch.tensor(row_ids)
        labels[r, : len(row_labels)] = torch.tensor(row_labels)
        mask[r, : len(row_ids)] = 1
        if changed_token_weight != 1.0 and not d:  # the null prompt has no prior to differ from
            body = _changed_weights(pairs.prior_codes[i], pairs.followup_codes[i], changed_token_weight)
            start = next(k for k, t in enumerate(row_labels) if t != IGNORE_INDEX)
            weights[r, start:start + len(body)] = torch.from_numpy(body)
    return ids, labels, mask, weights


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, a weighted mean over the labelled positions."""
    targets, token_weights = labels[:, 1:], weights[:, 1:]
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                               ignore_index=IGNORE_INDEX, reduction="none")
    token_weights = token_weights.flatten() * (targets.flatten() != IGNORE_INDEX)
    return (losses * token_weights).sum() / token_weights.sum()


def _learning_rate(step: int, config: LMTrainConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.final_learning_rate + (config.learning_rate - config.final_learning_rate) * cosine


def train_language_model(pairs: TokenisedPairs, prompts: PromptBuilder, vocab_size: int, config: LMTrainConfig,
                         work_dir: Path, *, initial: Emu3ForCausalLM | None = None, stage: str = "lm",
                         progress: Callable[[int, int, float], None] | None = None) -> Emu3ForCausalLM:
    """Train (or resume) in ``work_dir``; deterministic for a seed, the same whether resumed or not.

    With ``initial`` this fine-tunes a copy of that model (whose architecture then wins over the config's
    sizes) instead of starting from random weights; ``initial`` itself is left as it was.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    state_path = work_dir / "lm_state.pt"
    model = (copy.deepcopy(initial) if initial is not None
             else build_language_model(config, prompts, vocab_size)).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config.learning_rate, betas=(0.9, 0.95))
    start = resume(state_path, model, optimiser)
    stage_log = StageLog(work_dir, stage, "loss", f"language model ({stage}): training loss", config.steps, start,
                         progress)
    for step in range(start, config.steps):
        rng = np.random.default_rng([config.seed, step])  # per-step stream: resuming changes nothing
        indices = rng.integers(0, len(pairs), size=config.batch_size)
        drop = rng.random(config.batch_size) < config.null_prompt_prob
        ids, labels, mask, weights = _batch(pairs, indices, drop, prompts, config.changed_token_weight)
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(step, config)
        loss = weighted_loss(model(input_ids=ids, attention_mask=mask).logits, labels, weights)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        done = step + 1
        stage_log.record(done, loss.item())
        if done % config.save_every == 0 or done == config.steps:
            save_state(state_path, model=model.state_dict(), optimiser=optimiser.state_dict(), step=done)
            stage_log.save(done)
    return model.eval()
