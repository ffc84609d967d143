"""Conversion of the original (remote-code) Emu3/ProgEmu layout to the Hugging Face format."""

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import Emu3Config, Emu3ForConditionalGeneration, Emu3TextConfig, Emu3VQVAEConfig

from inference.convert import TIKTOKEN_FILE, VISION_DIR, convert_checkpoint, convert_tokenizer
from inference.errors import CheckpointError
from inference.model import load_progemu
from inference.sequence import TokenLayout

CODEBOOK = 32
MERGES = [b"th", b"the", b"ef", b"fu", b"eff", b"ion", b"le"]


def write_tiktoken(path: Path) -> None:
    tokens = [bytes([b]) for b in range(256)] + MERGES
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))


def write_original(model: Emu3ForConditionalGeneration, tiktoken: Path, out: Path) -> None:
    """What the hub holds for Emu3/ProgEmu: remote-code LM keys and a separate vision tokenizer."""
    text, vq = model.config.text_config, model.config.vq_config
    (out / VISION_DIR).mkdir(parents=True)
    lm_state = {k.replace("model.text_model.", "model."): v for k, v in model.state_dict().items()
                if k.startswith("model.text_model.") or k.startswith("lm_head.")}
    vq_state = {k.removeprefix("model.vqmodel."): v for k, v in model.state_dict().items()
                if k.startswith("model.vqmodel.")}
    save_file({k: v.contiguous() for k, v in lm_state.items()}, out / "model.safetensors")
    save_file({k: v.contiguous() for k, v in vq_state.items()}, out / VISION_DIR / "model.safetensors")
    (out / "config.json").write_text(json.dumps({
        "model_type": "Emu3", "architectures": ["Emu3ForCausalLM"],
        "auto_map": {"AutoModelForCausalLM": "modeling_emu3.Emu3ForCausalLM"},
        "vocab_size": text.vocab_size, "hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers, "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads, "max_position_embeddings": text.max_position_embeddings,
        "rms_norm_eps": text.rms_norm_eps, "rope_theta": 1e6, "pad_token_id": text.pad_token_id,
        "bos_token_id": text.bos_token_id, "eos_token_id": text.eos_token_id}))
    (out / VISION_DIR / "config.json").write_text(json.dumps({
        "model_type": "Emu3VisionVQ", "codebook_size": vq.codebook_size, "embed_dim": vq.embed_dim,
        "z_channels": vq.latent_channels, "double_z": vq.double_latent, "in_channels": vq.in_channels,
        "out_channels": vq.out_channels, "temporal_downsample_factor": vq.temporal_downsample_factor,
        "ch": vq.base_channels, "ch_mult": list(vq.channel_multiplier), "num_res_blocks": vq.num_res_blocks,
        "attn_resolutions": list(vq.attn_resolutions)}))
    shutil.copy(tiktoken, out / TIKTOKEN_FILE)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Emu3ForConditionalGeneration]:
    root = tmp_path_factory.mktemp("original")
    tiktoken = root / "vocab.tiktoken"
    write_tiktoken(tiktoken)
    tokenizer = convert_tokenizer(tiktoken, CODEBOOK)
    layout = TokenLayout.from_tokenizer(tokenizer, CODEBOOK)
    text = Emu3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                          pad_token_id=layout.pad, bos_token_id=layout.bos, eos_token_id=layout.eos,
                          rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    vq = Emu3VQVAEConfig(codebook_size=CODEBOOK, base_channels=32, channel_multiplier=[1, 2], num_res_blocks=1,
                         attn_resolutions=[], hidden_size=64, num_attention_heads=1)
    vocabulary_map = {tokenizer.convert_ids_to_tokens(i): i for i in range(len(tokenizer))}
    torch.manual_seed(0)
    model = Emu3ForConditionalGeneration(Emu3Config(text_config=text.to_dict(), vq_config=vq.to_dict(),
                                                    vocabulary_map=vocabulary_map)).eval()
    source = root / "progemu-original"
    write_original(model, tiktoken, source)
    return source, model


def test_tokenizer_keeps_emu3_special_ids(original: tuple[Path, Emu3ForConditionalGeneration]) -> None:
    tokenizer = convert_tokenizer(original[0] / TIKTOKEN_FILE, CODEBOOK)
    text_size = 256 + len(MERGES)
    layout = TokenLayout.from_tokenizer(tokenizer, CODEBOOK)
    assert layout.pad == text_size and layout.eol == text_size + 3 + 200 and layout.bos == text_size + 3 + 203
    assert layout.visual_offset == text_size + 3 + 205 + 3
    assert tokenizer.decode(tokenizer.encode("the effusion", add_special_tokens=False)) == "the effusion"
    assert len(tokenizer.encode("the", add_special_tokens=False)) == 1  # merges survive


def test_converted_checkpoint_matches_the_source(original: tuple[Path, Emu3ForConditionalGeneration],
                                                 tmp_path: Path) -> None:
    source, reference = original
    identity = convert_checkpoint(source, tmp_path / "hf", spec={"name": "ProgEmu", "version": "converted-test",
                                                                 "image_size": 32, "max_text_tokens": 8})
    model = load_progemu(tmp_path / "hf")
    assert model.checkpoint_sha256 == identity
    ids = torch.tensor([[model.layout.bos, 5, 9, model.layout.visual_offset + 3]])
    with torch.inference_mode():
        expected = reference(input_ids=ids).logits
        got = model.lm_head(model.text_model(input_ids=ids).last_hidden_state)
    torch.testing.assert_close(got, expected)
    image = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        pixels = torch.from_numpy(image * 2 - 1)[:, None].expand(-1, 3, -1, -1)
        codes = reference.model.vqmodel.encode(pixels, torch.tensor([[32, 32]])).image_tokens[0]
    assert np.array_equal(model.vision.encode(image)[0], codes.numpy())


def test_wrong_architecture_is_refused(original: tuple[Path, Emu3ForConditionalGeneration], tmp_path: Path) -> None:
    source = tmp_path / "bad"
    shutil.copytree(original[0], source)
    config = json.loads((source / "config.json").read_text())
    config["model_type"], config["architectures"] = "llama", ["LlamaForCausalLM"]
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not an original-layout"):
        convert_checkpoint(source, tmp_path / "out")


def test_shape_mismatch_is_refused(original: tuple[Path, Emu3ForConditionalGeneration], tmp_path: Path) -> None:
    source = tmp_path / "bad"
    shutil.copytree(original[0], source)
    config = json.loads((source / "config.json").read_text())
    config["intermediate_size"] = 96
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shapes do not match"):
        convert_checkpoint(source, tmp_path / "out")


def test_missing_vision_tokenizer_and_vocabulary(original: tuple[Path, Emu3ForConditionalGeneration],
                                                 tmp_path: Path) -> None:
    source = tmp_path / "bad"
    shutil.copytree(original[0], source)
    (source / TIKTOKEN_FILE).unlink()
    with pytest.raises(CheckpointError, match="lacks its vocabulary"):
        convert_checkpoint(source, tmp_path / "out")
    shutil.rmtree(source / VISION_DIR)
    with pytest.raises(CheckpointError, match="lacks config.json"):
        convert_checkpoint(source, tmp_path / "out")


def test_truncated_weights(original: tuple[Path, Emu3ForConditionalGeneration], tmp_path: Path) -> None:
    source = tmp_path / "bad"
    shutil.copytree(original[0], source)
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        convert_checkpoint(source, tmp_path / "out")
