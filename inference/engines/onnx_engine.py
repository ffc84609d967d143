"""The decode loop on onnxruntime. No torch import: a worker can run it with onnxruntime alone.

On CUDA (or TensorRT) the KV cache never leaves the device: each step binds the
previous step's ``present`` OrtValues as the next ``past`` inputs through I/O
binding, and only the scored logits are copied to the host for the sampler.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import onnxruntime as ort

from inference.engines.base import CancelCheck, ProgressCallback, PromptBatch, decode, teacher_forced
from inference.onnx_bundle import OnnxProgEmu
from inference.sampler import Sampler


class _OnnxBackend(ABC):
    """Shared bookkeeping: mask and positions live on the host (they are tiny)."""

    def __init__(self, model: OnnxProgEmu) -> None:
        self.model = model
        self.lm = model.sessions["lm"]
        lay = model.layout
        self.visual = (lay.visual_offset, lay.visual_offset + lay.codebook_size)
        self.past_names = [f"past_{kind}.{i}" for i in range(model.layers) for kind in ("key", "value")]

    def _empty_past(self, rows: int) -> np.ndarray:
        return np.zeros((rows, self.model.kv_heads, 0, self.model.head_dim), dtype=self.model.kv_dtype)

    def _head(self, first: int, stop: int) -> tuple[str, int]:
        """Which head graph to run, and the id of its first output column."""
        if (first, stop) == self.visual:
            return "head_visual", first
        return "head", 0

    @abstractmethod
    def _run(self, ids: np.ndarray, positions: np.ndarray) -> None:
        """Run the language model on new tokens, keeping the last hidden state and the grown cache."""

    def start(self, batch: PromptBatch) -> None:
        self.mask = batch.attention_mask
        self._run(batch.input_ids, batch.position_ids)
        self.positions = batch.next_positions()

    def feed(self, token: int) -> None:
        rows = self.mask.shape[0]
        self.mask = np.concatenate([self.mask, np.ones((rows, 1), dtype=np.int64)], axis=1)
        self._run(np.full((rows, 1), token, dtype=np.int64), self.positions)
        self.positions = self.positions + 1


class OnnxHostBackend(_OnnxBackend):
    """CPU: plain ``run`` with NumPy arrays."""

    def _run(self, ids: np.ndarray, positions: np.ndarray) -> None:
        past = getattr(self, "past", None) or [self._empty_past(ids.shape[0])] * len(self.past_names)
        feeds = {"input_ids": ids, "attention_mask": self.mask, "position_ids": positions,
                 **dict(zip(self.past_names, past, strict=True))}
        outputs = self.lm.run(None, feeds)
        self.hidden, self.past = outputs[0], outputs[1:]

    def logits(self, first: int, stop: int) -> np.ndarray:
        graph, base = self._head(first, stop)
        scores = self.model.sessions[graph].run(None, {"hidden": self.hidden})[0]
        return scores[:, first - base: stop - base].astype(np.float32, copy=False)

    def drop_unconditional(self) -> None:
        self.past = [p[:1] for p in self.past]
        self.mask, self.positions, self.hidden = self.mask[:1], self.positions[:1], self.hidden[:1]


class OnnxDeviceBackend(_OnnxBackend):
    """CUDA/TensorRT: KV cache and hidden state stay on the device between steps.

    ``device`` is an onnxruntime device name; "cpu" runs the same binding code on
    the host, which is how the tests exercise it on a machine without a GPU.
    """

    def __init__(self, model: OnnxProgEmu, device: str = "cuda", device_id: int = 0) -> None:
        super().__init__(model)
        self.device, self.device_id = device, device_id
        self.present_names = [o.name for o in self.lm.get_outputs()[1:]]

    def _device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    def _run(self, ids: np.ndarray, positions: np.ndarray) -> None:
        binding = self.lm.io_binding()
        binding.bind_ortvalue_input("input_ids", self._device(ids))
        binding.bind_ortvalue_input("attention_mask", self._device(self.mask))
        binding.bind_ortvalue_input("position_ids", self._device(positions))
        past = getattr(self, "past", None) or [self._device(self._empty_past(ids.shape[0]))] * len(self.past_names)
        for name, value in zip(self.past_names, past, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("hidden", self.device, self.device_id)
        for name in self.present_names:
            binding.bind_output(name, self.device, self.device_id)
        self.lm.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        self.hidden, self.past = outputs[0], list(outputs[1:])

    def logits(self, first: int, stop: int) -> np.ndarray:
        graph, base = self._head(first, stop)
        session = self.model.sessions[graph]
        binding = session.io_binding()
        binding.bind_ortvalue_input("hidden", self.hidden)
        binding.bind_output("logits", "cpu")
        session.run_with_iobinding(binding)
        scores = binding.copy_outputs_to_cpu()[0]
        return scores[:, first - base: stop - base].astype(np.float32, copy=False)

    def drop_unconditional(self) -> None:
        """Device tensors are not sliced: the second row keeps running and its logits are ignored."""


class OnnxEngine:
    name = "onnx"

    def __init__(self, model: OnnxProgEmu) -> None:
        self.model = model

    def generate(self, cond_prompt: list[int], uncond_prompt: list[int], sampler: Sampler, *,
                 progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> list[int]:
        return decode(self._backend(), cond_prompt, uncond_prompt, sampler, progress=progress, cancel=cancel)

    def span_log_probs(self, prompt: list[int], continuation: list[int], span: tuple[int, int]) -> np.ndarray:
        """Step by step: the exported ``lm`` graph returns only the last position's hidden state."""
        return teacher_forced(self._backend(), prompt, continuation, span)

    def _backend(self) -> OnnxHostBackend | OnnxDeviceBackend:
        return OnnxDeviceBackend(self.model) if self.model.on_cuda else OnnxHostBackend(self.model)
