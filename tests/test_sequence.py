"""ProgEmu's token layout and prompts."""

import numpy as np
import pytest

from inference.errors import CheckpointError
from inference.sequence import PromptBuilder, TokenLayout
from inference.text_tokenizer import build_byte_tokenizer


@pytest.fixture(scope="module")
def prompts() -> PromptBuilder:
    tokenizer = build_byte_tokenizer(16)
    return PromptBuilder(TokenLayout.from_tokenizer(tokenizer, 16), tokenizer)


def test_layout_ids_follow_emu3_names(prompts: PromptBuilder) -> None:
    lay, tok = prompts.layout, prompts.tokenizer
    assert tok.convert_ids_to_tokens(lay.bos) == "<|extra_203|>"
    assert tok.convert_ids_to_tokens(lay.eol) == "<|extra_200|>"
    assert tok.convert_ids_to_tokens(lay.visual_offset + 15) == "<|visual token 000015|>"
    assert lay.text_limit == 256  # bytes come first, every special after them


def test_image_block_has_rows_closed_by_eol(prompts: PromptBuilder) -> None:
    lay = prompts.layout
    codes = np.arange(6).reshape(2, 3) % 16
    block = prompts.image_block(codes)
    header = [lay.image_start, *prompts.text("2*3"), lay.image_token]
    assert block[: len(header)] == header
    body = block[len(header):]
    assert len(body) == lay.image_tokens_length(2, 3) == 2 * 4 + 2
    assert body[3] == lay.eol and body[7] == lay.eol
    assert body[-2:] == [lay.eof, lay.image_end]
    np.testing.assert_array_equal(prompts.codes_from_generated(body, 2, 3), codes)


def test_prompts_follow_progemu_sequence(prompts: PromptBuilder) -> None:
    lay = prompts.layout
    codes = np.zeros((2, 2), dtype=np.int64)
    cond = prompts.conditional_prompt(codes, "effusion worsens")
    assert cond[0] == lay.bos
    assert cond.count(lay.image_token) == 2  # the prior's trigger and the counterfactual's
    assert prompts.tokenizer.decode(cond).count("effusion worsens") == 1
    assert cond[-1] == lay.image_token
    uncond = prompts.unconditional_prompt(2, 2)
    assert uncond == [lay.bos, *prompts.image_header(2, 2)]


def test_generated_rows_without_eol_are_refused(prompts: PromptBuilder) -> None:
    lay = prompts.layout
    bad = [lay.visual_offset] * 6 + [lay.eof, lay.image_end]
    with pytest.raises(ValueError, match="end-of-line"):
        prompts.codes_from_generated(bad, 2, 2)


def test_tokenizer_without_emu3_specials_is_refused() -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, "[UNK]")),
                                    unk_token="[UNK]")
    with pytest.raises(CheckpointError, match="no <\\|visual token 000000\\|> token"):
        TokenLayout.from_tokenizer(plain, 4)
