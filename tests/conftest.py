"""Shared fixtures: small ProgEmu checkpoints the tests make themselves (no hub is reachable)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from inference.model import ModelSpec, ProgEmuModel, build_small_progemu, load_progemu, save_progemu

SMALL_SPEC = ModelSpec(name="ProgEmu", version="test-small-0", image_size=64, max_text_tokens=24)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init ProgEmu-architecture checkpoint in the Hugging Face format (64 px, 8x8 grid)."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    out = tmp_path_factory.mktemp("ckpt") / "small"
    network, tokenizer = build_small_progemu(codebook_size=64, hidden_size=32, layers=2, heads=2,
                                             vq_base_channels=32, seed=3)
    save_progemu(network, tokenizer, SMALL_SPEC, out)
    return out


@pytest.fixture(scope="session")
def small_model(small_checkpoint: Path) -> ProgEmuModel:
    return load_progemu(small_checkpoint)
