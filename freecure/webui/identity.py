"""Switching a job's identity sources off for the foundation pass, and back on exactly.

Sources: LoRA/LyCORIS and hypernetworks (the WebUI's extra networks, re-activated without them: calling each
network's ``activate`` directly fires no script hooks), and identity-adapter injections that the ControlNet
extension hangs on ``attn2`` modules (IP-Adapter FaceID, InstantID, PuLID) and InstantID's ControlNet unit.
Embeddings and trigger words are switched off through the foundation prompt (``freecure.identity``), not here.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Iterator
from typing import Any

from freecure.attention import forward_beneath
from freecure.identity import IDENTITY_TAG_KINDS


def _network_name(params: Any) -> str:
    items = getattr(params, "items", None) or getattr(params, "positional", None) or [""]
    return str(items[0])


def _closure_variable(function: Any, name: str) -> Any:
    """The value a function closes over under ``name`` (looked up by name, not by cell order), seen through
    decorators such as ``torch.no_grad()`` that keep the decorated function in ``__wrapped__``."""
    function = inspect.unwrap(function)
    code, closure = getattr(function, "__code__", None), getattr(function, "__closure__", None) or ()
    if code is None or name not in code.co_freevars:
        return None
    return closure[code.co_freevars.index(name)].cell_contents


def adapter_identity(hack: Any) -> str | None:
    """The face identity an ``ipadapter_hacks`` entry injects, None for a style IP-Adapter.

    sd-webui-controlnet builds each entry in ``PlugableIPAdapter.patch_forward`` as a ``torch.no_grad``
    closure over ``self``, the ``PlugableIPAdapter``; its ``ipadapter`` (``IPAdapterModel``) stores the kind of
    model as ``is_faceid`` (FaceID, Plus, Plus v2, portrait), ``is_instantid`` and ``is_pulid``
    (``scripts/ipadapter/plugable_ipadapter.py``, ``ipadapter_model.py``)."""
    model = getattr(_closure_variable(hack, "self"), "ipadapter", None)
    if getattr(model, "is_pulid", False) is True:
        return "PuLID"
    if getattr(model, "is_instantid", False) is True:
        return "InstantID"
    if getattr(model, "is_faceid", False) is True:
        plus = " Plus" if getattr(model, "is_plus", False) is True else ""
        return f"IP-Adapter FaceID{plus}{' v2' if plus and getattr(model, 'is_v2', False) is True else ''}"
    return None


def hacked_from(module: Any, hacks: Iterable[Any]) -> Any:
    """The forward a module ran before ControlNet put ``attn_forward_hacked`` on it: ControlNet keeps it in
    ``all_hacks[module]`` (module-level in ``plugable_ipadapter.py``, where the module's ``hacks`` are defined),
    to put it back after the job. None when the hacks do not lead there."""
    for hack in hacks:
        saved = getattr(inspect.unwrap(hack), "__globals__", {}).get("all_hacks")
        if isinstance(saved, dict) and module in saved:
            return saved[module]
    return None


def is_identity_control(param: Any) -> bool:
    """Whether a ControlNet unit's ``ControlParams`` is InstantID's ControlNet (IdentityNet): its context is
    the face embedding of the InstantID IP-Adapter unit (``control_context_override``), so it is identity."""
    return getattr(getattr(param, "control_model_type", None), "name", None) == "InstantID"


def controlnet_hooks(p: Any) -> list[Any]:
    """The ``UnetHook`` of each ControlNet script of this job: ``Script.latest_network``, whose
    ``control_params`` its hooked UNet forward reads on every call (``scripts/hook.py``)."""
    scripts = getattr(getattr(p, "scripts", None), "alwayson_scripts", None) or ()
    hooks = [getattr(script, "latest_network", None) for script in scripts]
    return [hook for hook in hooks if getattr(hook, "control_params", None)]


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
        return [module for module in self.unet.modules()
                if any(adapter_identity(hack) for hack in getattr(module, "ipadapter_hacks", None) or ())]

    def _identity_controls(self) -> list[tuple[Any, list[Any]]]:
        """(ControlNet hook, its control params) for each hook that runs an InstantID ControlNet."""
        if "adapter" not in self.kinds:
            return []
        return [(hook, list(hook.control_params)) for hook in controlnet_hooks(self.p)
                if any(is_identity_control(param) for param in hook.control_params)]

    def sources(self) -> list[str]:
        """What the foundation pass switches off, for the infotext: 'lora:name', 'adapter:InstantID', ..."""
        found = []
        for name, params_list in self.network_data.items():
            if name in self._identity_network_names():
                found += [f"{name}:{_network_name(params)}" for params in params_list
                          if _network_name(params).lower() not in self.keep]
        adapters = [adapter_identity(h) for m in self._adapter_modules() for h in m.ipadapter_hacks]
        found += [f"adapter:{kind}" for kind in dict.fromkeys(kind for kind in adapters if kind)]
        if self._identity_controls():
            found.append("adapter:InstantID ControlNet")
        return found

    # -- switching ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def switched(self, *, on: bool) -> Iterator[None]:
        if on:
            yield
            return
        networks = self._networks_by_object()
        saved_hacks = [(module, module.ipadapter_hacks) for module in self._adapter_modules()]
        saved_controls = self._identity_controls()
        try:
            for network, _all_params, kept in networks:
                network.activate(self.p, kept)
            with contextlib.ExitStack() as unhacked:
                for module, hacks in saved_hacks:
                    module.ipadapter_hacks = [h for h in hacks if not adapter_identity(h)]
                    original = hacked_from(module, hacks) if not module.ipadapter_hacks else None
                    if original is not None:
                        # With nothing left to add, the hacked forward is plain SDPA, not the WebUI's own
                        # attention: the job without the unit runs the forward ControlNet replaced.
                        unhacked.enter_context(forward_beneath(module, original))
                for hook, params in saved_controls:
                    hook.control_params = [param for param in params if not is_identity_control(param)]
                yield
        finally:
            # Back on in `finally`: the WebUI swallows exceptions in script hooks, and an identity left off would
            # silently give an identity-less main image.
            for hook, params in saved_controls:
                hook.control_params = params
            for module, hacks in saved_hacks:
                module.ipadapter_hacks = hacks
            for network, all_params, _kept in networks:
                network.activate(self.p, all_params)
