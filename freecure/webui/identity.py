"""Switching a job's identity sources off for the foundation pass, and back on exactly.

Sources: LoRA/LyCORIS and hypernetworks (the WebUI's extra networks, re-activated without them: calling each
network's ``activate`` directly fires no script hooks), and identity-adapter injections that the ControlNet
extension hangs on ``attn2`` modules (IP-Adapter FaceID, InstantID, PuLID). Embeddings and trigger words are
switched off through the foundation prompt (``freecure.identity``), not here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from freecure.identity import IDENTITY_TAG_KINDS


def _network_name(params: Any) -> str:
    items = getattr(params, "items", None) or getattr(params, "positional", None) or [""]
    return str(items[0])


def is_identity_adapter_hack(hack: Any) -> bool:
    """Whether an ``ipadapter_hacks`` function injects a face identity (FaceID, InstantID, portrait, PuLID)
    rather than an image style; the owner adapter is the ``self`` the patch function closes over."""
    for cell in getattr(hack, "__closure__", None) or ():
        owner = cell.cell_contents
        if any(getattr(owner, flag, False) is True for flag in ("is_faceid", "is_instantid", "is_portrait")):
            return True
        if "pulid" in type(owner).__name__.lower():
            return True
    return False


class IdentitySwitch:
    """Knows a job's identity sources and switches them off for the duration of ``switched(on=False)``."""

    def __init__(self, p: Any, *, kinds: Iterable[str], keep_networks: Iterable[str], is_hires: bool,
                 unet: Any) -> None:
        self.p = p
        self.kinds = set(kinds)
        self.keep = {name.lower() for name in keep_networks}
        data = getattr(p, "hr_extra_network_data" if is_hires else "extra_network_data", None) or {}
        self.network_data: dict[str, list[Any]] = {name: list(params) for name, params in data.items()}
        self.unet = unet

    # -- what would be switched off ---------------------------------------------------------------------------
    def _identity_network_names(self) -> set[str]:
        return {name for kind in self.kinds for name in IDENTITY_TAG_KINDS.get(kind, ())}

    def _networks_by_object(self) -> list[tuple[Any, list[Any], list[Any]]]:
        """(network, all params, params kept in the foundation pass), one entry per registered network object
        (LoRA is registered under 'lora' and the alias 'lyco': both tags go to one activate call)."""
        from modules import extra_networks

        identity_names = self._identity_network_names()
        grouped: dict[int, tuple[Any, list[Any], list[Any]]] = {}
        for name, params_list in self.network_data.items():
            if name not in identity_names:
                continue
            network = extra_networks.extra_network_registry.get(name)
            if network is None:
                network = getattr(extra_networks, "extra_network_aliases", {}).get(name)
            if network is None:
                continue
            entry = grouped.setdefault(id(network), (network, [], []))
            for params in params_list:
                entry[1].append(params)
                if _network_name(params).lower() in self.keep:
                    entry[2].append(params)
        return list(grouped.values())

    def _adapter_modules(self) -> list[Any]:
        if "adapter" not in self.kinds or self.unet is None:
            return []
        return [m for m in self.unet.modules() if any(is_identity_adapter_hack(h)
                                                      for h in getattr(m, "ipadapter_hacks", None) or ())]

    def sources(self) -> list[str]:
        """What the foundation pass switches off, for the infotext: 'lora:name', 'adapter:3 layers', ..."""
        found = []
        for name, params_list in self.network_data.items():
            if name in self._identity_network_names():
                found += [f"{name}:{_network_name(params)}" for params in params_list
                          if _network_name(params).lower() not in self.keep]
        adapters = self._adapter_modules()
        if adapters:
            found.append(f"adapter:{len(adapters)} layers")
        return found

    # -- switching ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def switched(self, *, on: bool) -> Iterator[None]:
        if on:
            yield
            return
        networks = self._networks_by_object()
        saved_hacks = [(module, module.ipadapter_hacks) for module in self._adapter_modules()]
        try:
            for network, _all_params, kept in networks:
                network.activate(self.p, kept)
            for module, hacks in saved_hacks:
                module.ipadapter_hacks = [h for h in hacks if not is_identity_adapter_hack(h)]
            yield
        finally:
            # Back on in `finally`: the WebUI swallows exceptions in script hooks, and an identity left off would
            # silently give an identity-less main image.
            for module, hacks in saved_hacks:
                module.ipadapter_hacks = hacks
            for network, all_params, _kept in networks:
                network.activate(self.p, all_params)
