"""Errors the inference wing raises for input or checkpoints it refuses.

Messages are one line and safe to show to a user.
"""


class InferenceError(Exception):
    """Base class for refusals of the inference wing."""


class HypothesisError(InferenceError, ValueError):
    """An empty hypothesis, or one over the configured length."""


class SamplerSettingsError(InferenceError, ValueError):
    """A sampler setting out of its valid range."""


class CheckpointError(InferenceError):
    """A checkpoint that is missing files, truncated, or of the wrong architecture."""


class GenerationCancelled(InferenceError):
    """Generation was cancelled by the caller."""
