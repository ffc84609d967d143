"""A byte-level text tokenizer with Emu3's special and visual token names.

Real checkpoints bring Emu3's own (Qwen-derived) tokenizer. Small models that
this project trains use this one: 256 byte tokens, then ProgEmu's specials, then
one token per VQ code, all under Emu3's names so that :class:`TokenLayout`
finds them the same way in both.
"""

from __future__ import annotations

from typing import cast

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from inference.sequence import BOS, EOS, PAD, SPECIAL_TOKENS, visual_token_name


def build_byte_tokenizer(codebook_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with no merges, ProgEmu's specials and ``codebook_size`` visual tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    extra = [name for name in SPECIAL_TOKENS if name not in (BOS, EOS, PAD)]
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    tokenizer.add_tokens([visual_token_name(code) for code in range(codebook_size)], special_tokens=True)
    return tokenizer


def vocabulary_map(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Every token's name to its id: what ``Emu3Config(vocabulary_map=...)`` records."""
    # one id gives one name (transformers' type, str | list[str], also covers a batch of ids)
    return {cast(str, tokenizer.convert_ids_to_tokens(i)): i for i in range(len(tokenizer))}
