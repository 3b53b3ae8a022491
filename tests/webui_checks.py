"""Shared pieces of the WebUI-layer tests: the host fixture (both stand-ins), a job runner, probes of
identity state and of everything FreeCure could leave behind."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from webui_host import WebUIHost

EXTENSION_DIR = Path(__file__).resolve().parent.parent
# Other extensions injecting adapters the way the real ones do: sd-webui-controlnet on A1111, Forge's
# built-in IP-Adapter on Forge.
FAKE_ADAPTERS = {"a1111": Path(__file__).resolve().parent / "fake_extensions" / "controlnet",
                 "forge": Path(__file__).resolve().parent / "fake_extensions" / "forge_ipadapter"}
PROMPT = "a photo of ohwx woman with red hair <lora:ohwx:1>"
CURE = {"enabled": True, "attributes": "hair", "mask_source": "attention", "trigger_words": "ohwx",
        "class_word": "woman"}


def lora_active(host: WebUIHost) -> bool:
    """Whether the identity LoRA is in the weights the UNet runs with right now (on Forge: the LoRA set the
    model's ``LoraLoader`` merged when a patcher was last loaded)."""
    model = host.shared.sd_model
    if host.kind == "a1111":
        return bool(model.lora_patcher.active)
    return model.forge_objects.unet.lora_loader.loaded_hash != str([])


def lora_in_place(host: WebUIHost) -> bool:
    """Whether the patcher the next sampling loads carries the identity LoRA (A1111: the weights)."""
    model = host.shared.sd_model
    if host.kind == "a1111":
        return bool(model.lora_patcher.active)
    return bool(model.forge_objects.unet.lora_patches)


def attention_hooked(host: WebUIHost) -> bool:
    """Whether FreeCure's attention interception is on the UNet the sampler runs now."""
    if host.kind == "a1111":
        unet = host.shared.sd_model.model.diffusion_model
        return any("forward" in m.__dict__ for name, m in unet.named_modules() if name.endswith("attn1"))
    options = host.shared.sd_model.forge_objects.unet.model_options["transformer_options"]
    return bool(options.get("patches_replace", {}).get("attn1"))


def freecure(host: WebUIHost, tab: str = "txt2img") -> Any:
    """FreeCure's script object in the txt2img or the img2img tab's runner."""
    runner = host.scripts.scripts_img2img if tab == "img2img" else host.runner
    return runner.title_map["freecure"]


def image_tensor(image: Any) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(image).copy())


def run(host: WebUIHost, settings: dict | None, **fields: Any) -> Any:
    p = host.txt2img(**{"prompt": PROMPT, "steps": 4, "seed": 7, **fields})
    if settings is not None:
        host.set_script_args(p, freecure(host), [settings])
    return host.process(p)


def keep_samples(p: Any) -> list[torch.Tensor]:
    """What ``p.sample`` returns (after an inpaint job's mask blend), per batch."""
    kept: list[torch.Tensor] = []
    sample = p.sample

    def keeping(*args: Any, **kwargs: Any) -> Any:
        samples = sample(*args, **kwargs)
        kept.append(samples.clone())
        return samples

    p.sample = keeping
    return kept


def init_image(width: int = 64, height: int = 64, seed: int = 0) -> Any:
    """A deterministic RGB init image for img2img jobs."""
    import numpy as np
    from PIL import Image

    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Any:
    """An inpaint mask as the UI sends it: white inside ``box`` (x1, y1, x2, y2), black elsewhere."""
    from PIL import Image

    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def img2img_job(host: WebUIHost, settings: dict | None, image: Any, **fields: Any) -> Any:
    """An img2img (inpaint with ``mask=``) job of the img2img tab, with FreeCure's ``settings`` if given."""
    p = host.img2img(image, **{"prompt": PROMPT, "steps": 4, "seed": 7, **fields})
    if settings is not None:
        host.set_script_args(p, freecure(host, "img2img"), [settings])
    return p


def run_img2img(host: WebUIHost, settings: dict | None, image: Any, **fields: Any) -> Any:
    return host.process(img2img_job(host, settings, image, **fields))


class CallProbe:
    """Per denoiser call: which LoRA networks were applied and how often each identity or style adapter unit
    ran so far. ``units`` are the adapter units the fake ControlNet (A1111) or Forge IP-Adapter extension
    builds for a job while the probe is installed ('faceid', 'faceid_plus_v2', 'instantid', 'pulid', 'style')."""

    def __init__(self, host: WebUIHost, units: tuple[str, ...] = ()) -> None:
        self.host = host
        self.units = list(units)
        self.calls: list[dict[str, Any]] = []
        self.adapter_calls: collections.Counter[str] = collections.Counter()

    def on_cfg_denoiser(self, params: Any) -> None:
        self.calls.append({"lora": lora_active(self.host), "adapter_calls": collections.Counter(self.adapter_calls),
                           "controlnet_modifiers": controlnet_modifiers(self.host)})

    @contextlib.contextmanager
    def installed(self) -> Iterator[CallProbe]:
        callbacks = self.host.script_callbacks
        callbacks.on_cfg_denoiser(self.on_cfg_denoiser)
        self.host.shared.fake_adapter_probe = self
        try:
            yield self
        finally:
            del self.host.shared.fake_adapter_probe
            callbacks.remove_callbacks_for_function(self.on_cfg_denoiser)


def controlnet_modifiers(host: WebUIHost) -> int:
    """On Forge, how many ControlNet conditioning modifiers the UNet sampled now hands its ControlNets."""
    if host.kind == "a1111":
        return 0
    options = host.shared.sd_model.forge_objects.unet.model_options["transformer_options"]
    return len(options.get("controlnet_conditioning_modifiers", []))


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
