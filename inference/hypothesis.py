"""Validation of the free-text hypothesis before it reaches the tokenizer."""

from __future__ import annotations

import re
import unicodedata

from inference.errors import HypothesisError

_WHITESPACE = re.compile(r"\s+")

MAX_HYPOTHESIS_CHARS = 500
"""The default limit: a few sentences, far below what would crowd the image tokens out of the context."""


def clean_text(text: str) -> str:
    """Drop control and unassigned characters and fold whitespace: safe to render, store and log."""
    kept = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    return _WHITESPACE.sub(" ", kept.replace("\ufffd", " ")).strip()


def normalise_hypothesis(text: str, *, max_chars: int = MAX_HYPOTHESIS_CHARS) -> str:
    """Return the hypothesis with control characters removed and whitespace folded.

    Refuses an empty text and one longer than ``max_chars``: a long text would
    crowd the image tokens out of the model's context, and nothing a radiologist
    types as a hypothesis needs more than a few sentences.
    """
    if not isinstance(text, str):
        raise HypothesisError("the hypothesis must be text")
    cleaned = clean_text(text)
    if not cleaned:
        raise HypothesisError("the hypothesis is empty")
    if len(cleaned) > max_chars:
        raise HypothesisError(f"the hypothesis has {len(cleaned)} characters; the limit is {max_chars}")
    return cleaned
