"""The out-of-distribution score: deterministic, calibrated into the checkpoint, and refusing what is foreign."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.checkpoint import SPEC_NAME, checkpoint_identity
from inference.data.dataset import plan_pair, render_pair
from inference.engines.base import teacher_forced
from inference.engines.torch_engine import TorchBackend, TorchEngine
from inference.errors import CheckpointError
from inference.loading import EngineOptions, load_pipeline
from inference.model import ProgEmuModel, load_progemu
from inference.onnx_bundle import FORMAT, MANIFEST
from inference.ood import (
    COMPONENTS,
    LAYOUT_GRID,
    METHOD,
    Calibration,
    Layout,
    Reference,
    calibrate,
    layout_features,
    restamp_onnx_export,
)
from inference.pipeline import CounterfactualPipeline

DEMO_MODEL = Path(__file__).parents[1] / "plugin" / "assets" / "demo-model"


def priors(size: int, count: int, seed: int) -> list[np.ndarray]:
    """Priors as the demo model was trained on: synthetic chests with and without findings."""
    return [render_pair(plan_pair(index, seed), size)[0] for index in range(count)]


def foreign(size: int) -> dict[str, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size]
    return {"constant": np.full((size, size), 0.5, np.float32),
            "checkerboard": ((y // 8 + x // 8) % 2).astype(np.float32),
            "noise": np.random.default_rng(0).uniform(0, 1, (size, size)).astype(np.float32)}


def copy_with_export_manifest(checkpoint: Path, out: Path) -> Path:
    """The checkpoint, with a hand-written ONNX manifest beside it: exporting takes a minute."""
    shutil.copytree(checkpoint, out, ignore=shutil.ignore_patterns("onnx"))
    (out / "onnx").mkdir()
    manifest = {"format": FORMAT, "opset": 18, "precisions": [], "files": {},
                "source_checkpoint_sha256": checkpoint_identity(out), "spec": {"name": "ProgEmu"}}
    (out / "onnx" / MANIFEST).write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def calibrated(small_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Calibration, str]:
    """A copy of the small checkpoint calibrated on 40 training-like priors (20 fit the layout, 20 set the limit):
    (path, calibration, old identity)."""
    out = copy_with_export_manifest(small_checkpoint, tmp_path_factory.mktemp("ood") / "small")
    previous = checkpoint_identity(out)
    done: list[int] = []
    calibration = calibrate(out, iter(priors(64, 40, seed=7)), quantile=0.95, progress=done.append)
    assert done == list(range(1, 41))
    return out, calibration, previous


def test_scoring_is_deterministic_and_uncalibrated_has_no_limit(small_model: ProgEmuModel) -> None:
    pipeline = CounterfactualPipeline(small_model, TorchEngine(small_model.text_model, small_model.lm_head))
    prior = priors(64, 1, seed=3)[0]
    first, second = pipeline.assess_prior(prior), pipeline.assess_prior(prior)
    assert first == second and set(first.components) == {"reconstruction_rms", "code_nll"}  # no layout yet
    assert first.limit is None and first.within_limit and first.score == first.components["code_nll"]
    with pytest.raises(ValueError, match="64x64"):
        pipeline.assess_prior(np.zeros((32, 32), np.float32))


def test_stepwise_scoring_matches_one_pass(small_model: ProgEmuModel) -> None:
    """What the ONNX engine runs (one step at a time), checked on PyTorch against the single forward pass."""
    lay, prompts = small_model.layout, small_model.prompts
    codes = small_model.vision.encode(priors(64, 1, seed=3)[0][None])[0]
    args = ([lay.bos, *prompts.image_header(8, 8)], prompts.image_body(codes),
            (lay.visual_offset, lay.visual_offset + lay.codebook_size))
    one_pass = TorchEngine(small_model.text_model, small_model.lm_head).span_log_probs(*args)
    with torch.inference_mode():
        stepwise = teacher_forced(TorchBackend(small_model.text_model, small_model.lm_head), *args)
    assert one_pass.shape == (64,) and np.all(one_pass < 0)
    np.testing.assert_allclose(stepwise, one_pass, atol=1e-5)


@pytest.mark.slow
def test_calibration_is_stored_in_the_checkpoint(calibrated: tuple[Path, Calibration, str]) -> None:
    path, calibration, previous = calibrated
    stored = json.loads((path / SPEC_NAME).read_text())
    assert stored["ood"] == calibration.to_dict() and stored["version"] == "test-small-0"  # the rest is kept
    assert calibration.images == 20 and calibration.limit > 0
    identity = checkpoint_identity(path)  # the manifest verifies: progemu.json is part of the identity
    assert identity != previous
    model = load_progemu(path)
    assert model.checkpoint_sha256 == identity and model.spec.ood == calibration.to_dict()
    export = json.loads((path / "onnx" / MANIFEST).read_text())
    assert export["source_checkpoint_sha256"] == identity and export["spec"]["ood"] == calibration.to_dict()


@pytest.mark.slow
def test_foreign_images_score_above_the_limit(calibrated: tuple[Path, Calibration, str]) -> None:
    path, calibration, _ = calibrated
    pipeline = load_pipeline(path, EngineOptions(engine="torch"))
    for prior in priors(64, 4, seed=11):
        assessment = pipeline.assess_prior(prior)
        assert assessment.limit == calibration.limit and assessment.within_limit, assessment
    # a random-init model: its VQ alone separates a checkerboard; the trained demo model is checked on more below
    images = foreign(64)
    for name in ("checkerboard",):
        assessment = pipeline.assess_prior(images[name])
        assert not assessment.within_limit, name
    message = assessment.refusal("ProgEmu test-small-0")
    assert message.startswith("this image is outside what ProgEmu test-small-0 was trained on (score ")
    assert message.endswith(f"limit {calibration.limit:.2f})")


@pytest.mark.slow
def test_the_demo_model_refuses_what_it_never_saw(tmp_path: Path) -> None:
    """The shipped demo model, trained on phantoms: its language model and its VQ both tell them from others."""
    path = copy_with_export_manifest(DEMO_MODEL, tmp_path / "demo")
    calibration = calibrate(path, priors(128, 40, seed=7), quantile=0.95)
    pipeline = load_pipeline(path, EngineOptions(engine="torch"))
    held_out = [pipeline.assess_prior(prior).score for prior in priors(128, 4, seed=11)]
    assert max(held_out) <= calibration.limit
    chest = priors(128, 1, seed=11)[0]
    images = {**foreign(128), "inverted": 1.0 - chest, "lying on its side": np.ascontiguousarray(chest.T[::-1])}
    for name, image in images.items():
        assessment = pipeline.assess_prior(image)
        assert assessment.score > 2 * calibration.limit, (name, assessment)


def _layout(seed: int = 0) -> Layout:
    return Layout.fit(np.random.default_rng(seed).normal(size=(40, LAYOUT_GRID**2)))


def test_calibration_needs_enough_images() -> None:
    samples = [{"reconstruction_rms": 0.1 + 0.001 * i, "code_nll": 0.3 + 0.002 * (i % 7),
                "layout_distance": 4.0 + 0.01 * (i % 5), "layout_residual": 1.0 + 0.003 * (i % 11)} for i in range(40)]
    with pytest.raises(ValueError, match="at least 20"):
        Calibration.fit(samples[:10], 0.9, _layout())
    with pytest.raises(ValueError, match="at least 99"):
        Calibration.fit(samples, 0.99, _layout())
    calibration = Calibration.fit(samples, 0.95, _layout())
    scores = sorted(calibration.score(sample) for sample in samples)
    assert calibration.limit == scores[38]  # the conformal rank: ceil(41 * 0.95) = 39
    again = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert (again.limit, again.references) == (calibration.limit, calibration.references)
    np.testing.assert_allclose(again.layout.basis, calibration.layout.basis, rtol=1e-6)


def test_the_layout_tells_a_frontal_chest_from_one_on_its_side() -> None:
    """The components a patch-wise model misses: the same pixels in another arrangement lie off the layout."""
    chests = priors(64, 48, seed=5)
    layout = Layout.fit(np.stack([layout_features(prior) for prior in chests[:40]]))
    held_out = [layout.components(prior) for prior in chests[40:]]
    turned = [layout.components(np.ascontiguousarray(prior.T[::-1])) for prior in chests[40:]]
    for name in ("layout_distance", "layout_residual"):
        assert min(t[name] for t in turned) > 2 * max(h[name] for h in held_out), name
    with pytest.raises(ValueError, match="multiple of 16"):
        layout_features(np.zeros((40, 40), np.float32))


def test_a_too_likely_prior_counts_but_a_cleaner_one_does_not() -> None:
    """Too likely is as foreign as too unlikely (a blank frame); reconstructing better than usual is a cleaner film."""
    calibration = Calibration({"reconstruction_rms": Reference(0.04, 0.003), "code_nll": Reference(0.26, 0.03),
                               "layout_distance": Reference(4.0, 1.0), "layout_residual": Reference(1.0, 0.1)},
                              limit=3.0, quantile=0.99, images=100, layout=_layout())
    typical = {"reconstruction_rms": 0.04, "code_nll": 0.26, "layout_distance": 4.0, "layout_residual": 1.0}
    assert calibration.score(typical) == 0.0
    assert calibration.score(typical | {"reconstruction_rms": 0.004}) == 0.0
    assert calibration.score(typical | {"reconstruction_rms": 0.076}) == pytest.approx(12.0)
    assert calibration.score(typical | {"code_nll": 0.35}) == pytest.approx(3.0)
    assert calibration.score(typical | {"code_nll": 0.17}) == pytest.approx(3.0)
    assert calibration.score(typical | {"layout_residual": 0.5}) == 0.0  # a more typical layout than usual
    assert calibration.score(typical | {"layout_residual": 1.5}) == pytest.approx(5.0)


def test_a_calibration_of_another_score_or_damaged_is_refused() -> None:
    with pytest.raises(CheckpointError, match="is for 'progemu-ood/0'.*calibrate it again"):
        Calibration.from_dict({"method": "progemu-ood/0", "components": {}})
    with pytest.raises(CheckpointError, match="damaged"):
        Calibration.from_dict({"method": METHOD, "components": {"code_nll": {"median": 1.0, "scale": 0.1}}})


def test_an_export_of_another_checkpoint_is_not_restamped(tmp_path: Path) -> None:
    (tmp_path / "onnx").mkdir()
    manifest = {"format": FORMAT, "opset": 18, "precisions": [], "files": {}, "source_checkpoint_sha256": "a" * 64,
                "spec": {}}
    (tmp_path / "onnx" / MANIFEST).write_text(json.dumps(manifest))
    assert not restamp_onnx_export(tmp_path, "b" * 64, "c" * 64, {})
    assert json.loads((tmp_path / "onnx" / MANIFEST).read_text()) == manifest


@pytest.mark.slow
def test_onnx_engine_scores_like_pytorch(small_model: ProgEmuModel, tmp_path: Path) -> None:
    """A real export, calibrated after it was made: the ONNX engine loads it and reports the same assessment."""
    from inference.onnx_export import export_onnx

    path = tmp_path / "small"
    shutil.copytree(small_model.path, path)
    export_onnx(load_progemu(path), path / "onnx", precisions=("fp32",))
    calibrate(path, priors(64, 40, seed=7), quantile=0.95)
    torch_pipeline = load_pipeline(path, EngineOptions(engine="torch"))
    onnx_pipeline = load_pipeline(path, EngineOptions(engine="onnx"))  # the re-stamped identity matches
    # not the constant frame: it puts the random VQ's latents on near-ties between codes, which rounding breaks
    images = foreign(64)
    for prior in [*priors(64, 2, seed=11), images["checkerboard"], images["noise"]]:
        a, b = torch_pipeline.assess_prior(prior), onnx_pipeline.assess_prior(prior)
        assert a.limit == b.limit is not None
        for name in COMPONENTS:
            assert a.components[name] == pytest.approx(b.components[name], abs=1e-5), name
