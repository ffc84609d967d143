"""Training: a smoke-sized run lowers the loss, is deterministic, and resumes to the same weights."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.data.dataset import Dataset, make_dataset
from inference.errors import CheckpointError
from inference.model import load_progemu
from inference.sequence import PromptBuilder, TokenLayout
from inference.small_vq import SmallVQConfig
from inference.text_tokenizer import build_byte_tokenizer
from inference.training.lm import (
    LMTrainConfig,
    TokenisedPairs,
    _batch,
    build_language_model,
    train_language_model,
    weighted_loss,
)
from inference.training.run import RefineConfig, TrainConfig, train_demo_model
from inference.training.vq import VQTrainConfig

TINY_LM = dict(hidden_size=32, layers=1, heads=2, intermediate_size=64, batch_size=4, warmup_steps=2,
               learning_rate=3e-3, save_every=5)


@pytest.fixture(scope="module")
def pairs() -> tuple[TokenisedPairs, PromptBuilder, int]:
    rng = np.random.default_rng(0)
    prior = rng.integers(0, 16, size=(8, 4, 4))
    follow = prior.copy()
    follow[:, 2:] = 3  # a learnable change
    tokenizer = build_byte_tokenizer(16)
    prompts = PromptBuilder(TokenLayout.from_tokenizer(tokenizer, 16), tokenizer)
    texts = ["effusion worsens"] * 8
    return TokenisedPairs(prior, follow, texts, ["The basal opacity has increased."] * 8), prompts, len(tokenizer)


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(pairs, tmp_path: Path) -> None:  # noqa: ANN001
    data, prompts, vocab = pairs
    losses: list[float] = []
    train_language_model(data, prompts, vocab, LMTrainConfig(steps=30, **TINY_LM), tmp_path,
                         progress=lambda done, total, loss: losses.append(loss))
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0]
    assert (tmp_path / "lm_loss.png").stat().st_size > 1000 and (tmp_path / "lm_history.json").exists()


def test_changed_tokens_carry_their_weight(pairs) -> None:  # noqa: ANN001
    data, prompts, vocab = pairs
    indices, drop = np.array([0, 1]), np.array([False, True])
    ids, labels, mask, weights = _batch(data, indices, drop, prompts, changed_token_weight=4.0)
    # Row 0 (conditional): exactly the follow-up codes that differ from the prior's weigh 4, at their own tokens.
    heavy = (weights[0] == 4.0).nonzero().flatten()
    changed = int((data.prior_codes[0] != data.followup_codes[0]).sum())
    assert len(heavy) == changed > 0
    visual = prompts.layout.visual_offset
    assert set((ids[0, heavy] - visual).tolist()) == {3}
    assert bool((labels[0, heavy] == ids[0, heavy]).all())
    assert bool((weights[1] == 1.0).all())  # the null prompt has no prior to differ from
    # Weight 1 is the plain mean, the loss transformers computes itself.
    model = build_language_model(LMTrainConfig(**TINY_LM), prompts, vocab)
    plain = _batch(data, indices, drop, prompts)
    output = model(input_ids=plain[0], attention_mask=plain[2], labels=plain[1])
    torch.testing.assert_close(weighted_loss(output.logits, plain[1], plain[3]), output.loss)


@pytest.mark.slow
def test_resume_gives_the_same_weights(pairs, tmp_path: Path) -> None:  # noqa: ANN001
    data, prompts, vocab = pairs
    config = LMTrainConfig(steps=20, **TINY_LM)
    straight = train_language_model(data, prompts, vocab, config, tmp_path / "a")

    def interrupt(done: int, total: int, loss: float) -> None:
        raise KeyboardInterrupt  # at step 10; the last saved state is step 5's

    with pytest.raises(KeyboardInterrupt):
        train_language_model(data, prompts, vocab, config, tmp_path / "b", progress=interrupt)
    resumed = train_language_model(data, prompts, vocab, config, tmp_path / "b")
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.slow
def test_refine_fine_tunes_a_copy_of_the_trained_model(pairs, tmp_path: Path) -> None:  # noqa: ANN001
    data, prompts, vocab = pairs
    trained = train_language_model(data, prompts, vocab, LMTrainConfig(steps=20, **TINY_LM), tmp_path / "lm")
    before = {name: value.clone() for name, value in trained.state_dict().items()}
    config = RefineConfig(steps=10, warmup_steps=2).lm_config(LMTrainConfig(**TINY_LM))
    assert config.changed_token_weight == 4.0 and config.learning_rate < LMTrainConfig().learning_rate
    refined = train_language_model(data, prompts, vocab, config, tmp_path / "refine", initial=trained,
                                   stage="refine")
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(value, before[name], msg=name)  # the trained model is left as it was
    moved = [name for name, value in refined.state_dict().items() if not torch.equal(value, before[name])]
    assert moved and (tmp_path / "refine" / "refine_loss.png").exists()
    # It continues from the trained weights: its loss stays near the trained model's, far below a random one's.
    ids, labels, mask, weights = _batch(data, np.arange(8), np.zeros(8, bool), prompts)
    fresh = build_language_model(LMTrainConfig(**TINY_LM), prompts, vocab)
    with torch.no_grad():
        losses = [float(weighted_loss(m(input_ids=ids, attention_mask=mask).logits, labels, weights))
                  for m in (fresh, trained, refined)]
    assert losses[2] < losses[1] + 0.25 * (losses[0] - losses[1]), losses


def _smoke_config(refine_steps: int) -> TrainConfig:
    return TrainConfig(vq=VQTrainConfig(model=SmallVQConfig(codebook_size=32, channels=16, downsample_steps=2),
                                        steps=4, batch_size=4, save_every=2),
                       lm=LMTrainConfig(steps=3, **TINY_LM), refine=RefineConfig(steps=refine_steps, warmup_steps=1),
                       vq_images=16, version="smoke")


@pytest.mark.slow
def test_recipe_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", 16, seed=1, size=32)
    identity = train_demo_model(tmp_path / "data", tmp_path / "ckpt", tmp_path / "work", _smoke_config(2))
    model = load_progemu(tmp_path / "ckpt")
    assert model.checkpoint_sha256 == identity and model.spec.version == "smoke" and model.grid == 8
    codes = model.vision.encode(Dataset.open(tmp_path / "data").image(
        Dataset.open(tmp_path / "data").records[0], "prior")[None])
    assert codes.shape == (1, 8, 8) and codes.max() < 32
    assert all((tmp_path / "work" / f"{stage}_loss.png").exists() for stage in ("vq", "lm", "refine"))


@pytest.mark.slow
def test_warm_start_begins_every_stage_from_the_checkpoint(tmp_path: Path) -> None:
    """`progemu train --warm-start CKPT` trains every stage from CKPT's weights: with nothing to learn it is CKPT."""
    make_dataset(tmp_path / "data", 16, seed=1, size=32)
    base = train_demo_model(tmp_path / "data", tmp_path / "base", tmp_path / "w1", _smoke_config(0))
    config = _smoke_config(0)
    frozen = replace(config, vq=replace(config.vq, learning_rate=0.0), lm=replace(config.lm, learning_rate=0.0))
    warm = train_demo_model(tmp_path / "data", tmp_path / "warm", tmp_path / "w2", frozen,
                            warm_start=tmp_path / "base")
    cold = train_demo_model(tmp_path / "data", tmp_path / "cold", tmp_path / "w3", replace(frozen, vq=replace(
        frozen.vq, seed=5), lm=replace(frozen.lm, seed=5)))
    assert (tmp_path / "w2" / "vq").is_dir() and (tmp_path / "w2" / "lm").is_dir()
    assert warm == base != cold
    with pytest.raises(ValueError, match="exclude"):
        train_demo_model(tmp_path / "data", tmp_path / "x", tmp_path / "w4", config, start_from=tmp_path / "base",
                         warm_start=tmp_path / "base")


@pytest.mark.slow
def test_refine_from_a_trained_checkpoint_equals_the_full_recipe(tmp_path: Path, small_checkpoint: Path) -> None:
    """`progemu train --from CKPT` runs only the refine stage, and lands on the weights one full run gives."""
    make_dataset(tmp_path / "data", 16, seed=1, size=32)
    train_demo_model(tmp_path / "data", tmp_path / "full", tmp_path / "w1", _smoke_config(3))
    train_demo_model(tmp_path / "data", tmp_path / "base", tmp_path / "w2", _smoke_config(0))
    train_demo_model(tmp_path / "data", tmp_path / "refined", tmp_path / "w3", _smoke_config(3),
                     start_from=tmp_path / "base")
    assert not (tmp_path / "w3" / "vq").exists() and not (tmp_path / "w3" / "lm").exists()
    full, refined = load_progemu(tmp_path / "full"), load_progemu(tmp_path / "refined")
    assert full.checkpoint_sha256 == refined.checkpoint_sha256
    (tmp_path / "refined" / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(CheckpointError):  # the start is checked as inference checks a checkpoint
        train_demo_model(tmp_path / "data", tmp_path / "x", tmp_path / "w4", _smoke_config(3),
                         start_from=tmp_path / "refined")
    with pytest.raises(CheckpointError, match="not a checkpoint written by"):  # a full Emu3 checkpoint
        train_demo_model(tmp_path / "data", tmp_path / "x", tmp_path / "w5", _smoke_config(3),
                         start_from=small_checkpoint)
