"""A fixed linear "VAE": 8x8 pixel patches <-> 4 latent channels, decoded into [-1, 1] by tanh."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ToyVAE(nn.Module):
    def __init__(self, latent_channels: int = 4, seed: int = 7):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.decoder = nn.Conv2d(latent_channels, 3 * 64, 1)
        self.encoder = nn.Conv2d(3 * 64, latent_channels, 1)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.pixel_shuffle(self.decoder(z), 8))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(F.pixel_unshuffle(x, 8))
