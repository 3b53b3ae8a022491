"""``backend/patcher/unet.py`` + ``base.py``: ``UnetPatcher``. Patches live in ``model_options``; a clone
shares the model and copies the options; LoRA weight patches are applied when the patcher is loaded for
sampling (``sampling_prepare``) and undone when another patcher is loaded; ControlNets form a linked list
(``add_patched_controlnet``) that the sampling function asks per UNet call. Mirrors Forge 2 dfdcbab6
``backend/patcher/unet.py`` (``UnetPatcher.clone``, ``add_patched_controlnet``)."""

from __future__ import annotations

import copy

import torch


class ModelPatcher:
    def __init__(self, model, weight_targets: dict[str, torch.nn.Linear]):
        self.model = model
        self.weight_targets = weight_targets
        self.patches: dict[str, list[tuple[float, torch.Tensor]]] = {}
        self.model_options: dict = {"transformer_options": {}}

    def clone(self):
        n = type(self).__new__(type(self))
        n.__dict__.update(self.__dict__)
        n.patches = {k: list(v) for k, v in self.patches.items()}
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def add_patches(self, patches: dict[str, torch.Tensor], strength_patch: float = 1.0):
        for key, delta in patches.items():
            if key in self.weight_targets:
                self.patches.setdefault(key, []).append((strength_patch, delta))
        return list(patches)

    @torch.no_grad()
    def patch_model(self):
        """Make the shared weights this patcher's: restore the previous owner's, apply own patches."""
        owner = getattr(self.model, "_stand_in_patch_owner", None)
        if owner is not None and owner[0] is not self:
            for key, original in owner[1].items():
                self.weight_targets[key].weight.copy_(original)
            self.model._stand_in_patch_owner = None
        if getattr(self.model, "_stand_in_patch_owner", None) is None:
            backup = {}
            for key, entries in self.patches.items():
                weight = self.weight_targets[key].weight
                backup[key] = weight.detach().clone()
                for strength, delta in entries:
                    weight += strength * delta
            self.model._stand_in_patch_owner = (self, backup)


class UnetPatcher(ModelPatcher):
    def __init__(self, model, weight_targets: dict[str, torch.nn.Linear]):
        super().__init__(model, weight_targets)
        self.controlnet_linked_list = None  # a clone shares it; add_patched_controlnet prepends

    def add_patched_controlnet(self, cnet):
        cnet.set_previous_controlnet(self.controlnet_linked_list)
        self.controlnet_linked_list = cnet

    def append_model_option(self, k, v, ensure_uniqueness=False):
        self.model_options.setdefault(k, [])
        if ensure_uniqueness and v in self.model_options[k]:
            return
        self.model_options[k].append(v)

    def append_transformer_option(self, k, v, ensure_uniqueness=False):
        to = self.model_options.setdefault("transformer_options", {})
        to.setdefault(k, [])
        if ensure_uniqueness and v in to[k]:
            return
        to[k].append(v)

    def add_controlnet_conditioning_modifier(self, modifier, ensure_uniqueness=False):
        self.append_transformer_option("controlnet_conditioning_modifiers", modifier, ensure_uniqueness)

    def add_conditioning_modifier(self, modifier, ensure_uniqueness=False):
        self.append_model_option("conditioning_modifiers", modifier, ensure_uniqueness)

    def add_block_modifier(self, modifier, ensure_uniqueness=False):
        self.append_model_option("block_modifiers", modifier, ensure_uniqueness)

    def set_model_sampler_cfg_function(self, sampler_cfg_function, disable_cfg1_optimization=False):
        self.model_options["sampler_cfg_function"] = sampler_cfg_function
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(self, post_cfg_function, disable_cfg1_optimization=False):
        self.append_model_option("sampler_post_cfg_function", post_cfg_function)
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_patch(self, patch, name):
        to = self.model_options["transformer_options"]
        to.setdefault("patches", {})
        to["patches"][name] = [*to["patches"].get(name, []), patch]

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        to = self.model_options["transformer_options"]
        to.setdefault("patches_replace", {}).setdefault(name, {})
        block = (block_name, number, transformer_index) if transformer_index is not None else (block_name, number)
        to["patches_replace"][name][block] = patch

    def set_model_attn1_patch(self, patch):
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch):
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def set_model_attn1_output_patch(self, patch):
        self.set_model_patch(patch, "attn1_output_patch")

    def set_model_attn2_output_patch(self, patch):
        self.set_model_patch(patch, "attn2_output_patch")

    def set_model_replace_all(self, patch, target="attn1"):
        for block_name in ("input", "output"):
            for number in range(16):
                for transformer_index in range(16):
                    self.set_model_patch_replace(patch, target, block_name, number, transformer_index)
        for number in range(16):
            for transformer_index in range(16):
                self.set_model_patch_replace(patch, target, "middle", number, transformer_index)
