"""Image + hypothesis in, image + interpretation out."""

import numpy as np
import pytest

from inference.composition import Composition
from inference.engines.torch_engine import TorchEngine
from inference.errors import HypothesisError
from inference.model import ProgEmuModel
from inference.pipeline import CounterfactualPipeline
from inference.sampler import Deadline, GenerationTimeout, SamplerSettings


@pytest.fixture(scope="module")
def pipeline(small_model: ProgEmuModel) -> CounterfactualPipeline:
    engine = TorchEngine(small_model.text_model, small_model.lm_head)
    return CounterfactualPipeline(small_model, engine, max_hypothesis_chars=80)


def prior() -> np.ndarray:
    y, x = np.mgrid[0:64, 0:64] / 63.0
    return (0.2 + 0.6 * np.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) * 6)).astype(np.float32)


def test_run_returns_image_and_text(pipeline: CounterfactualPipeline) -> None:
    out = pipeline.run(prior(), "  mild right effusion develops ", SamplerSettings(seed=4, max_text_tokens=10))
    assert out.image.shape == (64, 64) and out.image.dtype == np.float32
    assert 0.0 <= out.image.min() and out.image.max() <= 1.0
    assert out.prior_reconstruction.shape == out.decoded.shape == (64, 64)
    # Residual composition (the default): the prior plus the model's change, nothing else.
    np.testing.assert_allclose(out.image, np.clip(prior() + out.decoded - out.prior_reconstruction, 0, 1), atol=1e-6)
    assert out.hypothesis == "mild right effusion develops"
    assert isinstance(out.interpretation, str)
    image_tokens = pipeline.model.layout.image_tokens_length(8, 8)
    assert image_tokens < out.generated_tokens <= image_tokens + 11


def test_same_seed_gives_identical_pixels(pipeline: CounterfactualPipeline) -> None:
    settings = SamplerSettings(seed=9, max_text_tokens=4)
    a = pipeline.run(prior(), "cardiomegaly worsens", settings)
    b = pipeline.run(prior(), "cardiomegaly worsens", settings)
    c = pipeline.run(prior(), "cardiomegaly worsens", SamplerSettings(seed=10, max_text_tokens=4))
    assert a.image.tobytes() == b.image.tobytes() and a.interpretation == b.interpretation
    assert a.image.tobytes() != c.image.tobytes()


def test_decoded_composition_delivers_the_decoder_image(small_model: ProgEmuModel) -> None:
    engine = TorchEngine(small_model.text_model, small_model.lm_head)
    settings = SamplerSettings(seed=4, max_text_tokens=4)
    decoded = CounterfactualPipeline(small_model, engine, composition=Composition.DECODED).run(
        prior(), "effusion develops", settings)
    residual = CounterfactualPipeline(small_model, engine).run(prior(), "effusion develops", settings)
    assert decoded.composition is Composition.DECODED and residual.composition is Composition.RESIDUAL
    assert np.array_equal(decoded.image, decoded.decoded)
    assert decoded.tokens == residual.tokens and np.array_equal(decoded.decoded, residual.decoded)


def test_wrong_size_and_bad_hypothesis_are_refused(pipeline: CounterfactualPipeline) -> None:
    with pytest.raises(ValueError, match="64x64"):
        pipeline.run(np.zeros((32, 32), np.float32), "x", SamplerSettings())
    with pytest.raises(HypothesisError, match="empty"):
        pipeline.run(prior(), " ", SamplerSettings())
    with pytest.raises(HypothesisError, match="limit is 80"):
        pipeline.run(prior(), "y" * 81, SamplerSettings())


def test_the_checkpoint_limits_the_interpretation(pipeline: CounterfactualPipeline) -> None:
    """ModelSpec.max_text_tokens (24 for the small test model) applies when the settings ask for more or nothing."""
    limit = pipeline.model.spec.max_text_tokens
    image_tokens = pipeline.model.layout.image_tokens_length(8, 8)
    for settings in (SamplerSettings(seed=5, min_text_tokens=limit), SamplerSettings(seed=5, max_text_tokens=4096)):
        out = pipeline.run(prior(), "cardiomegaly worsens", settings)
        assert out.settings.max_text_tokens == limit
        assert out.generated_tokens <= image_tokens + limit + 1


def test_generation_stops_in_the_token_loop_once_its_deadline_passes(pipeline: CounterfactualPipeline) -> None:
    done: list[int] = []
    with pytest.raises(GenerationTimeout, match="generation exceeded the 0.001 s time limit"):
        pipeline.run(prior(), "cardiomegaly worsens", SamplerSettings(seed=1, max_text_tokens=4),
                     progress=lambda n, total: done.append(n), cancel=Deadline(0.001))
    assert done == [1]  # checked after every token: it stopped at the first
