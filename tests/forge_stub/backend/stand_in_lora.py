"""Forge's built-in LoRA extra network for the stand-in: ``activate`` clones ``forge_objects_original``'s
UNet and CLIP patchers, adds deterministic low-rank weight patches, and stores the result as
``forge_objects`` and ``forge_objects_after_applying_lora`` (as ``networks.load_networks`` does); the
weights change only when a patcher is loaded for sampling or encoding. An unchanged LoRA set
reloads nothing (``current_lora_hash``), so ``forge_objects`` is left as it is."""

from __future__ import annotations

from modules import extra_networks, shared
from stand_in.lora import LowRankPatcher


class ExtraNetworkLora(extra_networks.ExtraNetwork):
    def __init__(self):
        super().__init__("lora")

    def activate(self, p, params_list):
        networks = []
        for params in params_list:
            if not params.positional:
                raise ValueError(f"<lora:...> needs a name, got {params.items!r}")
            networks.append((params.positional[0], float(params.positional[1]) if len(params.positional) > 1 else 1.0))
        if networks:
            p.extra_generation_params["Lora hashes"] = ", ".join(f"{name}: stand-in" for name, _ in networks)
        model = shared.sd_model
        if model.current_lora_hash == str(networks):
            return  # as networks.load_networks: nothing is reloaded while the LoRA set is unchanged
        model.current_lora_hash = str(networks)
        original = model.forge_objects_original
        unet = original.unet.clone()
        clip = original.clip.clone()
        for patcher in (unet, clip.patcher):
            deltas = LowRankPatcher(patcher.weight_targets)
            for name, weight in networks:
                patcher.add_patches({key: deltas.delta(name, key, target.weight)
                                     for key, target in patcher.weight_targets.items()}, weight)
        model.forge_objects = original.shallow_copy()
        model.forge_objects.unet = unet
        model.forge_objects.clip = clip
        model.forge_objects_after_applying_lora = model.forge_objects.shallow_copy()

    def deactivate(self, p):
        pass
