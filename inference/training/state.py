"""Resumable training state: model, optimiser, scheduler, step and RNG, saved atomically."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import torch
from boltons.fileutils import atomic_save

log = logging.getLogger(__name__)


def save_state(path: Path, **state: object) -> None:
    """Write through a fsynced part file and rename, so an interrupted save never corrupts the last good state."""
    with atomic_save(str(path), part_file=f".{path.name}.{uuid.uuid4().hex}.part") as stream:
        torch.save(state, stream)


def resume(path: Path, model: torch.nn.Module, optimiser: torch.optim.Optimizer) -> int:
    """Load the last saved state into ``model`` and ``optimiser``; return the step to continue from.

    Our own state files only: weights_only keeps unpickling to tensors and plain containers.
    """
    if not path.exists():
        return 0
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    log.info("resuming %s at step %d", path.name, state["step"])
    return int(state["step"])
