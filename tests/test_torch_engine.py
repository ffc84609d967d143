"""The PyTorch engine: batched CFG rows see exactly what they would see alone; seeds reproduce."""

import numpy as np
import torch

from inference.engines.base import PromptBatch
from inference.engines.torch_engine import TorchBackend, TorchEngine
from inference.errors import GenerationCancelled
from inference.model import ProgEmuModel
from inference.sampler import Sampler, SamplerSettings


def prompts(model: ProgEmuModel) -> tuple[list[int], list[int], int]:
    grid = model.grid
    codes = np.random.default_rng(0).integers(0, model.layout.codebook_size, size=(grid, grid))
    builder = model.prompts
    return builder.conditional_prompt(codes, "right pneumothorax develops"), \
        builder.unconditional_prompt(grid, grid), grid


@torch.inference_mode()
def last_logits(model: ProgEmuModel, ids: list[int]) -> np.ndarray:
    hidden = model.text_model(input_ids=torch.tensor([ids])).last_hidden_state
    return model.lm_head(hidden[0, -1]).numpy()


def test_left_padding_counts_real_tokens_only() -> None:
    batch = PromptBatch.left_padded([[5, 6, 7, 8], [9, 10]], pad_id=0)
    np.testing.assert_array_equal(batch.attention_mask, [[1, 1, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(batch.position_ids, [[0, 1, 2, 3], [0, 0, 0, 1]])
    np.testing.assert_array_equal(batch.next_positions(), [[4], [2]])


def test_batched_cfg_rows_match_single_rows(small_model: ProgEmuModel) -> None:
    """The pair run as one batch gives each row the logits it gets alone, over several steps."""
    cond, uncond, _ = prompts(small_model)
    backend = TorchBackend(small_model.text_model, small_model.lm_head)
    vocab = small_model.lm_head.weight.shape[0]
    token = small_model.layout.visual_offset + 3
    with torch.inference_mode():
        backend.start(PromptBatch.left_padded([cond, uncond], small_model.layout.pad))
        for step in range(4):
            if step:
                backend.feed(token)
                cond, uncond = cond + [token], uncond + [token]
            logits = backend.logits(0, vocab)
            np.testing.assert_allclose(logits[0], last_logits(small_model, cond), atol=1e-4)
            np.testing.assert_allclose(logits[1], last_logits(small_model, uncond), atol=1e-4)
        backend.drop_unconditional()
        backend.feed(token)
        np.testing.assert_allclose(backend.logits(0, vocab)[0], last_logits(small_model, cond + [token]), atol=1e-4)


def test_generate_is_reproducible_and_reports_progress(small_model: ProgEmuModel) -> None:
    cond, uncond, grid = prompts(small_model)
    engine = TorchEngine(small_model.text_model, small_model.lm_head)
    seen: list[tuple[int, int]] = []
    settings = SamplerSettings(seed=11, max_text_tokens=6)
    first = engine.generate(cond, uncond, Sampler(settings, small_model.layout, grid, grid),
                            progress=lambda done, total: seen.append((done, total)))
    again = engine.generate(cond, uncond, Sampler(settings, small_model.layout, grid, grid))
    assert first == again
    assert first[-1] == small_model.layout.eos
    assert seen[0][0] == 1 and seen[-1][0] == seen[-1][1]
    assert [d for d, _ in seen[:-1]] == list(range(1, len(first)))


def test_generate_can_be_cancelled(small_model: ProgEmuModel) -> None:
    cond, uncond, grid = prompts(small_model)
    engine = TorchEngine(small_model.text_model, small_model.lm_head)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) >= 5

    sampler = Sampler(SamplerSettings(max_text_tokens=8), small_model.layout, grid, grid)
    try:
        engine.generate(cond, uncond, sampler, cancel=cancel)
    except GenerationCancelled:
        pass
    else:
        raise AssertionError("generation did not stop")
    assert sampler.state.position == 5
