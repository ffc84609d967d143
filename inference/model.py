"""ProgEmu on transformers' Emu3 classes: load a checkpoint, or build a small one.

A checkpoint in the Hugging Face format is an ``Emu3ForConditionalGeneration``
``save_pretrained`` directory with its tokenizer, plus an optional
``progemu.json`` (name, version, image size). Small models built here take
exactly the loading path a real checkpoint takes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    Emu3Config,
    Emu3ForCausalLM,
    Emu3ForConditionalGeneration,
    Emu3TextConfig,
    Emu3TextModel,
    Emu3VQVAEConfig,
    PreTrainedTokenizerBase,
)

from inference.checkpoint import (
    SPEC_NAME,
    check_safetensors,
    checkpoint_identity,
    read_json,
    weight_files,
    write_manifest,
)
from inference.errors import CheckpointError
from inference.sequence import PromptBuilder, TokenLayout
from inference.small_vq import SmallVisionTokenizer, SmallVQVAE
from inference.text_tokenizer import build_byte_tokenizer, vocabulary_map
from inference.vision_tokenizer import Emu3VisionTokenizer, VisionTokenizer

log = logging.getLogger(__name__)

SMALL_VQ_DIR = "vq"


@dataclass(frozen=True)
class ModelSpec:
    """What the weights alone don't say: the model's name and version, and its image size."""

    name: str = "ProgEmu"
    version: str = "progemu-1.0"
    image_size: int = 512
    max_text_tokens: int = 200
    description: str = ""
    ood: dict | None = None
    """The out-of-distribution calibration ``inference.ood.calibrate`` writes; None: not calibrated."""

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class ProgEmuModel:
    """A loaded checkpoint: the language model, its tokenizers and layout, and its identity."""

    generator: Emu3ForConditionalGeneration | Emu3ForCausalLM
    """The top-level transformers model, whose ``generate`` is the baseline our engines are measured against."""
    text_model: Emu3TextModel
    lm_head: torch.nn.Linear
    tokenizer: PreTrainedTokenizerBase
    vision: VisionTokenizer
    layout: TokenLayout
    spec: ModelSpec
    checkpoint_sha256: str
    path: Path

    @property
    def max_positions(self) -> int:
        return int(self.text_model.config.max_position_embeddings)

    @property
    def prompts(self) -> PromptBuilder:
        return PromptBuilder(self.layout, self.tokenizer)

    @property
    def grid(self) -> int:
        return self.spec.image_size // self.vision.downsample


def read_spec(directory: Path) -> ModelSpec:
    """A checkpoint's ``progemu.json`` (name, version, image size, limits, calibration), or the defaults."""
    spec_path = Path(directory) / SPEC_NAME
    return ModelSpec.from_dict(read_json(spec_path)) if spec_path.exists() else ModelSpec()


def quiet_transformers() -> None:
    """transformers' own progress bars and notices would drown ours; its errors still show."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _architecture(config: dict, directory: Path) -> str:
    """Which of the two loadable layouts this is, or a clear refusal."""
    model_type = str(config.get("model_type", ""))
    architectures = config.get("architectures") or []
    if model_type == "emu3" and "Emu3ForConditionalGeneration" in architectures:
        return "conditional-generation"
    if model_type == "emu3_text_model" and "Emu3ForCausalLM" in architectures:
        if not (directory / SMALL_VQ_DIR).is_dir():
            raise CheckpointError(f"{directory} holds a language model but no {SMALL_VQ_DIR}/ image tokenizer")
        return "causal-lm+small-vq"
    if model_type.lower() == "emu3":
        raise CheckpointError(
            f"{directory} is in Emu3's original layout ({', '.join(architectures) or model_type}); "
            "convert it first with `progemu convert-checkpoint`")
    raise CheckpointError(f"{directory} is not an Emu3/ProgEmu checkpoint (model_type {model_type or 'missing'})")


def _load_modules(directory: Path, architecture: str, dtype: torch.dtype
                  ) -> tuple[torch.nn.Module, Emu3ForConditionalGeneration | Emu3ForCausalLM, VisionTokenizer]:
    """(all modules, the generate-capable model, the image tokenizer) for one layout."""
    if architecture == "conditional-generation":
        network = Emu3ForConditionalGeneration.from_pretrained(directory, dtype=dtype)
        return network, network, Emu3VisionTokenizer(network.model.vqmodel)
    language_model = Emu3ForCausalLM.from_pretrained(directory, dtype=dtype)
    vq = SmallVQVAE.load(directory / SMALL_VQ_DIR)
    return torch.nn.ModuleDict({"lm": language_model, "vq": vq}), language_model, SmallVisionTokenizer(vq)


def load_progemu(path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> ProgEmuModel:
    """Load a ProgEmu checkpoint in the Hugging Face format, refusing broken ones with a clear error."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    config = read_json(directory / "config.json")
    architecture = _architecture(config, directory)
    for weights in weight_files(directory):
        check_safetensors(weights)
    if not (directory / "tokenizer.json").exists() and not (directory / "tokenizer_config.json").exists():
        raise CheckpointError(f"checkpoint {directory} lacks its tokenizer (tokenizer.json)")
    identity = checkpoint_identity(directory)
    spec = read_spec(directory)
    try:
        holder, generator, vision = _load_modules(directory, architecture, dtype)
        holder.to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load {directory}: {first_line}") from None
    layout = TokenLayout.from_tokenizer(tokenizer, vision.codebook_size)
    # the conditional-generation layout nests the text model one level deeper
    text_model = generator.model.text_model if isinstance(generator, Emu3ForConditionalGeneration) else generator.model
    vocab = text_model.config.vocab_size
    if layout.visual_offset + layout.codebook_size > vocab:
        raise CheckpointError(f"the tokenizer's visual tokens run past the model's vocabulary of {vocab}")
    if spec.image_size % vision.downsample:
        raise CheckpointError(f"image size {spec.image_size} is not a multiple of {vision.downsample}")
    log.info("loaded %s %s (checkpoint sha256 %s…)", spec.name, spec.version, identity[:12])
    return ProgEmuModel(generator, text_model, generator.lm_head, tokenizer, vision, layout, spec, identity, directory)


def build_small_progemu(
    *,
    codebook_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    vq_base_channels: int = 32,
    seed: int = 0,
) -> tuple[Emu3ForConditionalGeneration, PreTrainedTokenizerBase]:
    """A small random-init ProgEmu: full Emu3 architecture, byte tokenizer, small VQ codebook."""
    tokenizer = build_byte_tokenizer(codebook_size)
    layout = TokenLayout.from_tokenizer(tokenizer, codebook_size)
    text = Emu3TextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 3,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=2048, pad_token_id=layout.pad, bos_token_id=layout.bos,
        eos_token_id=layout.eos, attention_dropout=0.0,
    )
    vq = Emu3VQVAEConfig(codebook_size=codebook_size, base_channels=vq_base_channels,
                         channel_multiplier=[1, 2, 2, 4], num_res_blocks=1, attn_resolutions=[],
                         hidden_size=vq_base_channels * 4, num_attention_heads=1)
    config = Emu3Config(vq_config=vq.to_dict(), text_config=text.to_dict(), vocabulary_map=vocabulary_map(tokenizer))
    torch.manual_seed(seed)
    network = Emu3ForConditionalGeneration(config).eval()
    return network, tokenizer


def save_progemu(network: Emu3ForConditionalGeneration | Emu3ForCausalLM, tokenizer: PreTrainedTokenizerBase,
                 spec: ModelSpec, out: str | Path) -> str:
    """Save in the Hugging Face format with ``progemu.json`` and the manifest; return the identity."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    network.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / SPEC_NAME).write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return write_manifest(directory)
