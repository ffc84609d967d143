"""Checkpoint loading in the Hugging Face format, the sha256 identity, and clear refusals."""

import json
import shutil
from pathlib import Path

import pytest

from inference.checkpoint import MANIFEST_NAME, checkpoint_identity
from inference.errors import CheckpointError
from inference.model import load_progemu


@pytest.fixture
def copy(small_checkpoint: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(small_checkpoint, target)
    return target


def test_round_trip_keeps_identity_and_spec(small_checkpoint: Path) -> None:
    model = load_progemu(small_checkpoint)
    assert model.checkpoint_sha256 == checkpoint_identity(small_checkpoint)
    assert len(model.checkpoint_sha256) == 64
    assert model.spec.version == "test-small-0" and model.grid == 8
    manifest = (small_checkpoint / MANIFEST_NAME).read_text()
    assert "model.safetensors" in manifest and "tokenizer.json" in manifest


def test_changed_file_changes_identity_and_fails_manifest(copy: Path) -> None:
    before = checkpoint_identity(copy)
    spec = json.loads((copy / "progemu.json").read_text())
    spec["version"] = "tampered"
    (copy / "progemu.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="does not match its manifest.sha256"):
        load_progemu(copy)
    (copy / MANIFEST_NAME).unlink()
    assert checkpoint_identity(copy) != before


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_progemu(tmp_path / "nope")


@pytest.mark.parametrize("name, message", [
    ("config.json", "lacks config.json"),
    ("model.safetensors", "no model.safetensors"),
    ("tokenizer.json", "lacks its tokenizer"),
])
def test_missing_files(copy: Path, name: str, message: str) -> None:
    (copy / name).unlink()
    if name == "tokenizer.json":
        (copy / "tokenizer_config.json").unlink()
    with pytest.raises(CheckpointError, match=message):
        load_progemu(copy)


def test_truncated_safetensors(copy: Path) -> None:
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_progemu(copy)


def test_wrong_architecture(copy: Path) -> None:
    config = json.loads((copy / "config.json").read_text())
    config["model_type"] = "llama"
    config["architectures"] = ["LlamaForCausalLM"]
    (copy / "config.json").write_text(json.dumps(config))
    (copy / MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointError, match="not an Emu3/ProgEmu checkpoint"):
        load_progemu(copy)


def test_original_layout_asks_for_conversion(copy: Path) -> None:
    config = json.loads((copy / "config.json").read_text())
    config["model_type"] = "Emu3"
    config["architectures"] = ["Emu3ForCausalLM"]
    (copy / "config.json").write_text(json.dumps(config))
    (copy / MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointError, match="convert-checkpoint"):
        load_progemu(copy)


def test_shape_mismatch(copy: Path) -> None:
    config = json.loads((copy / "config.json").read_text())
    config["text_config"]["hidden_size"] = 48
    (copy / "config.json").write_text(json.dumps(config))
    (copy / MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointError, match="cannot load"):
        load_progemu(copy)
