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


class ImageCodec(Protocol):
    """Encode grayscale images to VQ codes and back, in NumPy: what the pipeline needs of any image tokenizer.

    The torch tokenizers below and the ONNX export's (``inference.onnx_bundle``, no torch) both are one.
    """

    @property
    def downsample(self) -> int: ...

    @property
    def codebook_size(self) -> int: ...

    def encode(self, images: np.ndarray) -> np.ndarray:
        """float32 [B, H, W] in [0, 1] -> int64 codes [B, H/downsample, W/downsample]."""
        ...

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int64 codes [B, h, w] -> float32 [B, h*downsample, w*downsample] in [0, 1]."""
        ...


class VisionTokenizer(ImageCodec, Protocol):
    """An :class:`ImageCodec` on a torch module.

    ``encode_tensor`` and ``decode_tensor`` are the pure-torch forms that the
    ONNX export traces; ``encode`` and ``decode`` are the NumPy forms inference uses.
    """

    @property
    def module(self) -> torch.nn.Module: ...

    def encode_tensor(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor: ...


class Emu3VisionTokenizer:
    """Emu3's VQ-VAE (``Emu3VQVAE``) as a :class:`VisionTokenizer`."""

    def __init__(self, vqmodel: Emu3VQVAE) -> None:
        self.module = vqmodel
        self.downsample = 2 ** (len(vqmodel.config.channel_multiplier) - 1)
        self.codebook_size = int(vqmodel.config.codebook_size)

    def encode_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """[B, H, W] in [0, 1] -> codes [B, h, w]: ``Emu3VQVAE.encode`` without its per-image size list."""
        vq = self.module
        pixels = (images * 2.0 - 1.0).to(vq.dtype)[:, None].expand(-1, 3, -1, -1)
        frames = pixels[:, None].expand(-1, vq.config.temporal_downsample_factor, -1, -1, -1)
        hidden = vq.encoder(frames.contiguous())
        hidden = vq.quant_conv(hidden.permute(0, 2, 1, 3, 4)).permute(0, 2, 1, 3, 4)
        return vq.quantize(hidden)[:, 0]

    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        pixels = self.module.decode(codes).float().mean(dim=1)
        return (pixels.clamp(-1.0, 1.0) + 1.0) / 2.0

    def encode(self, images: np.ndarray) -> np.ndarray:
        return encode_with(self, images)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return decode_with(self, codes)


def _device(tokenizer: VisionTokenizer) -> torch.device:
    return next(tokenizer.module.parameters()).device


@torch.inference_mode()
def encode_with(tokenizer: VisionTokenizer, images: np.ndarray) -> np.ndarray:
    """NumPy front of ``encode_tensor``, with the shape checks every tokenizer needs."""
    images = np.asarray(images, dtype=np.float32)
    factor = tokenizer.downsample
    if images.ndim != 3 or images.shape[1] % factor or images.shape[2] % factor:
        raise ValueError(f"images must be [B, H, W] with H and W multiples of {factor}")
    codes = tokenizer.encode_tensor(torch.from_numpy(images).to(_device(tokenizer)))
    return codes.cpu().numpy().astype(np.int64)


@torch.inference_mode()
def decode_with(tokenizer: VisionTokenizer, codes: np.ndarray) -> np.ndarray:
    tensor = torch.from_numpy(np.asarray(codes, dtype=np.int64)).to(_device(tokenizer))
    return tokenizer.decode_tensor(tensor).clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
