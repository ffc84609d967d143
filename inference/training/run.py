"""The whole demo-model recipe: VQ tokenizer, language model, refine, then one checkpoint directory.

Stages keep their state in a work directory, so an interrupted run resumes
where it stopped and a finished stage is not trained again. The refine stage
can also start from an already trained checkpoint, which is how one model's
recipe extends to the next without training the first two stages again.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from transformers import Emu3ForCausalLM

from inference.data.dataset import Dataset
from inference.errors import CheckpointError
from inference.model import SMALL_VQ_DIR, ModelSpec, load_progemu, save_progemu
from inference.sequence import PromptBuilder, TokenLayout
from inference.small_vq import SmallVisionTokenizer, SmallVQVAE
from inference.text_tokenizer import build_byte_tokenizer
from inference.training.lm import LMTrainConfig, TokenisedPairs, train_language_model
from inference.training.vq import VQTrainConfig, train_vq

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int, float], None]
"""(stage, step, steps, loss)."""


@dataclass(frozen=True)
class RefineConfig:
    """Stage 3: a short, gentle fine-tune of the trained language model that weighs the changed codes.

    The plain loss teaches copying the prior well but dilutes the few codes that carry the change; weighting
    them from the start teaches over-editing instead (docs/model.md). Once copying is learnt, a few hundred
    weighted steps at a fifth of the learning rate sharpen the change without unlearning it.
    """

    steps: int = 600
    learning_rate: float = 4e-4
    final_learning_rate: float = 4e-5
    warmup_steps: int = 20
    changed_token_weight: float = 4.0
    seed: int = 1
    """Another batch stream than the language-model stage's."""

    def lm_config(self, lm: LMTrainConfig) -> LMTrainConfig:
        return replace(lm, steps=self.steps, learning_rate=self.learning_rate,
                       final_learning_rate=self.final_learning_rate, warmup_steps=self.warmup_steps,
                       changed_token_weight=self.changed_token_weight, seed=self.seed)


@dataclass(frozen=True)
class TrainConfig:
    vq: VQTrainConfig = field(default_factory=VQTrainConfig)
    lm: LMTrainConfig = field(default_factory=LMTrainConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    vq_images: int = 8000
    """Images the VQ stage samples from (priors and follow-ups of the training split)."""
    version: str = "progemu-demo-0.3"
    """The name the checkpoint reports; ``progemu train --version`` names a new one."""


def _training_images(dataset: Dataset, limit: int) -> np.ndarray:
    records = dataset.split("train")
    images = []
    for prior, follow in dataset.images(records):
        images += [prior, follow]
        if len(images) >= limit:
            break
    return np.stack(images).astype(np.float32)


def _tokenise(dataset: Dataset, vq: SmallVQVAE, cache: Path) -> TokenisedPairs:
    """VQ codes of every training pair, cached: the language-model stage reads nothing else."""
    records = dataset.split("train")
    if cache.exists():
        data = np.load(cache)
        prior, follow = data["prior"], data["follow"]
    else:
        tokenizer = SmallVisionTokenizer(vq)
        prior_list, follow_list = [], []
        batch: list[np.ndarray] = []
        for prior_image, follow_image in dataset.images(records):
            batch += [prior_image, follow_image]
            if len(batch) == 256:
                codes = tokenizer.encode(np.stack(batch))
                prior_list.append(codes[0::2])
                follow_list.append(codes[1::2])
                batch = []
        if batch:
            codes = tokenizer.encode(np.stack(batch))
            prior_list.append(codes[0::2])
            follow_list.append(codes[1::2])
        prior, follow = np.concatenate(prior_list), np.concatenate(follow_list)
        np.savez_compressed(cache, prior=prior, follow=follow)
    return TokenisedPairs(prior.astype(np.int64), follow.astype(np.int64),
                          [r["progression-description"] for r in records], [r["changes-of-findings"] for r in records])


def _trained_stages(start_from: Path) -> tuple[SmallVQVAE, Emu3ForCausalLM]:
    """The VQ tokenizer and language model of a checkpoint this recipe wrote, checked as inference checks it."""
    model = load_progemu(start_from)
    if not isinstance(model.vision, SmallVisionTokenizer) or not isinstance(model.generator, Emu3ForCausalLM):
        raise CheckpointError(f"{start_from} is not a checkpoint written by `progemu train`")
    return model.vision.module, model.generator


def _description(dataset: Dataset) -> str:
    """What the checkpoint was trained on, in the words an auditor reads in its ``progemu.json``."""
    real = sum(r["id"].startswith("real-") for r in dataset.split("train"))
    images = ("simulated findings on real chest radiographs (NIH ChestX-ray14 samples) and synthetic phantoms"
              if real else "synthetic chest phantoms")
    return f"Small ProgEmu-architecture demo model trained on {images}. Not for clinical use."


def train_demo_model(data: Path, out: Path, work: Path, config: TrainConfig, *, start_from: Path | None = None,
                     warm_start: Path | None = None, progress: Progress | None = None) -> str:
    """Train the stages on ``data`` and write a loadable checkpoint to ``out``; return its identity.

    ``start_from`` takes the VQ tokenizer and language model from a checkpoint of this recipe and runs
    only the refine stage. ``warm_start`` runs every stage, each starting from that checkpoint's weights
    instead of random ones: how a model moves to new images (real films) without learning the sequence,
    the text and the codebook again from nothing.
    """
    if start_from is not None and warm_start is not None:
        raise ValueError("start_from and warm_start exclude each other")
    dataset = Dataset.open(data)
    work.mkdir(parents=True, exist_ok=True)
    recorded = {**asdict(config), "start_from": str(start_from) if start_from else None,
                "warm_start": str(warm_start) if warm_start else None}
    (work / "config.json").write_text(json.dumps(recorded, indent=2) + "\n")

    def report(stage: str) -> Callable[[int, int, float], None] | None:
        return (lambda s, n, loss: progress(stage, s, n, loss)) if progress else None

    initial_vq, initial_lm = _trained_stages(warm_start) if warm_start is not None else (None, None)
    if start_from is not None:
        vq, lm = _trained_stages(start_from)
    else:
        vq = train_vq(_training_images(dataset, config.vq_images), config.vq, work / "vq", initial=initial_vq,
                      progress=report("vq"))
    pairs = _tokenise(dataset, vq, work / "codes.npz")
    log.info("tokenised %d training pairs", len(pairs))
    tokenizer = build_byte_tokenizer(vq.config.codebook_size)
    prompts = PromptBuilder(TokenLayout.from_tokenizer(tokenizer, vq.config.codebook_size), tokenizer)
    if start_from is None:
        lm = train_language_model(pairs, prompts, len(tokenizer), config.lm, work / "lm", initial=initial_lm,
                                  progress=report("lm"))
    if config.refine.steps > 0:
        lm = train_language_model(pairs, prompts, len(tokenizer), config.refine.lm_config(config.lm), work / "refine",
                                  initial=lm, stage="refine", progress=report("refine"))
    spec = ModelSpec(name="ProgEmu", version=config.version, image_size=dataset.size,
                     max_text_tokens=config.lm.max_text_tokens, description=_description(dataset))
    if out.exists():
        shutil.rmtree(out)
    vq.save(out / SMALL_VQ_DIR)
    identity = save_progemu(lm, tokenizer, spec, out)  # the manifest, written last, covers vq/ too
    for name in ("vq/vq_loss.png", "lm/lm_loss.png", "refine/refine_loss.png"):
        if (work / name).exists():
            shutil.copy2(work / name, work / Path(name).name)
    log.info("checkpoint %s written (sha256 %s)", out, identity)
    return identity
