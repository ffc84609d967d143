"""Stage 1: train the small VQ-VAE image tokenizer on the phantom images.

Two measures keep the codebook alive, which plain VQ-VAE training on a CPU
budget does not (its codebook collapses early, docs/model.md): the
codebook starts from encoder outputs, and codes unused for a while are
restarted on current encoder outputs.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from inference.small_vq import SmallVQConfig, SmallVQVAE
from inference.training.history import StageLog
from inference.training.state import resume, save_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VQTrainConfig:
    model: SmallVQConfig = SmallVQConfig()
    steps: int = 2500
    batch_size: int = 32
    learning_rate: float = 2e-3
    restart_every: int = 100
    seed: int = 0
    save_every: int = 250


def _restart_dead_codes(model: SmallVQVAE, usage: torch.Tensor, latents: torch.Tensor,
                        generator: torch.Generator) -> int:
    dead = (usage == 0).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    flat = latents.detach().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    picks = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator)
    with torch.no_grad():
        model.codebook.weight[dead] = flat[picks]
    return int(dead.numel())


def train_vq(images: np.ndarray, config: VQTrainConfig, work_dir: Path, *, initial: SmallVQVAE | None = None,
             progress: Callable[[int, int, float], None] | None = None) -> SmallVQVAE:
    """Train (or resume) on float32 images [N, H, W] in [0, 1].

    With ``initial`` this fine-tunes a copy of that tokenizer (its architecture wins over the config's) and keeps
    its codebook: only codes the new images leave unused are restarted.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    state_path = work_dir / "vq_state.pt"
    torch.manual_seed(config.seed)
    model = (copy.deepcopy(initial) if initial is not None else SmallVQVAE(config.model)).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    start = resume(state_path, model, optimiser)
    stage_log = StageLog(work_dir, "vq", "mse", "VQ tokenizer: reconstruction MSE", config.steps, start, progress)
    usage = torch.zeros(model.config.codebook_size)
    for step in range(start, config.steps):
        rng = np.random.default_rng([config.seed, step])
        batch = torch.from_numpy(images[rng.integers(0, len(images), size=config.batch_size)])[:, None]
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        if step == 0 and initial is None:
            with torch.no_grad():
                _restart_dead_codes(model, torch.zeros_like(usage), model.encode_latents(batch), generator)
        lr = config.learning_rate * (0.1 + 0.9 * (1 - step / config.steps))
        for group in optimiser.param_groups:
            group["lr"] = lr
        reconstruction, vq_loss, codes = model(batch)
        loss = F.mse_loss(reconstruction, batch) + 0.5 * F.l1_loss(reconstruction, batch) + vq_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        usage += torch.bincount(codes.flatten(), minlength=model.config.codebook_size).float()
        if (step + 1) % config.restart_every == 0 and step + 1 < config.steps * 0.8:
            with torch.no_grad():
                restarted = _restart_dead_codes(model, usage, model.encode_latents(batch), generator)
            log.debug("restarted %d dead codes at step %d", restarted, step + 1)
            usage.zero_()
        done = step + 1
        stage_log.record(done, F.mse_loss(reconstruction, batch).item())
        if done % config.save_every == 0 or done == config.steps:
            save_state(state_path, model=model.state_dict(), optimiser=optimiser.state_dict(), step=done)
            stage_log.save(done)
    return model.eval()
