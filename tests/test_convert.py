"""The published ProgEmu as it is laid out: three folders in, an HF-format checkpoint out, and the same prompts.

The fixture writes tiny checkpoints with the file names and configuration keys that ProgEmu's inference script
loads: its fine-tuned ``Emu3ForCausalLM`` (sharded safetensors with an index), BAAI's Emu3 stage-1 text tokenizer
and BAAI's Emu3 vision tokenizer.
"""

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import Emu3Config, Emu3ForConditionalGeneration, Emu3TextConfig, Emu3VQVAEConfig

from inference.convert import (
    TIKTOKEN_FILE,
    VISION_TOKENS_FILE,
    convert_checkpoint,
    convert_tokenizer,
    emu3_vision_tokens,
)
from inference.data.dataset import plan_pair, render_pair
from inference.errors import CheckpointError
from inference.loading import EngineOptions, load_pipeline
from inference.model import load_progemu, read_spec
from inference.ood import MIN_IMAGES
from inference.sampler import SamplerSettings
from inference.sequence import TokenLayout
from plugin.cli import main

CODEBOOK = 32
IMAGE_SIZE = 16
MERGES = [b"th", b"the", b"ef", b"fu", b"eff", b"ion", b"le"]
SPEC = {"name": "ProgEmu", "version": "converted-test", "image_size": IMAGE_SIZE, "max_text_tokens": 4}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))


def write_text_tokenizer(out: Path) -> None:
    """BAAI's Emu3-Stage1 tokenizer files: a tiktoken vocabulary, the vision token list, the tokenizer config."""
    out.mkdir(parents=True)
    tokens = [bytes([b]) for b in range(256)] + MERGES
    (out / TIKTOKEN_FILE).write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n"
                                             for rank, t in enumerate(tokens)))
    (out / VISION_TOKENS_FILE).write_text("\n".join(emu3_vision_tokens(CODEBOOK)) + "\n")
    write_json(out / "tokenizer_config.json", {
        "auto_map": {"AutoTokenizer": ["tokenization_emu3.Emu3Tokenizer", None]},
        "tokenizer_class": "Emu3Tokenizer", "bos_token": "<|extra_203|>", "eos_token": "<|extra_204|>",
        "pad_token": "<|endoftext|>", "img_token": "<|image token|>", "boi_token": "<|image start|>",
        "eoi_token": "<|image end|>", "eol_token": "<|extra_200|>", "eof_token": "<|extra_201|>",
        "special_tokens_file": VISION_TOKENS_FILE, "model_max_length": 512, "padding_side": "left"})
    (out / "tokenization_emu3.py").write_text("# BAAI's remote code ships here; the converter never runs it\n")


def write_language_model(model: Emu3ForConditionalGeneration, layout: TokenLayout, out: Path) -> None:
    """ProgEmu's ``--model_path``: remote-code config keys, weights in two shards with an index."""
    out.mkdir(parents=True)
    text = model.config.text_config
    state = {k.replace("model.text_model.", "model."): v.contiguous() for k, v in model.state_dict().items()
             if k.startswith("model.text_model.") or k.startswith("lm_head.")}
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, out / shard, metadata={"format": "pt"})
    write_json(out / "model.safetensors.index.json", {
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
        "weight_map": {key: shard for shard, keys in shards.items() for key in keys}})
    write_json(out / "config.json", {
        "_name_or_path": "massaki75/progemu", "architectures": ["Emu3ForCausalLM"], "attention_dropout": 0.1,
        "auto_map": {"AutoConfig": "configuration_emu3.Emu3Config",
                     "AutoModelForCausalLM": "modeling_emu3.Emu3ForCausalLM"},
        "boi_token_id": layout.image_start, "bos_token_id": layout.bos, "eof_token_id": layout.eof,
        "eoi_token_id": layout.image_end, "eol_token_id": layout.eol, "eos_token_id": layout.eos,
        "hidden_act": "silu", "hidden_size": text.hidden_size, "image_area": IMAGE_SIZE * IMAGE_SIZE,
        "img_token_id": layout.image_token, "initializer_range": 0.02, "intermediate_size": text.intermediate_size,
        "max_position_embeddings": text.max_position_embeddings, "model_type": "Emu3",
        "num_attention_heads": text.num_attention_heads, "num_hidden_layers": text.num_hidden_layers,
        "num_key_value_heads": text.num_key_value_heads, "pad_token_id": layout.pad, "pretraining_tp": 1,
        "rms_norm_eps": text.rms_norm_eps, "rope_scaling": None, "rope_theta": 1000000.0,
        "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True, "vocab_size": text.vocab_size})
    write_json(out / "generation_config.json", {"bos_token_id": layout.bos, "eos_token_id": layout.eos,
                                                "pad_token_id": layout.pad})


def write_vision_tokenizer(model: Emu3ForConditionalGeneration, out: Path) -> None:
    """BAAI's Emu3-VisionTokenizer: its config keys, image processor config and one safetensors file."""
    out.mkdir(parents=True)
    vq = model.config.vq_config
    save_file({k.removeprefix("model.vqmodel."): v.contiguous() for k, v in model.state_dict().items()
               if k.startswith("model.vqmodel.")}, out / "model.safetensors", metadata={"format": "pt"})
    write_json(out / "config.json", {
        "architectures": ["Emu3VisionVQModel"], "attn_resolutions": list(vq.attn_resolutions),
        "auto_map": {"AutoConfig": "configuration_emu3visionvq.Emu3VisionVQConfig",
                     "AutoModel": "modeling_emu3visionvq.Emu3VisionVQModel"},
        "ch": vq.base_channels, "ch_mult": list(vq.channel_multiplier), "codebook_size": vq.codebook_size,
        "double_z": vq.double_latent, "dropout": 0.0, "embed_dim": vq.embed_dim, "in_channels": vq.in_channels,
        "model_type": "Emu3VisionVQ", "num_res_blocks": vq.num_res_blocks, "out_channels": vq.out_channels,
        "temporal_downsample_factor": vq.temporal_downsample_factor, "torch_dtype": "float32",
        "z_channels": vq.latent_channels})
    write_json(out / "preprocessor_config.json", {
        "auto_map": {"AutoImageProcessor": "image_processing_emu3visionvq.Emu3VisionVQImageProcessor"},
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Emu3VisionVQImageProcessor",
        "image_std": [0.5, 0.5, 0.5], "max_pixels": IMAGE_SIZE ** 2, "min_pixels": IMAGE_SIZE ** 2, "resample": 1,
        "rescale_factor": 1 / 255, "spatial_factor": 2})


Release = tuple[Path, Path, Path, Emu3ForConditionalGeneration]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """(language model, text tokenizer, vision tokenizer, the reference network they were written from)."""
    root = tmp_path_factory.mktemp("release")
    text_dir, llm_dir, vq_dir = root / "Emu3-Stage1", root / "progemu", root / "Emu3-VisionTokenizer"
    write_text_tokenizer(text_dir)
    tokenizer = convert_tokenizer(text_dir / TIKTOKEN_FILE, emu3_vision_tokens(CODEBOOK))
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
    write_language_model(model, layout, llm_dir)
    write_vision_tokenizer(model, vq_dir)
    return llm_dir, text_dir, vq_dir, model


@pytest.fixture(scope="module")
def converted(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release converted by the command line, as the documentation says to."""
    llm_dir, text_dir, vq_dir, _ = release
    out = tmp_path_factory.mktemp("converted") / "progemu-hf"
    assert main(["convert-checkpoint", str(llm_dir), str(out), "--text-tokenizer", str(text_dir),
                 "--vision-tokenizer", str(vq_dir), "--version", SPEC["version"],
                 "--image-size", str(IMAGE_SIZE)]) == 0
    return out


def copy_release(release: Release, tmp_path: Path) -> tuple[Path, Path, Path]:
    llm_dir, text_dir, vq_dir, _ = release
    copies = tuple(tmp_path / d.name for d in (llm_dir, text_dir, vq_dir))
    for original, copy in zip((llm_dir, text_dir, vq_dir), copies, strict=True):
        shutil.copytree(original, copy)
    return copies


def test_tokenizer_keeps_emu3_special_ids(release: Release) -> None:
    """Emu3's numbering: text, then pad and chat tokens, 205 extras, then emu3_vision_tokens.txt in its order."""
    text_dir = release[1]
    tokenizer = convert_tokenizer(text_dir / TIKTOKEN_FILE, emu3_vision_tokens(CODEBOOK))
    layout = TokenLayout.from_tokenizer(tokenizer, CODEBOOK)
    assert (layout.pad, layout.eol, layout.eof, layout.bos, layout.eos) == (263, 466, 467, 469, 470)
    assert (layout.image_token, layout.image_start, layout.image_end, layout.visual_offset) == (471, 472, 473, 474)
    assert tokenizer.decode(tokenizer.encode("the effusion", add_special_tokens=False)) == "the effusion"
    assert tokenizer.encode("the", add_special_tokens=False) == [257]  # merges survive


def test_converted_release_matches_the_source_and_generates(release: Release, converted: Path) -> None:
    reference = release[3]
    model = load_progemu(converted)
    assert read_spec(converted).image_size == IMAGE_SIZE
    ids = torch.tensor([[model.layout.bos, 5, 9, model.layout.visual_offset + 3]])
    with torch.inference_mode():
        expected = reference(input_ids=ids).logits
        got = model.lm_head(model.text_model(input_ids=ids).last_hidden_state)
    torch.testing.assert_close(got, expected)
    image = np.random.default_rng(0).random((1, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    with torch.inference_mode():
        pixels = torch.from_numpy(image * 2 - 1)[:, None].expand(-1, 3, -1, -1)
        codes = reference.model.vqmodel.encode(pixels, torch.tensor([[IMAGE_SIZE, IMAGE_SIZE]])).image_tokens[0]
    assert np.array_equal(model.vision.encode(image)[0], codes.numpy())

    pipeline = load_pipeline(converted, EngineOptions(engine="torch"))
    result = pipeline.run(image[0], "the effusion", SamplerSettings(seed=1, max_text_tokens=2))
    grid = IMAGE_SIZE // 2
    image_tokens = result.tokens[:model.layout.image_tokens_length(grid, grid)]
    assert image_tokens[-2:] == (model.layout.eof, model.layout.image_end)
    assert result.decoded.shape == (IMAGE_SIZE, IMAGE_SIZE)


def test_prompt_is_progemus_sequence_token_for_token(converted: Path) -> None:
    """ProgEmu's ``format_multimodal_prompt``: BOS, prior image prompt, condition text, output image prompt.

    Written out by hand from the fixture's vocabulary: bytes are their own ids ("2" 50, "*" 42, "3" 51,
    "6" 54, "4" 52, " " 32, "s" 115, "i" 105, "o" 111, "n" 110), "the" 257, "ef" 258, "fu" 259 ("eff" loses
    to the lower-ranked "fu"; "ion" has no path of merges); EOL 466, EOF 467, BOS 469, image token 471,
    image start 472, image end 473, visual token k is 474 + k.
    """
    prompts = load_progemu(converted).prompts
    prior = np.array([[0, 1, 2], [3, 4, 5]])
    followup = np.array([[31, 30, 29], [7, 8, 9]])
    prior_prompt = [472, 50, 42, 51, 471, 474, 475, 476, 466, 477, 478, 479, 466, 467, 473]
    condition = [257, 32, 258, 259, 115, 105, 111, 110]
    output_prompt = [472, 50, 42, 51, 471, 505, 504, 503, 466, 481, 482, 483, 466, 467, 473]
    progemu = [469, *prior_prompt, *condition, *output_prompt]
    assert prompts.conditional_prompt(prior, "the effusion") + prompts.image_body(followup) == progemu
    # CFG's negative row: ProgEmu's processor on the empty prompt with no image (its default 64x64 grid)
    assert prompts.unconditional_prompt(64, 64) == [469, 472, 54, 52, 42, 54, 52, 471]


def test_calibrate_runs_on_the_converted_checkpoint(converted: Path, tmp_path: Path) -> None:
    checkpoint = shutil.copytree(converted, tmp_path / "checkpoint")
    images = tmp_path / "priors"
    images.mkdir()
    for index in range(2 * MIN_IMAGES):  # the least calibration takes: half fit the layout, half score
        prior = render_pair(plan_pair(index, 3), IMAGE_SIZE)[0]
        Image.fromarray((prior * 255).round().astype(np.uint8)).save(images / f"{index:02d}.png")
    assert main(["calibrate", "--model", str(checkpoint), "--images", str(images), "--quantile", "0.9"]) == 0
    assert read_spec(checkpoint).ood is not None


def test_pickled_weights_are_refused_with_how_to_convert(release: Release, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    llm_dir, text_dir, vq_dir = copy_release(release, tmp_path)
    for shard in llm_dir.glob("model*.safetensors*"):
        shard.unlink()
    (llm_dir / "pytorch_model.bin").write_bytes(b"not unpickled")
    code = main(["convert-checkpoint", str(llm_dir), str(tmp_path / "out"), "--text-tokenizer", str(text_dir),
                 "--vision-tokenizer", str(vq_dir)])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert "pytorch_model.bin" in error and "weights_only=True" in error and "safe_serialization=True" in error
    assert not (tmp_path / "out").exists()


def test_missing_shard_and_tokenizer_files_are_refused(release: Release, tmp_path: Path) -> None:
    llm_dir, text_dir, vq_dir = copy_release(release, tmp_path)
    (text_dir / VISION_TOKENS_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"lacks {VISION_TOKENS_FILE}"):
        convert_checkpoint(llm_dir, tmp_path / "out", text_tokenizer_dir=text_dir, vision_dir=vq_dir)
    with pytest.raises(CheckpointError, match="lacks its vocabulary file"):
        convert_checkpoint(llm_dir, tmp_path / "out", vision_dir=vq_dir)  # the model folder has no tokenizer
    (text_dir / VISION_TOKENS_FILE).write_text("\n".join(emu3_vision_tokens(CODEBOOK)) + "\n")
    (llm_dir / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lacks weight shard"):
        convert_checkpoint(llm_dir, tmp_path / "out", text_tokenizer_dir=text_dir, vision_dir=vq_dir)


def test_config_that_disagrees_with_the_tokenizer_is_refused(release: Release, tmp_path: Path) -> None:
    llm_dir, text_dir, vq_dir = copy_release(release, tmp_path)
    config = json.loads((llm_dir / "config.json").read_text())
    config["img_token_id"] += 1
    write_json(llm_dir / "config.json", config)
    with pytest.raises(CheckpointError, match="img_token_id 472 != 471"):
        convert_checkpoint(llm_dir, tmp_path / "out", text_tokenizer_dir=text_dir, vision_dir=vq_dir)


def test_wrong_architecture_and_shapes_are_refused(release: Release, tmp_path: Path) -> None:
    llm_dir, text_dir, vq_dir = copy_release(release, tmp_path)
    config = json.loads((llm_dir / "config.json").read_text())
    write_json(llm_dir / "config.json", config | {"intermediate_size": 96})
    with pytest.raises(CheckpointError, match="shapes do not match"):
        convert_checkpoint(llm_dir, tmp_path / "out", text_tokenizer_dir=text_dir, vision_dir=vq_dir, spec=SPEC)
    write_json(llm_dir / "config.json", config | {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    with pytest.raises(CheckpointError, match="not an original-layout"):
        convert_checkpoint(llm_dir, tmp_path / "out", text_tokenizer_dir=text_dir, vision_dir=vq_dir)


def test_truncated_weights(release: Release, tmp_path: Path) -> None:
    llm_dir, text_dir, vq_dir = copy_release(release, tmp_path)
    weights = vq_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        convert_checkpoint(llm_dir, tmp_path / "out", text_tokenizer_dir=text_dir, vision_dir=vq_dir)
