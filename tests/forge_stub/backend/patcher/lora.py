"""``backend/patcher/lora.py`` of Forge 2 (dfdcbab6): ``LoraLoader``, one per model, shared by its patchers.

``refresh`` merges a patcher's LoRA patches into the model's weights, keyed by the list of LoRA identifiers
(``loaded_hash``): the same set merged already changes nothing; otherwise the weights from before any LoRA are
put back (``backup``) and the new set is merged, each weight replaced by a new ``Parameter``. Only the
``"diff"`` patch type is modelled (``merge_lora_to_weight``: weight * strength_model + strength * diff)."""

from __future__ import annotations

import torch


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
