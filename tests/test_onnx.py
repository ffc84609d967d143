"""ONNX export and the onnxruntime engine: parity with PyTorch, provider fallback, broken exports refused."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from inference.engines.onnx_engine import OnnxEngine
from inference.engines.torch_engine import TorchEngine
from inference.model import ProgEmuModel
from inference.onnx_bundle import MANIFEST, OnnxExportError, OnnxProgEmu, select_providers
from inference.onnx_export import export_onnx
from inference.onnx_verify import test_image as pattern
from inference.onnx_verify import verify_onnx
from inference.pipeline import CounterfactualPipeline
from inference.sampler import SamplerSettings


@pytest.fixture(scope="module")
def export(small_model: ProgEmuModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "export"
    export_onnx(small_model, out, precisions=("fp32", "fp16"))
    return out


@pytest.fixture(scope="module")
def onnx_model(export: Path) -> OnnxProgEmu:
    return OnnxProgEmu(export, providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_manifest_records_what_was_exported(export: Path, small_model: ProgEmuModel) -> None:
    manifest = json.loads((export / MANIFEST).read_text())
    assert manifest["opset"] == 18 and manifest["source_checkpoint_sha256"] == small_model.checkpoint_sha256
    lm = manifest["files"]["fp32/lm.onnx"]
    names = [i["name"] for i in lm["inputs"]]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"] and "past_key.0" in names
    assert lm["inputs"][0]["shape"][0] == lm["inputs"][3]["shape"][0]  # batch is dynamic and shared
    assert isinstance(manifest["files"]["fp32/vq_decoder.onnx"]["inputs"][0]["shape"][1], str)  # dynamic h
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())
    assert "fp16/lm.onnx" in manifest["files"]
    onnx.checker.check_model(str(export / "fp32" / "lm.onnx"))


@pytest.mark.slow
def test_logits_codes_and_tokens_match_pytorch(small_model: ProgEmuModel, onnx_model: OnnxProgEmu) -> None:
    report = verify_onnx(small_model, onnx_model, seed=3)
    assert report.max_abs_logit_diff < 1e-4
    assert report.vq_codes_identical and report.tokens_identical and report.passed


@pytest.mark.slow
@pytest.mark.parametrize("settings", [SamplerSettings(seed=1, max_text_tokens=6),
                                      SamplerSettings(seed=2, cfg_scale=1.0, top_k=5, max_text_tokens=6),
                                      SamplerSettings(seed=3, temperature=0.0, max_text_tokens=6)])
def test_engines_give_identical_tokens(small_model: ProgEmuModel, onnx_model: OnnxProgEmu,
                                       settings: SamplerSettings) -> None:
    image = pattern(small_model.spec.image_size)
    a = CounterfactualPipeline(small_model, TorchEngine(small_model.text_model, small_model.lm_head)).run(
        image, "the right effusion improves", settings)
    b = CounterfactualPipeline(onnx_model, OnnxEngine(onnx_model)).run(image, "the right effusion improves", settings)
    assert a.tokens == b.tokens and a.interpretation == b.interpretation
    np.testing.assert_allclose(a.image, b.image, atol=1e-4)


@pytest.mark.slow
def test_device_binding_path_gives_the_same_tokens(small_model: ProgEmuModel, onnx_model: OnnxProgEmu) -> None:
    """The I/O-binding backend CUDA uses (KV cache kept as OrtValues), run on the host device."""
    from inference.engines.base import decode
    from inference.engines.onnx_engine import OnnxDeviceBackend, OnnxHostBackend
    from inference.sampler import Sampler

    grid = small_model.grid
    codes = small_model.vision.encode(pattern(small_model.spec.image_size)[None])[0]
    cond = small_model.prompts.conditional_prompt(codes, "cardiomegaly develops")
    uncond = small_model.prompts.unconditional_prompt(grid, grid)
    settings = SamplerSettings(seed=4, max_text_tokens=8)
    host = decode(OnnxHostBackend(onnx_model), cond, uncond, Sampler(settings, small_model.layout, grid, grid))
    bound = decode(OnnxDeviceBackend(onnx_model, device="cpu"), cond, uncond,
                   Sampler(settings, small_model.layout, grid, grid))
    assert host == bound


@pytest.mark.slow
def test_fp16_graphs_run(export: Path, small_model: ProgEmuModel) -> None:
    half = OnnxProgEmu(export, precision="fp16", providers=["CPUExecutionProvider"])
    report = verify_onnx(small_model, half, seed=0)
    assert report.vq_codes_identical and report.max_abs_logit_diff < report.logit_tolerance


def test_missing_provider_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with caplog.at_level(logging.WARNING):
        first = select_providers(["NoSuchExecutionProvider", "CPUExecutionProvider"])
        again = select_providers(["NoSuchExecutionProvider", "CPUExecutionProvider"])
    assert first == again == ["CPUExecutionProvider"]
    assert sum("NoSuchExecutionProvider" in r.message for r in caplog.records) == 1
    assert select_providers(wanted)[-1] == "CPUExecutionProvider"


def _broken(export: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    return copy


@pytest.mark.slow
def test_missing_file_is_refused(export: Path, tmp_path: Path) -> None:
    copy = _broken(export, tmp_path)
    (copy / "fp32" / "head_visual.onnx").unlink()
    with pytest.raises(OnnxExportError, match="head_visual.onnx is missing"):
        OnnxProgEmu(copy)


@pytest.mark.slow
def test_hash_mismatch_is_refused(export: Path, tmp_path: Path) -> None:
    copy = _broken(export, tmp_path)
    with (copy / "fp32" / "head.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(OnnxExportError, match="does not match its sha256"):
        OnnxProgEmu(copy)


@pytest.mark.slow
def test_wrong_opset_is_refused(export: Path, tmp_path: Path) -> None:
    copy = _broken(export, tmp_path)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["opset"] = 11
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(OnnxExportError, match="opset 11 is not supported"):
        OnnxProgEmu(copy)


def test_not_an_export_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OnnxExportError, match="no manifest.json"):
        OnnxProgEmu(tmp_path)
