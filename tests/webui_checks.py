"""Shared pieces of the WebUI-layer tests: the host fixture (both stand-ins), a job runner, probes of
identity state and of everything FreeCure could leave behind."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from webui_host import WebUIHost

EXTENSION_DIR = Path(__file__).resolve().parent.parent
FAKE_FACEID = Path(__file__).resolve().parent / "fake_extensions" / "faceid"
PROMPT = "a photo of ohwx woman with red hair <lora:ohwx:1>"
CURE = {"enabled": True, "attributes": "hair", "mask_source": "attention", "trigger_words": "ohwx",
        "class_word": "woman"}


def lora_active(host: WebUIHost) -> bool:
    """Whether the identity LoRA is in the weights the UNet runs with right now."""
    model = host.shared.sd_model
    if host.kind == "a1111":
        return bool(model.lora_patcher.active)
    return bool(model.forge_objects.unet.patches)


def attention_hooked(host: WebUIHost) -> bool:
    """Whether FreeCure's attention interception is on the UNet the sampler runs now."""
    if host.kind == "a1111":
        unet = host.shared.sd_model.model.diffusion_model
        return any("forward" in m.__dict__ for name, m in unet.named_modules() if name.endswith("attn1"))
    options = host.shared.sd_model.forge_objects.unet.model_options["transformer_options"]
    return bool(options.get("patches_replace", {}).get("attn1"))


def freecure(host: WebUIHost) -> Any:
    return host.script("FreeCure")


def image_tensor(image: Any) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(image).copy())


def run(host: WebUIHost, settings: dict | None, **fields: Any) -> Any:
    p = host.txt2img(**{"prompt": PROMPT, "steps": 4, "seed": 7, **fields})
    if settings is not None:
        host.set_script_args(p, freecure(host), [settings])
    return host.process(p)


class CallProbe:
    """Per denoiser call: which LoRA networks were applied and what identity-adapter hooks fired."""

    def __init__(self, host: WebUIHost) -> None:
        self.host = host
        self.calls: list[dict[str, Any]] = []
        self.adapter_calls = 0
        self.identity_adapter = True  # read by the fake Forge extension

    def on_cfg_denoiser(self, params: Any) -> None:
        self.calls.append({"lora": lora_active(self.host), "adapter_calls": self.adapter_calls})

    @contextlib.contextmanager
    def installed(self) -> Iterator[CallProbe]:
        callbacks = self.host.script_callbacks
        callbacks.on_cfg_denoiser(self.on_cfg_denoiser)
        try:
            yield self
        finally:
            callbacks.remove_callbacks_for_function(self.on_cfg_denoiser)


class FaceIdAdapter:
    """What the ControlNet extension's IP-Adapter FaceID looks like from an attn2 module; with
    ``identity=False`` a plain (style) IP-Adapter, which is no identity source."""

    def __init__(self, probe: CallProbe, identity: bool = True) -> None:
        self.probe = probe
        self.is_faceid = identity
        probe.identity_adapter = identity

    def hack(self) -> Any:
        adapter = self

        def patch_forward(module: Any, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
            adapter.probe.adapter_calls += 1
            return torch.zeros_like(q).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)

        return patch_forward


def plant_adapter(host: WebUIHost, adapter: FaceIdAdapter) -> list[Any]:
    """Hang the adapter on every attn2 the way the ControlNet extension does on A1111 (instance forward +
    hacks); on Forge, hand the probe to the fake FaceID extension, which patches each pass's UNet clone."""
    import torch.nn.functional as F

    if host.kind == "forge":
        host.shared.fake_faceid_probe = adapter.probe
        return []

    def attn_forward_hacked(self: Any, x: torch.Tensor, context: Any = None, **kwargs: Any) -> torch.Tensor:
        b, _tokens, inner = x.shape
        h = self.heads
        context = x if context is None else context
        q, k, v = (t.view(b, -1, h, inner // h).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, inner)
        for f in self.ipadapter_hacks:
            out = out + f(self, x, q)
        return self.to_out(out)

    modules = [m for name, m in host.shared.sd_model.model.diffusion_model.named_modules()
               if name.endswith("attn2")]
    for module in modules:
        module.ipadapter_hacks = [adapter.hack()]
        module.forward = attn_forward_hacked.__get__(module)
    return modules


def module_state(host: WebUIHost) -> dict[str, Any]:
    """Everything FreeCure could leave behind: attention modules, UNet patches, model objects, callbacks."""
    model = host.shared.sd_model
    if host.kind == "a1111":
        unet = model.model.diffusion_model
        state: dict[str, Any] = {}
    else:
        unet = model.forge_objects.unet.model.diffusion_model
        state = {f"{name} patches": {target: sorted(map(str, entries)) for target, entries in
                                     patcher.model_options["transformer_options"].get("patches_replace", {}).items()}
                 for name, patcher in (("unet", model.forge_objects.unet),
                                       ("after lora", model.forge_objects_after_applying_lora.unet))}
        state["forge objects"] = (model.forge_objects_original, model.forge_objects_after_applying_lora)
    state.update({name: (module.__dict__.get("forward"), tuple(sorted(k for k in module.__dict__ if k[0] != "_")))
                  for name, module in unet.named_modules() if name.endswith(("attn1", "attn2"))})
    callbacks = host.script_callbacks.callback_map
    state["callbacks"] = {name: [c.callback for c in entries] for name, entries in callbacks.items()}
    return state
