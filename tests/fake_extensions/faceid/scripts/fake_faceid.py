"""A test extension that injects a face identity the way Forge's built-in IP-Adapter does: in
``process_before_every_sampling`` it clones ``forge_objects.unet`` and puts an attn2 replace patch whose
``ipadapters`` are FaceID adapters on every cross-attention layer. The test hands in a probe through
``shared.fake_faceid_probe``; without one the extension does nothing."""

import torch
from modules import scripts, shared


class FaceIdAdapter:
    is_instant_id = False

    def __init__(self):
        self.is_faceid = shared.fake_faceid_probe.identity_adapter  # False: a style IP-Adapter


class CrossAttentionPatch:
    """Plain cross-attention plus a counted (zero) identity term, like Forge's IP-Adapter patch. The probe
    is looked up at call time: Forge deep-copies ``model_options`` (and so this patch) on every clone."""

    def __init__(self):
        self.ipadapters = [FaceIdAdapter()]

    def __call__(self, q, k, v, extra_options):
        from backend.attention import attention_function

        shared.fake_faceid_probe.adapter_calls += 1
        return attention_function(q, k, v, extra_options["n_heads"]) + torch.zeros_like(q)


class FakeFaceId(scripts.Script):
    sorting_priority = 10  # before FreeCure (15), as Forge's ControlNet

    def title(self):
        return "Fake FaceID"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []

    def process_before_every_sampling(self, p, *args, **kwargs):
        if getattr(shared, "fake_faceid_probe", None) is None:
            return
        unet = p.sd_model.forge_objects.unet.clone()
        for name, _module in unet.model.diffusion_model.named_modules():
            if name.endswith("attn2"):
                parts = name.split(".")
                block = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}[parts[0]]
                number = 0 if block == "middle" else int(parts[1])
                index = int(parts[parts.index("transformer_blocks") + 1])
                unet.set_model_attn2_replace(CrossAttentionPatch(), block, number, index)
        p.sd_model.forge_objects.unet = unet
