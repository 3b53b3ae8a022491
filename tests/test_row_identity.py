"""``RowLora``: the identity LoRA taken off chosen rows, as A1111's Lora extension computes a network module's
delta in its functional mode; and the modules it refuses, whose merged delta is not that one."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from freecure.webui.row_identity import RowLora

networks = types.SimpleNamespace(loaded_networks=[])  # what extra_networks_lora.py imports as ``networks``


class NetworkModuleLora:
    """network_lora.py's module: y + up(down(x)) * multiplier * scale (A1111 1.10.1)."""

    def __init__(self, sd_module: nn.Linear, rank: int = 2, **extra) -> None:
        generator = torch.Generator().manual_seed(sd_module.in_features)
        self.sd_module = sd_module
        self.up = torch.randn(sd_module.out_features, rank, generator=generator)
        self.down = torch.randn(rank, sd_module.in_features, generator=generator)
        self.mid_model, self.dora_scale, self.bias = None, None, None
        for name, value in extra.items():
            setattr(self, name, value)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + x @ self.down.T @ self.up.T * 0.5


class ExtraNetworkLora:
    def activate(self, p, params_list):  # its globals hold ``networks``, as the real one's
        return networks


def merged_model(modules_of) -> tuple[nn.Sequential, list]:
    torch.manual_seed(0)
    unet = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    modules = [modules_of(layer) for layer in unet]
    with torch.no_grad():
        for module in modules:
            module.sd_module.weight += 0.5 * module.up @ module.down
    net = types.SimpleNamespace(name="OHWX", modules={str(i): m for i, m in enumerate(modules)})
    networks.loaded_networks[:] = [net]
    return unet, modules


def test_the_lora_comes_off_the_chosen_rows_only():
    unet, modules = merged_model(NetworkModuleLora)
    plain = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    plain.load_state_dict(unet.state_dict())
    with torch.no_grad():
        for layer, module in zip(plain, modules, strict=True):
            layer.weight -= 0.5 * module.up @ module.down
    x = torch.randn(4, 3, 6)
    row_lora = RowLora.find(ExtraNetworkLora(), ["ohwx"], unet)
    assert isinstance(row_lora, RowLora) and len(row_lora.modules) == 2
    with torch.no_grad(), row_lora.installed(unet, lambda batch: [1, 3]):
        out = unet(x)
    with torch.no_grad():
        torch.testing.assert_close(out[[0, 2]], unet(x[[0, 2]]))  # identity on
        torch.testing.assert_close(out[[1, 3]], plain(x[[1, 3]]), rtol=1e-5, atol=1e-5)  # identity off
    assert all(not layer._forward_hooks for layer in unet) and not unet._forward_pre_hooks


@pytest.mark.parametrize(("extra", "kind"), [({"dora_scale": torch.ones(6, 1)}, "dora"),
                                             ({"mid_model": nn.Identity()}, "mid")])
def test_a_module_whose_merged_delta_is_not_its_functional_one_is_refused(extra, kind):
    unet, _ = merged_model(lambda layer: NetworkModuleLora(layer, **extra))
    reason = RowLora.find(ExtraNetworkLora(), ["ohwx"], unet)
    assert reason == "lora:ohwx has NetworkModuleLora modules, which are switched for the whole batch", kind


def test_a_network_that_is_not_loaded_is_refused():
    unet, _ = merged_model(NetworkModuleLora)
    assert RowLora.find(ExtraNetworkLora(), ["other"], unet) == "lora:other is not among the loaded networks"
    assert RowLora.find(object(), ["ohwx"], unet) == "the Lora extension's loaded networks were not found"
