"""``extensions-builtin/sd_forge_lora/extra_networks_lora.py`` of Forge 2 (dfdcbab6), for the stand-in:
``ExtraNetworkLora.activate`` reads each ``<lora:name:te:unet>`` tag's multipliers (``te=``/``unet=`` named too)
and hands them to ``networks.load_networks``, then writes the loaded networks' hashes to the infotext (the
setting "Add Lora hashes to infotext" is on by default and not mirrored; nor is "Add network to prompt",
``sd_lora``, which appends a chosen network to every prompt, off by default)."""

import networks
from modules import extra_networks


def _multiplier(params, position, name, default):
    value = float(params.positional[position]) if len(params.positional) > position else default
    return float(params.named.get(name, value))


class ExtraNetworkLora(extra_networks.ExtraNetwork):
    remove_symbols = str.maketrans("", "", ":,")

    def __init__(self):
        super().__init__("lora")
        self.errors = {}

    def activate(self, p, params_list):
        self.errors.clear()
        names, te_multipliers, unet_multipliers, dyn_dims = [], [], [], []
        for params in params_list:
            assert params.items
            names.append(params.positional[0])
            te_multipliers.append(_multiplier(params, 1, "te", 1.0))
            unet_multipliers.append(_multiplier(params, 2, "unet", te_multipliers[-1]))
            dyn = int(params.positional[3]) if len(params.positional) > 3 else None
            dyn_dims.append(int(params.named["dyn"]) if "dyn" in params.named else dyn)
        networks.load_networks(names, te_multipliers, unet_multipliers, dyn_dims)

        if not getattr(p, "is_hr_pass", False) or not hasattr(p, "lora_hashes"):
            p.lora_hashes = {}
        for loaded in networks.loaded_networks:
            if loaded.network_on_disk.shorthash and loaded.mentioned_name:
                p.lora_hashes[loaded.mentioned_name.translate(self.remove_symbols)] = loaded.network_on_disk.shorthash
        if p.lora_hashes:
            p.extra_generation_params["Lora hashes"] = ", ".join(f"{k}: {v}" for k, v in p.lora_hashes.items())

    def deactivate(self, p):
        if self.errors:
            p.comment("Networks with errors: " + ", ".join(f"{k} ({v})" for k, v in self.errors.items()))
            self.errors.clear()
