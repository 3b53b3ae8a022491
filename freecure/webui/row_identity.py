"""One-pass mode with a LoRA identity on A1111: the identity networks taken off the foundation rows only.

A1111's Lora extension (``extensions-builtin/Lora``) merges its networks into the weights, for every row of the
batch. In one-pass mode the merged weights stay, and at each UNet module an identity network touches, the
foundation rows get that network's delta taken off again, computed as the extension computes it in its
functional mode (``NetworkModuleLora.forward(x, y) = y + up(down(x)) * multiplier() * calc_scale()``): low
rank, so the foundation rows cost little more than the personalized ones. That is exact for plain LoRA and
LoCon modules; a module whose merged delta is not its functional one (DoRA, a Tucker ``mid`` factor, a bias
delta, the other LyCORIS kinds) makes one-pass mode unavailable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

RowsOf = Callable[[int], Sequence[int]]
"""The foundation rows among the next ``batch`` rows that reach the UNet in the current denoiser call."""


def host_networks(lora_network: Any) -> Any:
    """The module the host's LoRA extra network loads networks with: ``extensions-builtin/Lora/networks.py``,
    which ``extra_networks_lora.py`` imports as ``networks``; None when it is not there."""
    activate = getattr(type(lora_network), "activate", None)
    module = getattr(activate, "__globals__", {}).get("networks")
    return module if isinstance(getattr(module, "loaded_networks", None), list) else None


def _exact_in_rows(module: Any) -> bool:
    """Whether the module's functional delta is the one merged into the weights."""
    return (type(module).__name__ == "NetworkModuleLora" and getattr(module, "mid_model", None) is None
            and getattr(module, "dora_scale", None) is None and getattr(module, "bias", None) is None)


class RowLora:
    """The identity networks' modules inside the UNet, switched off per row while ``installed``."""

    def __init__(self, modules: Sequence[Any]) -> None:
        self.modules = list(modules)

    @classmethod
    def find(cls, lora_network: Any, names: Sequence[str], unet: torch.nn.Module) -> RowLora | str:
        """The modules of the loaded networks called ``names`` (the identity's ``<lora:...>`` tags), or why
        they cannot be switched per row."""
        networks = host_networks(lora_network)
        if networks is None:
            return "the Lora extension's loaded networks were not found"
        loaded = {net.name.lower(): net for net in networks.loaded_networks}
        in_unet = {id(module) for module in unet.modules()}
        modules = []
        for name in names:
            net = loaded.get(name.lower())
            if net is None:
                return f"lora:{name} is not among the loaded networks"
            for module in net.modules.values():
                if id(getattr(module, "sd_module", None)) not in in_unet:
                    continue  # the text encoder's: the foundation's prompts are encoded with the LoRA off
                if not _exact_in_rows(module):
                    return f"lora:{name} has {type(module).__name__} modules, which are switched for the whole batch"
                modules.append(module)
        return cls(modules)

    @contextlib.contextmanager
    def installed(self, unet: torch.nn.Module, rows_of: RowsOf) -> Iterator[None]:
        """Forward hooks on the networks' UNet modules taking the delta off the foundation rows of each UNet
        call (``rows_of``, asked once per call by a pre-hook on the UNet)."""
        current: list[torch.Tensor | None] = [None]

        def before_unet(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0] if args else None
            rows = rows_of(x.shape[0]) if isinstance(x, torch.Tensor) else ()
            current[0] = torch.tensor(list(rows), dtype=torch.long, device=x.device) if rows else None

        def without_identity(network_module: Any) -> Callable[..., torch.Tensor | None]:
            def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
                rows = current[0]
                if rows is None:
                    return
                rows_in = inputs[0].index_select(0, rows)
                zero = torch.zeros_like(output.index_select(0, rows))
                output.index_add_(0, rows, network_module.forward(rows_in, zero), alpha=-1)

            return hook

        handles = [unet.register_forward_pre_hook(before_unet)]
        try:
            for module in self.modules:
                handles.append(module.sd_module.register_forward_hook(without_identity(module)))
            yield
        finally:
            for handle in handles:
                handle.remove()
