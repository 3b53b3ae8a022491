"""A LoRA-like identity: a deterministic low-rank delta per (network name, weight), applied to chosen
``nn.Linear`` weights and removed bit-exactly from a backup of the original weights."""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import torch
from torch import nn

RANK = 2


class LowRankPatcher:
    """Keeps the original weights of ``targets`` and applies ``sum_i w_i * B_i A_i`` for active networks."""

    def __init__(self, targets: dict[str, nn.Linear]):
        self.targets = targets
        self.backup: dict[str, torch.Tensor] = {}
        self.active: tuple[tuple[str, float], ...] = ()

    @staticmethod
    def factors(network: str, module_name: str, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(up, down) of the network's delta on one target: the ``lora_up`` and ``lora_down`` weights."""
        seed = zlib.crc32(f"{network}/{module_name}".encode())
        generator = torch.Generator().manual_seed(seed)
        out_features, in_features = weight.shape
        up = torch.randn(out_features, RANK, generator=generator) * 0.3
        down = torch.randn(RANK, in_features, generator=generator) * 0.3
        return up.to(weight.dtype), down.to(weight.dtype)

    def delta(self, network: str, module_name: str, weight: torch.Tensor) -> torch.Tensor:
        up, down = self.factors(network, module_name, weight)
        return up @ down

    @torch.no_grad()
    def set_networks(self, networks: Iterable[tuple[str, float]]) -> None:
        networks = tuple(networks)
        if networks == self.active:
            return
        self.restore()
        for name, module in self.targets.items():
            if not networks:
                break
            self.backup[name] = module.weight.detach().clone()
            for network, multiplier in networks:
                module.weight += multiplier * self.delta(network, name, module.weight)
        self.active = networks

    @torch.no_grad()
    def restore(self) -> None:
        for name, original in self.backup.items():
            self.targets[name].weight.copy_(original)
        self.backup.clear()
        self.active = ()
