"""The built-in Lora extension's ``networks`` module where FreeCure reads it (A1111 1.10.1
``extensions-builtin/Lora``): ``loaded_networks``, the ``network.Network`` objects ``load_networks`` makes
for the job's ``<lora:...>`` tags, each with its ``modules`` (layer name -> ``network_lora.NetworkModuleLora``:
``sd_key``, ``sd_module``, ``up_model``, ``down_model``, ``mid_model``, ``dora_scale``, ``bias``,
``multiplier()``, ``calc_scale()``, and ``forward(x, y)``, the functional-mode delta
``y + up(down(x)) * multiplier() * calc_scale()``). The weights are merged as the real module merges them
(``network_apply_weights``), eagerly here, by the stand-in model's ``lora_patcher`` from the same factors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from modules import shared
from torch import nn


class Network:  # network.py
    def __init__(self, name: str, te_multiplier: float, unet_multiplier: float) -> None:
        self.name = name
        self.te_multiplier = te_multiplier
        self.unet_multiplier = unet_multiplier
        self.dyn_dim = None
        self.modules: dict[str, NetworkModuleLora] = {}


class NetworkModuleLora:  # network.py NetworkModule + network_lora.py NetworkModuleLora
    def __init__(self, net: Network, sd_key: str, sd_module: nn.Linear, up: torch.Tensor, down: torch.Tensor) -> None:
        self.network = net
        self.sd_key = sd_key
        self.sd_module = sd_module
        self.up_model = nn.Linear(up.shape[1], up.shape[0], bias=False)
        self.up_model.weight.data = up.clone()
        self.down_model = nn.Linear(down.shape[1], down.shape[0], bias=False)
        self.down_model.weight.data = down.clone()
        self.mid_model = None
        self.dora_scale = None
        self.bias = None
        self.dim = down.shape[0]
        self.alpha = None
        self.scale = None

    def multiplier(self) -> float:
        if "transformer" in self.sd_key[:20]:
            return self.network.te_multiplier
        return self.network.unet_multiplier

    def calc_scale(self) -> float:
        if self.scale is not None:
            return self.scale
        if self.dim is not None and self.alpha is not None:
            return self.alpha / self.dim
        return 1.0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + self.up_model(self.down_model(x)) * self.multiplier() * self.calc_scale()


loaded_networks: list[Network] = []


def load_networks(names: Sequence[str], te_multipliers: Sequence[float] | None = None,
                  unet_multipliers: Sequence[float] | None = None, dyn_dims: Sequence[int] | None = None) -> None:
    te_multipliers = list(te_multipliers or [1.0] * len(names))
    unet_multipliers = list(unet_multipliers or [1.0] * len(names))
    loaded_networks.clear()
    patcher = shared.sd_model.lora_patcher
    patcher.restore()  # the factors are drawn from the original weights' shapes
    for name, te, unet in zip(names, te_multipliers, unet_multipliers, strict=True):
        net = Network(name, te, unet)
        for target, module in patcher.targets.items():
            sd_key = ("transformer_" if target.startswith("text_encoder.") else "") + target.replace(".", "_")
            up, down = patcher.factors(name, target, module.weight)
            net.modules[sd_key] = NetworkModuleLora(net, sd_key, module, up, down)
        loaded_networks.append(net)
    patcher.set_networks([(net.name, net.unet_multiplier) for net in loaded_networks])
