"""``backend/patcher/lora.py`` of Forge 2 (dfdcbab6): the key maps and patch loading of LoRA files, and
``LoraLoader``, one per model, shared by its patchers.

``model_lora_keys_unet`` / ``model_lora_keys_clip`` map a LoRA file's keys to the model's parameter names and
``load_lora(lora, to_load)`` turns the file's tensors for those keys into weight patches, returning them with
what it did not use. The stand-in's files use one key form (``lora_unet_`` / ``lora_te_`` + the parameter name
with ``_`` for ``.``) and one patch type, ``"diff"`` (a whole weight difference), where the real
functions know kohya's, diffusers' and ComfyUI's names and LoRA, LoHa, LoKr, GLoRA and diff patches.

``refresh`` merges a patcher's LoRA patches into the model's weights, keyed by the list of LoRA identifiers
(``loaded_hash``): the same set merged already changes nothing; otherwise the weights from before any LoRA are
put back (``backup``) and the new set is merged, each weight replaced by a new ``Parameter``
(``merge_lora_to_weight`` for ``"diff"``: weight * strength_model + strength * diff)."""

from __future__ import annotations

import torch


def _key_map(model, prefix: str) -> dict[str, str]:
    return {f"{prefix}{key.replace('.', '_')}": key for key, _ in model.named_parameters() if key.endswith(".weight")}


def model_lora_keys_unet(model, key_map={}):  # noqa: B006 - the real signature
    return {**key_map, **_key_map(model, "lora_unet_")}


def model_lora_keys_clip(model, key_map={}):  # noqa: B006 - the real signature
    return {**key_map, **_key_map(model, "lora_te_")}


def load_lora(lora, to_load):
    patch_dict = {model_key: ("diff", (lora[lora_key],)) for lora_key, model_key in to_load.items()
                  if lora_key in lora}
    loaded = {lora_key for lora_key in to_load if lora_key in lora}
    remaining_dict = {key: value for key, value in lora.items() if key not in loaded}
    return patch_dict, remaining_dict


class LoraLoader:
    def __init__(self, model):
        self.model = model
        self.backup: dict[str, torch.nn.Parameter] = {}
        self.loaded_hash = str([])

    @torch.inference_mode()
    def refresh(self, lora_patches, offload_device=None, force_refresh=False):
        hashes = str(list(lora_patches.keys()))
        if hashes == self.loaded_hash and not force_refresh:
            return
        merged: dict[str, list] = {}
        for patches in lora_patches.values():
            for key, current in patches.items():
                merged[key] = merged.get(key, []) + current
        for key, weight in self.backup.items():
            _set_parameter(self.model, key, weight)
        self.backup = {}
        for key, current in merged.items():
            weight = self.model.get_parameter(key)
            self.backup.setdefault(key, weight)
            result = weight.detach().to(torch.float32).clone()
            for strength, (_, (diff,)), strength_model, _, _ in current:
                if strength_model != 1.0:
                    result *= strength_model
                result += strength * diff.to(result)
            _set_parameter(self.model, key, torch.nn.Parameter(result.to(weight.dtype), requires_grad=False))
        self.loaded_hash = hashes


def _set_parameter(model: torch.nn.Module, key: str, value: torch.nn.Parameter) -> None:
    module_path, _, name = key.rpartition(".")
    setattr(model.get_submodule(module_path), name, value)
