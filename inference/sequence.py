"""ProgEmu's token layout: special ids, image blocks, and the prompts.

A ProgEmu sequence is::

    BOS [prior image block] hypothesis [counterfactual image block] interpretation EOS

and an image block is ``<|image start|> "H*W" <|image token|> (W visual + EOL) * H EOF <|image end|>``.
The ids come from the checkpoint's tokenizer by token name, so a full Emu3
vocabulary and the demo model's small one take the same code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from inference.errors import CheckpointError

BOS = "<|extra_203|>"
EOS = "<|extra_204|>"
PAD = "<|endoftext|>"
IMAGE_TOKEN = "<|image token|>"
IMAGE_START = "<|image start|>"
IMAGE_END = "<|image end|>"
EOL = "<|extra_200|>"
EOF = "<|extra_201|>"
SPECIAL_TOKENS = (PAD, EOL, EOF, BOS, EOS, IMAGE_TOKEN, IMAGE_START, IMAGE_END)
IGNORE_INDEX = -100
"""Label of positions the loss skips (the prompt)."""


def visual_token_name(code: int) -> str:
    """Emu3's name for VQ code ``code``."""
    return f"<|visual token {code:06d}|>"


class TextEncoder(Protocol):
    """Text to token ids: all that :class:`PromptBuilder` needs of a tokenizer."""

    def encode(self, text: str, /, *, add_special_tokens: bool = ...) -> list[int]: ...


class TextTokenizer(TextEncoder, Protocol):
    """The part of a transformers tokenizer the layout and the pipeline need, typed as transformers types it.

    transformers' methods take one token or a batch and return accordingly (``int | list[int]``,
    ``str | list[str]``); this project only ever passes one, so it narrows the results where it uses them.
    """

    def convert_tokens_to_ids(self, tokens: str, /) -> int | list[int] | None: ...

    def decode(self, token_ids: list[int], /, *, skip_special_tokens: bool = ...) -> str | list[str]: ...


@dataclass(frozen=True)
class TokenLayout:
    """Ids of ProgEmu's special and visual tokens in one checkpoint's vocabulary."""

    bos: int
    eos: int
    pad: int
    image_token: int
    image_start: int
    image_end: int
    eol: int
    eof: int
    visual_offset: int
    codebook_size: int

    @classmethod
    def from_tokenizer(cls, tokenizer: TextTokenizer, codebook_size: int) -> TokenLayout:
        """Look the ids up by name; visual tokens must be contiguous, as in Emu3."""
        unk = getattr(tokenizer, "unk_token_id", None)

        def lookup(name: str) -> int:
            token_id = tokenizer.convert_tokens_to_ids(name)
            if token_id is None or isinstance(token_id, list) or token_id == unk:
                raise CheckpointError(f"the tokenizer has no {name} token: not an Emu3/ProgEmu tokenizer")
            return int(token_id)

        first = lookup(visual_token_name(0))
        last = lookup(visual_token_name(codebook_size - 1))
        if last - first != codebook_size - 1:
            raise CheckpointError("the tokenizer's visual tokens are not contiguous")
        return cls(
            bos=lookup(BOS), eos=lookup(EOS), pad=lookup(PAD), image_token=lookup(IMAGE_TOKEN),
            image_start=lookup(IMAGE_START), image_end=lookup(IMAGE_END), eol=lookup(EOL), eof=lookup(EOF),
            visual_offset=first, codebook_size=codebook_size,
        )

    @property
    def text_limit(self) -> int:
        """Ids below this are ordinary text tokens (Emu3 puts every special after the text)."""
        return min(self.pad, self.eol, self.eof, self.bos, self.eos, self.image_token,
                   self.image_start, self.image_end, self.visual_offset)

    def image_tokens_length(self, height: int, width: int) -> int:
        """Tokens generated for one image after its ``<|image token|>``: rows with EOL, EOF, image end."""
        return height * (width + 1) + 2


@dataclass(frozen=True)
class PromptBuilder:
    """Builds ProgEmu's prompts and training sequences as token ids."""

    layout: TokenLayout
    tokenizer: TextEncoder

    def text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def image_header(self, height: int, width: int) -> list[int]:
        """``<|image start|> "H*W" <|image token|>``: what precedes the visual rows."""
        lay = self.layout
        return [lay.image_start, *self.text(f"{height}*{width}"), lay.image_token]

    def image_body(self, codes: np.ndarray) -> list[int]:
        """Rows of visual tokens each closed by EOL, then EOF and image end."""
        lay = self.layout
        rows = np.asarray(codes, dtype=np.int64) + lay.visual_offset
        eol = np.full((rows.shape[0], 1), lay.eol, dtype=np.int64)
        body = np.concatenate([rows, eol], axis=1).reshape(-1).tolist()
        return [*body, lay.eof, lay.image_end]

    def image_block(self, codes: np.ndarray) -> list[int]:
        height, width = codes.shape
        return [*self.image_header(height, width), *self.image_body(codes)]

    def conditional_prompt(self, prior_codes: np.ndarray, hypothesis: str) -> list[int]:
        """``BOS prior-image hypothesis <image header>``: the row CFG guides towards."""
        height, width = prior_codes.shape
        return [self.layout.bos, *self.image_block(prior_codes), *self.text(hypothesis),
                *self.image_header(height, width)]

    def unconditional_prompt(self, height: int, width: int) -> list[int]:
        """``BOS <image header>``: ProgEmu's empty prompt (prior and hypothesis dropped), CFG's negative row."""
        return [self.layout.bos, *self.image_header(height, width)]

    def training_example(self, prior_codes: np.ndarray, hypothesis: str, followup_codes: np.ndarray,
                         interpretation: str, *, unconditional: bool = False) -> tuple[list[int], list[int]]:
        """Token ids and labels for one quadruple, exactly as inference will prompt.

        The loss covers only what the model generates: the follow-up image rows
        and the interpretation with EOS. ``unconditional`` drops the prior image
        and the hypothesis (ProgEmu's null prompt), which is what CFG relies on.
        """
        height, width = followup_codes.shape
        prefix = (self.unconditional_prompt(height, width) if unconditional
                  else self.conditional_prompt(prior_codes, hypothesis))
        target = [*self.image_body(followup_codes), *self.text(interpretation), self.layout.eos]
        return prefix + target, [IGNORE_INDEX] * len(prefix) + target

    def codes_from_generated(self, generated: list[int], height: int, width: int) -> np.ndarray:
        """Recover the VQ code grid from the generated image tokens (rows, EOLs, EOF, image end)."""
        lay = self.layout
        needed = height * (width + 1)
        if len(generated) < needed:
            raise ValueError(f"generated {len(generated)} image tokens, expected at least {needed}")
        grid = np.asarray(generated[:needed], dtype=np.int64).reshape(height, width + 1)
        if not np.all(grid[:, -1] == lay.eol):
            raise ValueError("generated image rows are not closed by end-of-line tokens")
        return grid[:, :-1] - lay.visual_offset
