"""``benchmarks/generate.py --full-size``: seconds per 512x512 counterfactual with a ProgEmu-shaped 8.5B model.

The weights are random (no checkpoint can be downloaded here); speed does not
depend on their values, only on the shapes. Emu3's real token ids are used.
The floor is the memory-bandwidth bound of docs/performance.md: every step
reads all weights once (the CFG pair shares the read).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np
import torch
from transformers import Emu3ForCausalLM, Emu3TextConfig

from inference.engines.torch_engine import TorchEngine
from inference.sampler import Sampler, SamplerSettings
from inference.sequence import PromptBuilder, TokenLayout

log = logging.getLogger("benchmarks.full_size")

EMU3_LAYOUT = TokenLayout(bos=151849, eos=151850, pad=151643, image_token=151851, image_start=151852,
                          image_end=151853, eol=151846, eof=151847, visual_offset=151854, codebook_size=32768)
GRID = 64  # 512 px at 8x downsampling


class _ByteIds:
    """Stands in for Emu3's text tokenizer: random weights make the text ids' identity irrelevant to speed."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode())


def full_size_config(layers: int, hidden: int) -> Emu3TextConfig:
    return Emu3TextConfig(vocab_size=184622, hidden_size=hidden, intermediate_size=int(hidden * 3.5),
                          num_hidden_layers=layers, num_attention_heads=hidden // 128,
                          num_key_value_heads=min(8, hidden // 128),
                          max_position_embeddings=9216, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                          pad_token_id=EMU3_LAYOUT.pad, bos_token_id=EMU3_LAYOUT.bos, eos_token_id=EMU3_LAYOUT.eos,
                          attention_dropout=0.0)


def bandwidth_floor_s(parameters: int, bytes_per_param: int, steps: int, bandwidth: float) -> float:
    return parameters * bytes_per_param * steps / bandwidth


def run_full_size(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("--full-size needs a GPU (use the device tool); --allow-cpu runs a shrunken dry run")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layers, hidden = (32, 4096) if not args.allow_cpu else (2, 256)
    config = full_size_config(layers, hidden)
    started = time.perf_counter()
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        model = Emu3ForCausalLM(config).eval()
        torch.set_default_dtype(torch.float32)
    parameters = sum(p.numel() for p in model.parameters())
    log.info("built %.2fB parameters on %s in %.0f s", parameters / 1e9, device, time.perf_counter() - started)
    rng = np.random.default_rng(0)
    prompts = PromptBuilder(EMU3_LAYOUT, _ByteIds())
    prior = rng.integers(0, EMU3_LAYOUT.codebook_size, size=(GRID, GRID))
    cond = prompts.conditional_prompt(prior, "A moderate left pleural effusion has developed.")
    uncond = prompts.unconditional_prompt(GRID, GRID)
    # The image block alone: what the floor table counts (4,163 tokens at 64x64); one text token ends it.
    settings = SamplerSettings(seed=0, cfg_scale=3.0, top_k=2048, max_text_tokens=1, min_text_tokens=0)
    engine = TorchEngine(model.model, model.lm_head)
    steps: list[float] = []

    def progress(done: int, total: int) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        steps.append(time.perf_counter())

    warm = Sampler(SamplerSettings(seed=1, max_text_tokens=1, min_text_tokens=0), EMU3_LAYOUT, 2, 2)
    engine.generate(cond[:64] + prompts.image_header(2, 2), uncond[:1] + prompts.image_header(2, 2), warm)
    torch.cuda.reset_peak_memory_stats() if device == "cuda" else None
    started = time.perf_counter()
    tokens = engine.generate(cond, uncond, Sampler(settings, EMU3_LAYOUT, GRID, GRID), progress=progress)
    seconds = time.perf_counter() - started
    prefill = steps[0] - started
    image_tokens = EMU3_LAYOUT.image_tokens_length(GRID, GRID)
    per_step = float(np.median(np.diff(steps[: image_tokens])))
    floor = bandwidth_floor_s(parameters, 2, image_tokens, args.bandwidth)
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
        "parameters": parameters, "prompt_tokens": len(cond), "generated_tokens": len(tokens),
        "seconds_per_counterfactual": seconds, "prefill_seconds": prefill, "median_step_ms": per_step * 1e3,
        "bandwidth_floor_seconds_bf16": floor, "gap_vs_floor": seconds / floor,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
    }
    if args.generate_steps:
        from benchmarks.generate import GridConstraint

        ids = torch.tensor([cond], device=device)
        neg = torch.tensor([uncond], device=device)
        torch.manual_seed(0)
        started = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.generate_steps,
                             min_new_tokens=args.generate_steps, do_sample=True, top_k=2048, guidance_scale=3.0,
                             negative_prompt_ids=neg, negative_prompt_attention_mask=torch.ones_like(neg),
                             prefix_allowed_tokens_fn=GridConstraint(EMU3_LAYOUT, len(cond), settings, GRID),
                             pad_token_id=EMU3_LAYOUT.pad)
        if device == "cuda":
            torch.cuda.synchronize()
        generate_s = time.perf_counter() - started
        made = out.shape[1] - ids.shape[1]
        result.update({"generate_steps": made, "generate_seconds": generate_s,
                       "generate_extrapolated_seconds_per_counterfactual": generate_s / made * len(tokens),
                       "speedup_vs_generate": (generate_s / made * len(tokens)) / seconds})
    print(json.dumps(result, indent=2))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "full_size.json"), "w") as handle:
            json.dump(result, handle, indent=2)
