"""The whole demo-model recipe: VQ tokenizer, then the language model, then one checkpoint directory.

Stages keep their state in a work directory, so an interrupted run resumes
where it stopped and a finished stage is not trained again.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from inference.checkpoint import SPEC_NAME, write_manifest
from inference.data.dataset import Dataset
from inference.model import SMALL_VQ_DIR, ModelSpec
from inference.sequence import PromptBuilder, TokenLayout
from inference.small_vq import SmallVisionTokenizer, SmallVQVAE
from inference.text_tokenizer import build_byte_tokenizer
from inference.training.lm import LMTrainConfig, TokenisedPairs, train_language_model
from inference.training.vq import VQTrainConfig, train_vq

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int, float], None]
"""(stage, step, steps, loss)."""


@dataclass(frozen=True)
class TrainConfig:
    vq: VQTrainConfig = field(default_factory=VQTrainConfig)
    lm: LMTrainConfig = field(default_factory=LMTrainConfig)
    vq_images: int = 8000
    """Images the VQ stage samples from (priors and follow-ups of the training split)."""
    version: str = "progemu-demo-0.2"


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


def train_demo_model(data: Path, out: Path, work: Path, config: TrainConfig, *,
                     progress: Progress | None = None) -> str:
    """Train both stages on ``data`` and write a loadable checkpoint to ``out``; return its identity."""
    dataset = Dataset.open(data)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    vq = train_vq(_training_images(dataset, config.vq_images), config.vq, work / "vq",
                  progress=(lambda s, n, loss: progress("vq", s, n, loss)) if progress else None)
    pairs = _tokenise(dataset, vq, work / "codes.npz")
    log.info("tokenised %d training pairs", len(pairs))
    tokenizer = build_byte_tokenizer(config.vq.model.codebook_size)
    prompts = PromptBuilder(TokenLayout.from_tokenizer(tokenizer, config.vq.model.codebook_size), tokenizer)
    lm = train_language_model(pairs, prompts, len(tokenizer), config.lm, work / "lm",
                              progress=(lambda s, n, loss: progress("lm", s, n, loss)) if progress else None)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    lm.save_pretrained(out)
    tokenizer.save_pretrained(out)
    vq.save(out / SMALL_VQ_DIR)
    spec = ModelSpec(name="ProgEmu", version=config.version, image_size=dataset.size,
                     max_text_tokens=config.lm.max_text_tokens,
                     description="Small ProgEmu-architecture demo model trained on synthetic chest phantoms. "
                                 "Not for clinical use.")
    (out / SPEC_NAME).write_text(json.dumps(asdict(spec), indent=2) + "\n")
    identity = write_manifest(out)
    for name in ("vq/vq_loss.png", "lm/lm_loss.png"):
        if (work / name).exists():
            shutil.copy2(work / name, work / Path(name).name)
    log.info("checkpoint %s written (sha256 %s)", out, identity)
    return identity
