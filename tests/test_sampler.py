"""The one sampler: grid constraint, text phase, CFG, top-k/top-p/temperature, seeding."""

import numpy as np
import pytest

from inference.errors import InferenceError, SamplerSettingsError
from inference.sampler import Deadline, GenerationTimeout, Phase, Sampler, SamplerSettings
from inference.sequence import TokenLayout
from inference.text_tokenizer import build_byte_tokenizer

LAYOUT = TokenLayout.from_tokenizer(build_byte_tokenizer(8), 8)
VOCAB = LAYOUT.visual_offset + 8


def run(settings: SamplerSettings, height: int = 2, width: int = 3, logits_fn=None) -> list[int]:
    sampler = Sampler(settings, LAYOUT, height, width)
    rng = np.random.default_rng(123)
    tokens = []
    while not sampler.finished:
        cond = logits_fn(len(tokens)) if logits_fn else rng.normal(size=VOCAB)
        tokens.append(sampler.next_token(cond, rng.normal(size=VOCAB)))
    return tokens


def test_grid_constraint_shapes_the_image_block() -> None:
    tokens = run(SamplerSettings(seed=1, max_text_tokens=5))
    image = tokens[: LAYOUT.image_tokens_length(2, 3)]
    grid = np.array(image[:8]).reshape(2, 4)
    assert np.all(grid[:, 3] == LAYOUT.eol)
    assert np.all((grid[:, :3] >= LAYOUT.visual_offset) & (grid[:, :3] < VOCAB))
    assert image[8:] == [LAYOUT.eof, LAYOUT.image_end]


def test_text_phase_is_text_then_eos_within_limit() -> None:
    tokens = run(SamplerSettings(seed=2, max_text_tokens=5))
    text = tokens[LAYOUT.image_tokens_length(2, 3):]
    assert text[-1] == LAYOUT.eos
    assert 1 <= len(text) <= 6
    assert all(t < LAYOUT.text_limit for t in text[:-1])


def test_min_text_tokens_hold_back_eos() -> None:
    def eos_loving(step: int) -> np.ndarray:
        logits = np.zeros(VOCAB)
        logits[LAYOUT.eos] = 50.0
        return logits

    tokens = run(SamplerSettings(seed=0, min_text_tokens=2, max_text_tokens=10, temperature=0), logits_fn=eos_loving)
    text = tokens[LAYOUT.image_tokens_length(2, 3):]
    assert len(text) == 3 and text[-1] == LAYOUT.eos


def test_same_seed_same_tokens_other_seed_other_tokens() -> None:
    a = run(SamplerSettings(seed=7, max_text_tokens=8))
    b = run(SamplerSettings(seed=7, max_text_tokens=8))
    c = run(SamplerSettings(seed=8, max_text_tokens=8))
    assert a == b
    assert a != c


def test_cfg_mixes_towards_the_conditional_row() -> None:
    sampler = Sampler(SamplerSettings(max_text_tokens=8, cfg_scale=3.0, temperature=0), LAYOUT, 1, 2)
    cond = np.zeros(VOCAB)
    uncond = np.zeros(VOCAB)
    cond[LAYOUT.visual_offset + 2] = 1.0  # slightly preferred by the conditional row
    uncond[LAYOUT.visual_offset + 5] = 2.5  # preferred by the unconditional row
    # scale 3: id 2 scores 0 + 3 * (1 - 0) = 3, id 5 scores 2.5 + 3 * (0 - 2.5) = -5
    assert sampler.next_token(cond, uncond) == LAYOUT.visual_offset + 2
    plain = Sampler(SamplerSettings(max_text_tokens=8, cfg_scale=0.0, temperature=0), LAYOUT, 1, 2)
    assert plain.next_token(cond, uncond) == LAYOUT.visual_offset + 5  # scale 0 is the unconditional row


def test_top_k_one_is_greedy() -> None:
    rng = np.random.default_rng(0)
    cond = rng.normal(size=VOCAB)
    for seed in range(5):
        sampler = Sampler(SamplerSettings(max_text_tokens=8, seed=seed, top_k=1, cfg_scale=1.0), LAYOUT, 1, 2)
        best = LAYOUT.visual_offset + int(np.argmax(cond[LAYOUT.visual_offset:]))
        assert sampler.next_token(cond) == best


def test_top_p_keeps_only_the_nucleus() -> None:
    cond = np.full(VOCAB, -30.0)
    cond[LAYOUT.visual_offset + np.arange(3)] = [5.0, 4.0, 0.0]  # probs ~0.73, 0.27, 0.005
    seen = set()
    for seed in range(60):
        sampler = Sampler(SamplerSettings(max_text_tokens=8, seed=seed, top_p=0.9, cfg_scale=1.0), LAYOUT, 1, 2)
        seen.add(sampler.next_token(cond) - LAYOUT.visual_offset)
    assert seen == {0, 1}


def test_sliced_logits_give_the_same_token() -> None:
    rng = np.random.default_rng(5)
    cond, uncond = rng.normal(size=VOCAB), rng.normal(size=VOCAB)
    first = LAYOUT.visual_offset
    a = Sampler(SamplerSettings(max_text_tokens=8, seed=3), LAYOUT, 1, 2).next_token(cond, uncond)
    b = Sampler(SamplerSettings(max_text_tokens=8, seed=3), LAYOUT, 1, 2).next_token(cond[first:], uncond[first:],
                                                                                   first_id=first)
    assert a == b


def test_unconditional_row_only_during_the_image() -> None:
    sampler = Sampler(SamplerSettings(seed=0, max_text_tokens=3), LAYOUT, 1, 1)
    assert sampler.needs_uncond
    while sampler.state.phase is Phase.IMAGE:
        sampler.next_token(np.zeros(VOCAB), np.zeros(VOCAB))
    assert not sampler.needs_uncond
    assert not Sampler(SamplerSettings(max_text_tokens=8, cfg_scale=1.0), LAYOUT, 1, 1).needs_uncond


@pytest.mark.parametrize("kwargs", [
    {"seed": -1}, {"cfg_scale": -0.5}, {"top_k": -3}, {"top_p": 0.0}, {"top_p": 1.5},
    {"temperature": -1.0}, {"max_text_tokens": 0}, {"min_text_tokens": 9, "max_text_tokens": 4},
])
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(SamplerSettingsError):
        SamplerSettings(**kwargs)


def test_settings_are_recorded_as_text() -> None:
    params = SamplerSettings(seed=42, top_k=7, cfg_scale=3.0).as_parameters()
    assert params["seed"] == "42" and params["top_k"] == "7" and params["cfg_scale"] == "3.0"


def test_the_checkpoint_caps_the_interpretation() -> None:
    assert SamplerSettings().for_model(24).max_text_tokens == 24
    assert SamplerSettings(max_text_tokens=10).for_model(24).max_text_tokens == 10
    capped = SamplerSettings(max_text_tokens=300, min_text_tokens=30).for_model(24)
    assert (capped.max_text_tokens, capped.min_text_tokens) == (24, 24)
    with pytest.raises(SamplerSettingsError, match="resolve"):
        Sampler(SamplerSettings(), LAYOUT, 1, 1)


def test_node_and_cli_defaults_are_the_samplers() -> None:
    from plugin.config import Settings

    assert Settings().sampler() == SamplerSettings()


def test_a_deadline_passes_silently_until_it_is_due_then_names_the_limit() -> None:
    now = [100.0]
    deadline = Deadline(30, clock=lambda: now[0])
    now[0] = 129.9
    assert deadline() is False
    now[0] = 130.0
    with pytest.raises(GenerationTimeout, match="^generation exceeded the 30 s time limit$") as raised:
        deadline()
    assert isinstance(raised.value, InferenceError)  # refused like any other inference error: a failed job
