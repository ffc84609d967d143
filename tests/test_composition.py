"""Residual composition: the patient's pixels where the model changed nothing, its change where it did."""

import numpy as np
import pytest

from inference.composition import Composition, baseline, compose


def images() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    prior = rng.uniform(0.1, 0.9, (32, 32)).astype(np.float32)  # noise the tokenizer cannot keep
    reconstruction = np.full((32, 32), 0.5, np.float32)
    decoded = reconstruction.copy()
    decoded[20:28, 4:12] += 0.3  # the model's change: a brighter patch
    return prior, decoded, reconstruction


def test_residual_keeps_the_prior_outside_the_change_and_adds_it_inside() -> None:
    prior, decoded, reconstruction = images()
    out = compose(prior, decoded, reconstruction, Composition.RESIDUAL)
    changed = np.zeros_like(prior, dtype=bool)
    changed[20:28, 4:12] = True
    assert out.dtype == np.float32
    assert np.array_equal(out[~changed], prior[~changed])
    np.testing.assert_allclose(out[changed], np.clip(prior[changed] + 0.3, 0, 1), atol=1e-6)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert baseline(prior, reconstruction, Composition.RESIDUAL) is prior


def test_decoded_delivers_the_decoder_image() -> None:
    prior, decoded, reconstruction = images()
    assert np.array_equal(compose(prior, decoded, reconstruction, Composition.DECODED), decoded)
    assert baseline(prior, reconstruction, Composition.DECODED) is reconstruction


def test_shapes_must_agree() -> None:
    prior, decoded, reconstruction = images()
    with pytest.raises(ValueError, match="one shape"):
        compose(prior[:16], decoded, reconstruction, Composition.RESIDUAL)
