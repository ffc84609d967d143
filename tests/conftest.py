"""Shared fixtures: small ProgEmu checkpoints the tests make themselves (no hub is reachable); the test tiers.

Two markers sort the tests into tiers:

* ``integration``: needs a server or a heavy program outside this process: Orthanc, PostgreSQL, Redis, Chromium, the
  Node.js FHIR server (tests/fhir_server), a node subprocess (`progemu serve` or `progemu listen`), or docker compose
  and hadolint; or runs real DICOM associations against a listener on a port (DCMTK or pynetdicom as the peer). A
  test parametrised over SQLite and PostgreSQL carries it on the PostgreSQL case only.
* ``slow`` (registered in pyproject.toml): heavy computation, no outside service: ONNX export, training, calibration
  and evaluation runs, the shipped demo model, or a model run end to end through the CLI.

    pytest -m "not integration and not slow"    # the fast tier: under a minute on 2 cores
    pytest -m "integration or slow"              # the rest
    pytest                                       # everything (`make test`)
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from inference.model import ModelSpec, ProgEmuModel, build_small_progemu, load_progemu, save_progemu


def pytest_configure(config: pytest.Config) -> None:
    # `slow` is registered in pyproject.toml; `integration` here, where the tiers are described
    config.addinivalue_line("markers", "integration: needs an external server or heavy external program "
                                       "(Orthanc, PostgreSQL, Redis, Chromium, the FHIR server, a `progemu serve` or "
                                       "`progemu listen` subprocess, docker compose/hadolint), or real DICOM "
                                       "associations with a listener on a port")


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
