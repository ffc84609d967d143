"""How the generated image becomes the delivered counterfactual.

The VQ tokenizer cannot represent everything in a radiograph: 8x8 pixels per
code lose acquisition noise and fine edges, so the decoded image is a blurred
copy of the patient even where the hypothesis changes nothing. Residual
composition keeps the patient's own pixels and adds only what the model
changed: ``prior + (decode(counterfactual) - decode(prior))``. Both decodes go
through the same tokenizer, so its losses cancel outside the change while the
change itself is transferred whole. "decoded" delivers the decoder's image as it
is, which is what an unmodified ProgEmu returns.
"""

from __future__ import annotations

import enum

import numpy as np


class Composition(enum.StrEnum):
    RESIDUAL = "residual"
    DECODED = "decoded"


def compose(prior: np.ndarray, decoded: np.ndarray, reconstruction: np.ndarray,
            mode: Composition) -> np.ndarray:
    """The delivered image, float32 in [0, 1]; all three inputs share one geometry.

    ``reconstruction`` is the prior as the tokenizer reproduces it: the baseline
    the model's change is measured from.
    """
    if not prior.shape == decoded.shape == reconstruction.shape:
        raise ValueError(f"prior {prior.shape}, decoded {decoded.shape} and reconstruction "
                         f"{reconstruction.shape} must have one shape")
    if mode is Composition.DECODED:
        return np.asarray(decoded, dtype=np.float32)
    return np.clip(prior + (decoded - reconstruction), 0.0, 1.0).astype(np.float32)


def baseline(prior: np.ndarray, reconstruction: np.ndarray, mode: Composition) -> np.ndarray:
    """What a delivered image is compared with to see the model's change (difference maps, alignment)."""
    return prior if mode is Composition.RESIDUAL else reconstruction
