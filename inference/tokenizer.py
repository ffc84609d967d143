"""The VQ image tokenizer behind one interface: grayscale pixels <-> code grids.

Real ProgEmu checkpoints use Emu3's VQ-VAE (RGB in [-1, 1], 8x downsampling).
Chest X-rays are grayscale, so the image is repeated over the three channels
on the way in and the channels are averaged on the way out.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from transformers import Emu3VQVAE


class VisionTokenizer(Protocol):
    """Encode grayscale images to VQ codes and back."""

    downsample: int
    codebook_size: int

    def encode(self, images: np.ndarray) -> np.ndarray:
        """float32 [B, H, W] in [0, 1] -> int64 codes [B, H/downsample, W/downsample]."""
        ...

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int64 codes [B, h, w] -> float32 [B, h*downsample, w*downsample] in [0, 1]."""
        ...


class Emu3VisionTokenizer:
    """Emu3's VQ-VAE (``Emu3VQVAE``) as a :class:`VisionTokenizer`."""

    def __init__(self, vqmodel: Emu3VQVAE) -> None:
        self.vqmodel = vqmodel
        self.downsample = 2 ** (len(vqmodel.config.channel_multiplier) - 1)
        self.codebook_size = int(vqmodel.config.codebook_size)

    @property
    def _device(self) -> torch.device:
        return next(self.vqmodel.parameters()).device

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3 or images.shape[1] % self.downsample or images.shape[2] % self.downsample:
            raise ValueError(f"images must be [B, H, W] with H and W multiples of {self.downsample}")
        pixels = torch.from_numpy(images * 2.0 - 1.0).to(self._device)
        pixels = pixels[:, None].expand(-1, 3, -1, -1).contiguous()
        sizes = torch.tensor([images.shape[1:]] * images.shape[0], device=self._device)
        output = self.vqmodel.encode(pixels, sizes, return_dict=True)
        return torch.stack(list(output.image_tokens)).cpu().numpy().astype(np.int64)

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes_t = torch.from_numpy(np.asarray(codes, dtype=np.int64)).to(self._device)
        pixels = self.vqmodel.decode(codes_t).float().mean(dim=1)
        return ((pixels.clamp(-1.0, 1.0) + 1.0) / 2.0).cpu().numpy().astype(np.float32)
