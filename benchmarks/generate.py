"""Generation speed: transformers' ``generate`` against our torch and ONNX engines, in one process.

Same model, prompt, settings and seed for all three. Prints tokens/s, the ratio
of each engine to ``generate`` (measured in this run), and the peak RSS.

    python benchmarks/generate.py                     # the shipped demo model, on this machine
    python benchmarks/generate.py --model CKPT --repeats 3
    python benchmarks/generate.py --full-size         # 8.5B ProgEmu-shaped, random init, needs a GPU
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from inference.checkpoint import ONNX_DIR
from inference.engines.base import Engine
from inference.engines.torch_engine import TorchEngine
from inference.model import ProgEmuModel, load_progemu, quiet_transformers
from inference.onnx_verify import test_image
from inference.pipeline import GenerativeModel
from inference.sampler import GenerationState, Sampler, SamplerSettings
from inference.sequence import TokenLayout

log = logging.getLogger("benchmarks.generate")
HYPOTHESIS = "A moderate left pleural effusion has developed."


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class GridConstraint:
    """ProgEmu's grid constraint as transformers' ``prefix_allowed_tokens_fn``, counted from the prompt's end."""

    def __init__(self, layout: TokenLayout, prompt_length: int, settings: SamplerSettings, grid: int) -> None:
        self.layout, self.prompt_length, self.settings, self.grid = layout, prompt_length, settings, grid
        self.states: dict[int, tuple[GenerationState, int]] = {}

    def __call__(self, batch_id: int, input_ids: torch.Tensor) -> list[int]:
        state, seen = self.states.get(batch_id) or (self._new(), self.prompt_length)
        for token in input_ids[seen:].tolist():
            state.advance(token)
        self.states[batch_id] = (state, len(input_ids))
        forced = state.forced()
        return [forced] if forced is not None else state.candidates().tolist()

    def _new(self) -> GenerationState:
        return Sampler(self.settings, self.layout, self.grid, self.grid).state  # checks the settings are resolved


def prompts(model: GenerativeModel) -> tuple[list[int], list[int], int]:
    """The same prompt for every engine: the test image as prior, the benchmark hypothesis."""
    codes = model.vision.encode(test_image(model.spec.image_size)[None])[0]
    grid = codes.shape[0]
    return model.prompts.conditional_prompt(codes, HYPOTHESIS), model.prompts.unconditional_prompt(grid, grid), grid


def run_generate(model: ProgEmuModel, settings: SamplerSettings,
                 max_new_tokens: int | None = None) -> tuple[int, float]:
    """transformers' generate with its own CFG (an unbatched second pass) and the grid constraint."""
    cond_ids, uncond_ids, grid = prompts(model)
    device = model.lm_head.weight.device
    cond = torch.tensor([cond_ids], device=device)
    uncond = torch.tensor([uncond_ids], device=device)
    total = Sampler(settings, model.layout, grid, grid).state.total
    torch.manual_seed(settings.seed)
    started = time.perf_counter()
    out = model.generator.generate(
        input_ids=cond, attention_mask=torch.ones_like(cond), max_new_tokens=max_new_tokens or total,
        do_sample=settings.temperature > 0, top_k=settings.top_k or None, top_p=settings.top_p,
        temperature=settings.temperature or None, guidance_scale=settings.cfg_scale,
        negative_prompt_ids=uncond, negative_prompt_attention_mask=torch.ones_like(uncond),
        prefix_allowed_tokens_fn=GridConstraint(model.layout, cond.shape[1], settings, grid),
        eos_token_id=model.layout.eos, pad_token_id=model.layout.pad)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out.shape[1] - cond.shape[1], time.perf_counter() - started


def run_engine(engine: Engine, model: GenerativeModel, settings: SamplerSettings) -> tuple[int, float]:
    """Our decode loop alone (no VQ encode/decode), timed like ``generate``."""
    cond, uncond, grid = prompts(model)
    started = time.perf_counter()
    tokens = engine.generate(cond, uncond, Sampler(settings, model.layout, grid, grid))
    return len(tokens), time.perf_counter() - started


def measure(name: str, fn: Callable[[], tuple[int, float]], repeats: int) -> dict:
    fn()  # warm-up: first-call allocations and kernel selection are not what a worker pays per request
    runs = [fn() for _ in range(repeats)]
    tokens = runs[0][0]
    seconds = statistics.median(seconds for _, seconds in runs)
    row = {"engine": name, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
           "peak_rss_mib": peak_rss_mib()}
    log.info("%s: %d tokens in %.3f s", name, tokens, seconds)
    return row


def print_table(rows: list[dict], baseline: str) -> None:
    base = next(r for r in rows if r["engine"] == baseline)["tokens_per_s"]
    print(f"{'engine':<22}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}{'vs generate':>13}{'peak RSS MiB':>14}")
    for r in rows:
        print(f"{r['engine']:<22}{r['tokens']:>8}{r['seconds']:>10.3f}{r['tokens_per_s']:>11.1f}"
              f"{r['tokens_per_s'] / base:>12.2f}x{r['peak_rss_mib']:>14.0f}")


def demo_benchmark(args: argparse.Namespace) -> None:
    from plugin.config import Settings

    config = Settings()
    model_path = args.model or config.model_path
    threads = config.onnx_threads if args.onnx_threads is None else args.onnx_threads
    model = load_progemu(model_path)
    settings = SamplerSettings(seed=args.seed, cfg_scale=args.cfg_scale, top_k=args.top_k).for_model(
        model.spec.max_text_tokens)
    rows = [measure("transformers generate", lambda: run_generate(model, settings), args.repeats)]
    torch_engine = TorchEngine(model.text_model, model.lm_head)
    rows.append(measure("ours: torch engine", lambda: run_engine(torch_engine, model, settings), args.repeats))
    from inference.engines.onnx_engine import OnnxEngine
    from inference.onnx_bundle import OnnxProgEmu
    from inference.onnx_export import export_onnx

    export = model_path / ONNX_DIR
    with tempfile.TemporaryDirectory() as tmp:
        if not (export / "manifest.json").exists():
            export = Path(tmp) / "onnx"
            export_onnx(model, export, precisions=("fp32",))
        onnx_model = OnnxProgEmu(export, providers=["CPUExecutionProvider"], threads=threads)
        onnx_engine = OnnxEngine(onnx_model)
        rows.append(measure("ours: ONNX engine", lambda: run_engine(onnx_engine, onnx_model, settings), args.repeats))
    print(f"model {model.spec.name} {model.spec.version} ({model_path}), {model.spec.image_size} px, "
          f"seed {args.seed}, cfg {args.cfg_scale}, top-k {args.top_k}, torch threads {torch.get_num_threads()}, "
          f"onnxruntime threads {threads or 'default'}")
    print_table(rows, "transformers generate")


def full_size_benchmark(args: argparse.Namespace) -> None:
    from benchmarks.full_size import run_full_size

    run_full_size(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="checkpoint (default: the configured/demo model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg-scale", type=float, default=SamplerSettings.cfg_scale)
    parser.add_argument("--top-k", type=int, default=SamplerSettings.top_k)
    parser.add_argument("--onnx-threads", type=int,
                        help="onnxruntime intra-op threads, 0 for its default (default: PROGEMU_ONNX_THREADS's)")
    parser.add_argument("--full-size", action="store_true", help="8.5B ProgEmu-shaped model on a GPU")
    parser.add_argument("--generate-steps", type=int, default=256,
                        help="full size: steps of transformers' generate to time (it is extrapolated)")
    parser.add_argument("--bandwidth", type=float, default=3.35e12,
                        help="full size: memory bandwidth in bytes/s for the floor (H100 SXM 3.35e12, H200 4.8e12)")
    parser.add_argument("--allow-cpu", action="store_true", help="full size: a shrunken dry run without a GPU")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    quiet_transformers()
    np.set_printoptions(precision=3)
    (full_size_benchmark if args.full_size else demo_benchmark)(args)


if __name__ == "__main__":
    main()
