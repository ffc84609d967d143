"""Convert ProgEmu's / Emu3's original hub layout to the Hugging Face format.

The original layout is three folders, as ProgEmu's inference script loads them:
the fine-tuned remote-code ``Emu3ForCausalLM`` (Llama-style keys, safetensors,
one file or sharded with an index), BAAI's Emu3 text tokenizer (``emu3.tiktoken``
and ``emu3_vision_tokens.txt``, whose order fixes the special ids) and BAAI's
vision tokenizer (``Emu3VisionVQ``). The weight mapping follows transformers'
``convert_emu3_weights_to_hf.py``; the vocabulary is rebuilt with transformers'
own ``TikTokenConverter``. Pickled weights are refused: unpickling runs code.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import Emu3Config, Emu3ForConditionalGeneration, Emu3TextConfig, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from inference.checkpoint import SPEC_NAME, check_safetensors, read_json, weight_files, write_manifest
from inference.errors import CheckpointError
from inference.sequence import BOS, EOS, IMAGE_END, IMAGE_START, IMAGE_TOKEN, PAD, TokenLayout, visual_token_name
from inference.text_tokenizer import vocabulary_map

log = logging.getLogger(__name__)

TIKTOKEN_FILE = "emu3.tiktoken"
VISION_TOKENS_FILE = "emu3_vision_tokens.txt"
"""BAAI's list of the specials after the 205 extras: image token, image start, image end, then the visual tokens."""
PICKLED_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.bin.index.json")
CONFIG_TOKEN_IDS = {"pad_token_id": "pad", "bos_token_id": "bos", "eos_token_id": "eos", "img_token_id": "image_token",
                    "boi_token_id": "image_start", "eoi_token_id": "image_end", "eol_token_id": "eol",
                    "eof_token_id": "eof"}
"""Token ids that Emu3's ``config.json`` names, to the :class:`TokenLayout` field that must agree."""
VISION_DIR = "vision_tokenizer"
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
VQ_KEYS = {"^encoder": "model.vqmodel.encoder", "^decoder": "model.vqmodel.decoder",
           "^post_quant_conv": "model.vqmodel.post_quant_conv", "^quant_conv": "model.vqmodel.quant_conv",
           "^quantize": "model.vqmodel.quantize"}
LM_KEYS = {r"^model\.": "model.text_model.", r"^lm_head\.": "lm_head."}
TEXT_CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "pad_token_id",
                    "bos_token_id", "eos_token_id", "hidden_act")
VQ_CONFIG_KEYS = {"codebook_size": "codebook_size", "embed_dim": "embed_dim", "z_channels": "latent_channels",
                  "double_z": "double_latent", "in_channels": "in_channels", "out_channels": "out_channels",
                  "temporal_downsample_factor": "temporal_downsample_factor", "ch": "base_channels",
                  "ch_mult": "channel_multiplier", "num_res_blocks": "num_res_blocks",
                  "attn_resolutions": "attn_resolutions"}


def emu3_vision_tokens(codebook_size: int) -> list[str]:
    """What BAAI's ``emu3_vision_tokens.txt`` lists: the image markers, then one token per VQ code."""
    return [IMAGE_TOKEN, IMAGE_START, IMAGE_END, *(visual_token_name(code) for code in range(codebook_size))]


def special_tokens(vision_tokens: list[str]) -> list[str]:
    """Emu3's specials in id order after the text vocabulary (as its ``Emu3Tokenizer`` numbers them)."""
    extras = [f"<|extra_{i}|>" for i in range(205)]
    return [PAD, "<|im_start|>", "<|im_end|>", *extras, *vision_tokens]


def read_vision_tokens(path: Path) -> list[str]:
    """The non-empty lines of ``emu3_vision_tokens.txt``, as ``Emu3Tokenizer`` reads them."""
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise CheckpointError(f"the text tokenizer {path.parent} lacks {path.name}") from None


def convert_tokenizer(tiktoken_file: Path, vision_tokens: list[str]) -> PreTrainedTokenizerFast:
    converter = TikTokenConverter(vocab_file=str(tiktoken_file), pattern=QWEN_PATTERN,
                                  extra_special_tokens=special_tokens(vision_tokens))
    return PreTrainedTokenizerFast(tokenizer_object=converter.converted(), bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD)


def _rename(state: dict[str, torch.Tensor], patterns: dict[str, str]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        for old, new in patterns.items():
            key = re.sub(old, new, key)
        renamed[key] = value
    return renamed


def refuse_pickled(directory: Path) -> None:
    """Refuse a folder whose weights are only pickled (``pytorch_model.bin``, ``*.pt``, ``*.ckpt``), in one line."""
    if (directory / "model.safetensors").exists() or (directory / "model.safetensors.index.json").exists():
        return
    pickled = sorted(p.name for pattern in PICKLED_PATTERNS for p in directory.glob(pattern))
    if pickled:
        raise CheckpointError(
            f"{directory} holds pickled weights ({', '.join(pickled)}), which are never loaded here (unpickling can "
            "run code); convert them in a trusted environment: load with torch.load(path, weights_only=True) and "
            "save with safetensors.torch.save_file, or load with transformers and save_pretrained(out, "
            "safe_serialization=True)")


def _load_weights(directory: Path) -> dict[str, torch.Tensor]:
    refuse_pickled(directory)
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(directory):
        check_safetensors(file)
        state.update(load_file(file))
    return state


def _check_original(llm: dict, vq: dict, llm_dir: Path, vq_dir: Path) -> None:
    if str(llm.get("model_type", "")).lower() != "emu3" or "Emu3ForCausalLM" not in (llm.get("architectures") or []):
        raise CheckpointError(f"{llm_dir} is not an original-layout Emu3/ProgEmu language model")
    if "codebook_size" not in vq or "ch_mult" not in vq:
        raise CheckpointError(f"{vq_dir} is not an original-layout Emu3 vision tokenizer")


def _check_token_ids(llm: dict, layout: TokenLayout) -> None:
    """The ids the model was trained with (its ``config.json``) must be the ones the tokenizer gives."""
    wrong = [f"{key} {llm[key]} != {getattr(layout, field)}" for key, field in CONFIG_TOKEN_IDS.items()
             if key in llm and llm[key] is not None and int(llm[key]) != getattr(layout, field)]
    if wrong:
        raise CheckpointError(f"the model's config.json and the text tokenizer disagree: {'; '.join(wrong)}")


def convert_checkpoint(source: str | Path, out: str | Path, *, text_tokenizer_dir: str | Path | None = None,
                       vision_dir: str | Path | None = None, spec: dict | None = None) -> str:
    """Write an HF-format checkpoint (with ``progemu.json`` and manifest) to ``out``; return its identity.

    ``text_tokenizer_dir`` (default: ``source``) holds BAAI's ``emu3.tiktoken`` and ``emu3_vision_tokens.txt``;
    ``vision_dir`` (default: ``source/vision_tokenizer``) BAAI's vision tokenizer.
    """
    llm_dir = Path(source)
    text_dir = Path(text_tokenizer_dir) if text_tokenizer_dir else llm_dir
    vq_dir = Path(vision_dir) if vision_dir else llm_dir / VISION_DIR
    llm_config, vq_config = read_json(llm_dir / "config.json"), read_json(vq_dir / "config.json")
    _check_original(llm_config, vq_config, llm_dir, vq_dir)
    if not (text_dir / TIKTOKEN_FILE).exists():
        raise CheckpointError(f"the text tokenizer {text_dir} lacks its vocabulary file {TIKTOKEN_FILE}")
    codebook = int(vq_config["codebook_size"])
    tokenizer = convert_tokenizer(text_dir / TIKTOKEN_FILE, read_vision_tokens(text_dir / VISION_TOKENS_FILE))
    _check_token_ids(llm_config, TokenLayout.from_tokenizer(tokenizer, codebook))
    text = {k: llm_config[k] for k in TEXT_CONFIG_KEYS if k in llm_config}
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": float(llm_config.get("rope_theta", 1e6))}
    text["attention_dropout"] = 0.0
    vq = {new: vq_config[old] for old, new in VQ_CONFIG_KEYS.items() if old in vq_config}
    vq["hidden_size"] = int(vq_config["ch"]) * int(vq_config["ch_mult"][-1])  # the mid-block attention's width
    config = Emu3Config(text_config=text, vq_config=vq, vocabulary_map=vocabulary_map(tokenizer))
    with torch.device("meta"):
        model = Emu3ForConditionalGeneration(config)
    state = {**_rename(_load_weights(llm_dir), LM_KEYS), **_rename(_load_weights(vq_dir), VQ_KEYS)}
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        sample = ", ".join(sorted(missing)[:3] + sorted(unexpected)[:3])
        raise CheckpointError(f"weights do not match the Emu3 architecture ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected: {sample})")
    try:
        model.load_state_dict(state, assign=True, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weight shapes do not match the configuration: {str(exc).splitlines()[1].strip()}") \
            from None
    text_config = config.text_config
    assert isinstance(text_config, Emu3TextConfig)  # Emu3Config builds it from the dict (typed as either)
    if len(tokenizer) > text_config.vocab_size:
        raise CheckpointError(f"the vocabulary ({len(tokenizer)}) is larger than the model's "
                              f"({text_config.vocab_size})")
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    preprocessor = vq_dir / "preprocessor_config.json"
    if preprocessor.exists():
        (directory / "preprocessor_config.json").write_text(preprocessor.read_text())
    spec = spec or {"name": "ProgEmu", "version": str(llm_config.get("_name_or_path") or "progemu"),
                    "image_size": 512, "max_text_tokens": 200}
    (directory / SPEC_NAME).write_text(json.dumps(spec, indent=2) + "\n")
    identity = write_manifest(directory)
    log.info("converted %s + %s + %s to %s (sha256 %s)", llm_dir, text_dir, vq_dir, directory, identity)
    return identity
