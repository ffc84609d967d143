"""Resumable training state: model, optimiser, scheduler, step and RNG, saved atomically."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save_state(path: Path, **state: object) -> None:
    """Write through a temp file so an interrupted save never corrupts the last good state."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict | None:
    """Our own state files only: weights_only keeps unpickling to tensors and plain containers."""
    if not path.exists():
        return None
    return torch.load(path, weights_only=True)
