"""Hypothesis validation."""

import pytest

from inference.errors import HypothesisError
from inference.hypothesis import normalise_hypothesis


def test_whitespace_and_control_characters_are_folded() -> None:
    assert normalise_hypothesis("  the left\x00effusion\n\n worsens ", max_chars=100) == "the left effusion worsens"


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "\x00\x01"])
def test_empty_is_refused(text: str) -> None:
    with pytest.raises(HypothesisError, match="empty"):
        normalise_hypothesis(text, max_chars=100)


def test_too_long_is_refused_with_both_numbers() -> None:
    with pytest.raises(HypothesisError, match="101 characters; the limit is 100"):
        normalise_hypothesis("x" * 101, max_chars=100)
