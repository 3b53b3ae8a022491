"""Forge's built-in LoRA extra network for the stand-in, as ``extensions-builtin/sd_forge_lora/networks.py``
``load_networks`` (Forge 2 dfdcbab6): an unchanged LoRA set reloads nothing (``current_lora_hash``), so
``forge_objects_after_applying_lora`` is left as it is; otherwise, from ``forge_objects_original``, each network is
added in turn to a clone of the UNet and CLIP patchers (``load_lora_for_models``) and the result becomes
``forge_objects`` and ``forge_objects_after_applying_lora``. The weights change only when a patcher is loaded
(``memory_management.load_models_gpu``). The stand-in's networks are deterministic low-rank deltas on the
attention projections (UNet) and the encoder projection (CLIP)."""

from __future__ import annotations

from modules import extra_networks, shared
from stand_in.lora import LowRankPatcher

_LORA_TARGETS = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight", "proj.weight")


def _network_patches(patcher, name: str) -> dict:
    weights = {key: weight for key, weight in patcher.model.named_parameters() if key.endswith(_LORA_TARGETS)}
    deltas = LowRankPatcher({})
    return {key: deltas.delta(name, key, weight) for key, weight in weights.items()}


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
        model.forge_objects.unet = model.forge_objects_original.unet
        model.forge_objects.clip = model.forge_objects_original.clip
        for name, weight in networks:
            unet = model.forge_objects.unet.clone()
            clip = model.forge_objects.clip.clone()
            unet.add_patches(filename=name, patches=_network_patches(unet, name), strength_patch=weight)
            clip.add_patches(filename=name, patches=_network_patches(clip.patcher, name), strength_patch=weight)
            model.forge_objects.unet, model.forge_objects.clip = unet, clip
        model.forge_objects_after_applying_lora = model.forge_objects.shallow_copy()

    def deactivate(self, p):
        pass
