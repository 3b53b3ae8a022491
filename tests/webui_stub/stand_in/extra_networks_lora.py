"""The built-in Lora extension's ``ExtraNetworkLora`` for the stand-in model: ``<lora:name:weight>``
applies a deterministic low-rank delta to the UNet's attention projections and the text encoder, through
``networks.load_networks`` as the real one (which imports ``networks`` as a module of its folder).
``activate(p, [])`` restores the original weights bit-exactly; so does ``deactivate`` (the real one
only reports errors and leaves the weights to the next ``activate``)."""

from __future__ import annotations

from modules import extra_networks, shared

from stand_in import networks


class ExtraNetworkLora(extra_networks.ExtraNetwork):
    def __init__(self):
        super().__init__("lora")
        self.errors = {}

    def activate(self, p, params_list):
        names, multipliers = [], []
        for params in params_list:
            if not params.positional:
                raise ValueError(f"<lora:...> needs a name, got {params.items!r}")
            names.append(params.positional[0])
            multipliers.append(float(params.positional[1]) if len(params.positional) > 1 else 1.0)
        networks.load_networks(names, multipliers, multipliers)
        if names:
            p.extra_generation_params["Lora hashes"] = ", ".join(f"{name}: stand-in" for name in names)

    def deactivate(self, p):
        shared.sd_model.lora_patcher.restore()
