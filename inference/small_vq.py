"""A small convolutional VQ-VAE: the demo model's image tokenizer.

Emu3's VQ-VAE (Conv3d over 4 repeated frames) takes seconds per training step
on a CPU, far too slow to train a demo tokenizer here. This one has the same
interface (8x downsampling, a discrete codebook, grayscale in and out) at a
fraction of the cost, and exports to ONNX the same way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from inference.vision_tokenizer import decode_with, encode_with

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class SmallVQConfig:
    codebook_size: int = 512
    embed_dim: int = 16
    channels: int = 64
    downsample_steps: int = 3
    commitment: float = 0.25

    @property
    def downsample(self) -> int:
        return 2 ** self.downsample_steps


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class SmallVQVAE(nn.Module):
    """Conv encoder -> nearest codebook vector -> conv decoder, images in [0, 1]."""

    def __init__(self, config: SmallVQConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        # Narrow at full resolution, wide at the code grid: most of the compute is in the full-size layers.
        widths = [max(ch >> (config.downsample_steps - i), 8) for i in range(config.downsample_steps)] + [ch]
        down: list[nn.Module] = [nn.Conv2d(1, widths[0], 3, padding=1)]
        for i in range(config.downsample_steps):
            down += [nn.ReLU(), nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1)]
        self.encoder = nn.Sequential(*down, _Residual(ch), _Residual(ch), nn.ReLU(), nn.Conv2d(ch, config.embed_dim, 1))
        up: list[nn.Module] = [nn.Conv2d(config.embed_dim, ch, 3, padding=1), _Residual(ch), _Residual(ch)]
        for i in reversed(range(config.downsample_steps)):
            up += [nn.ReLU(), nn.ConvTranspose2d(widths[i + 1], widths[i], 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*up, nn.ReLU(), nn.Conv2d(widths[0], 1, 3, padding=1))
        self.codebook = nn.Embedding(config.codebook_size, config.embed_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / config.codebook_size, 1.0 / config.codebook_size)

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1, H, W] in [0, 1] -> continuous latents [B, D, h, w]."""
        return self.encoder(images * 2.0 - 1.0)

    def quantize(self, latents: torch.Tensor) -> torch.Tensor:
        """Nearest codebook entry for each latent vector -> codes [B, h, w]."""
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        book = self.codebook.weight
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]
        return distances.argmin(1).view(latents.shape[0], latents.shape[2], latents.shape[3])

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] -> images [B, 1, H, W] in [0, 1]."""
        quantized = self.codebook(codes).permute(0, 3, 1, 2)
        return (self.decoder(quantized) + 1.0) / 2.0

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, VQ loss, codes), with the straight-through estimator."""
        latents = self.encode_latents(images)
        codes = self.quantize(latents)
        quantized = self.codebook(codes).permute(0, 3, 1, 2)
        vq_loss = F.mse_loss(quantized, latents.detach()) + self.config.commitment * F.mse_loss(
            latents, quantized.detach())
        straight = latents + (quantized - latents).detach()
        return (self.decoder(straight) + 1.0) / 2.0, vq_loss, codes

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / WEIGHTS_NAME)

    @classmethod
    def load(cls, directory: Path) -> SmallVQVAE:
        config = SmallVQConfig(**json.loads((directory / CONFIG_NAME).read_text()))
        model = cls(config)
        model.load_state_dict(load_file(directory / WEIGHTS_NAME))
        return model.eval()


class SmallVisionTokenizer:
    """:class:`~inference.vision_tokenizer.VisionTokenizer` over a :class:`SmallVQVAE`."""

    def __init__(self, model: SmallVQVAE) -> None:
        self.module = model
        self.downsample = model.config.downsample
        self.codebook_size = model.config.codebook_size

    def encode_tensor(self, images: torch.Tensor) -> torch.Tensor:
        return self.module.quantize(self.module.encode_latents(images[:, None]))

    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        return self.module.decode_codes(codes)[:, 0]

    def encode(self, images: np.ndarray) -> np.ndarray:
        return encode_with(self, images)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return decode_with(self, codes)
