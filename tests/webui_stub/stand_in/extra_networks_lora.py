"""The built-in Lora extension's ``ExtraNetworkLora`` for the stand-in model: ``<lora:name:weight>``
applies a deterministic low-rank delta to the UNet's attention projections and the text encoder.
``activate(p, [])`` restores the original weights bit-exactly; so does ``deactivate`` (the real one
only reports errors and leaves the weights to the next ``activate``)."""

from __future__ import annotations

from modules import extra_networks, shared


class ExtraNetworkLora(extra_networks.ExtraNetwork):
    def __init__(self):
        super().__init__("lora")
        self.errors = {}

    def activate(self, p, params_list):
        networks = []
        for params in params_list:
            if not params.positional:
                raise ValueError(f"<lora:...> needs a name, got {params.items!r}")
            weight = float(params.positional[1]) if len(params.positional) > 1 else 1.0
            networks.append((params.positional[0], weight))
        shared.sd_model.lora_patcher.set_networks(networks)
        if networks:
            p.extra_generation_params["Lora hashes"] = ", ".join(f"{name}: stand-in" for name, _ in networks)

    def deactivate(self, p):
        shared.sd_model.lora_patcher.restore()
