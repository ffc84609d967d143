"""The evaluation harness end to end: a held-out split scored with CFG on and off, written as JSON, Markdown, PNG."""

import json
from pathlib import Path

import numpy as np
import pytest

from inference.composition import Composition
from inference.data.dataset import Dataset, make_dataset
from inference.engines.torch_engine import TorchEngine
from inference.evaluation.evaluate import evaluate
from inference.model import ProgEmuModel
from inference.pipeline import CounterfactualPipeline
from inference.sampler import SamplerSettings


@pytest.mark.slow
@pytest.mark.parametrize("composition", list(Composition))
def test_evaluate_writes_both_settings_and_every_record(small_model: ProgEmuModel, tmp_path: Path,
                                                        composition: Composition) -> None:
    make_dataset(tmp_path / "data", 30, seed=5, size=small_model.spec.image_size)
    dataset = Dataset.open(tmp_path / "data")
    pipeline = CounterfactualPipeline(small_model, TorchEngine(small_model.text_model, small_model.lm_head),
                                      composition=composition)
    report = evaluate(pipeline, dataset, tmp_path / "eval", limit=2,
                      sampler=SamplerSettings(cfg_scale=2.0, max_text_tokens=8))
    assert set(report["results"]) == {"CFG 2", "CFG off"}
    assert report["model"]["composition"] == composition
    for name, summary in report["results"].items():
        assert summary["n"] == 2 and len(report["per_record"][name]) == 2
        for key in ("alignment_accuracy", "ssim_outside", "ssim_outside_decoded", "ssim_outside_vs_reconstruction",
                    "finding_f1", "rouge_l"):
            assert 0.0 <= summary[key] <= 1.0, key
        assert np.isfinite(summary["psnr_outside_decoded"])
        if composition is Composition.DECODED:  # the delivered image is the decoded one
            assert summary["ssim_outside"] == summary["ssim_outside_decoded"]
        counts = report["alignment_breakdown"][name]
        aligned = round(summary["alignment_accuracy"] * 2)
        for field in ("finding", "direction"):  # every record counted once, its aligned ones among them
            assert sum(total for _, total in counts[field].values()) == 2
            assert sum(hits for hits, _ in counts[field].values()) == aligned
        record = report["per_record"][name][0]
        assert counts["finding"][record["finding"]][1] >= 1 and counts["direction"][record["direction"]][1] >= 1
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {name: sorted(summary) for name, summary in written["results"].items()} == {
        name: sorted(summary) for name, summary in report["results"].items()}
    table = (tmp_path / "eval" / "metrics.md").read_text()
    assert "| metric | CFG 2 | CFG off |" in table and "SSIM outside change, delivered vs prior" in table
    assert "| aligned, by finding | CFG 2 | CFG off |" in table and "| aligned, by direction |" in table
    assert (tmp_path / "eval" / "examples.png").stat().st_size > 1000
