"""A test extension that patches every sampling pass on Forge the way Forge's built-in extensions do: in each
``process_before_every_sampling`` call it clones ``forge_objects.unet``, adds patches made for that call and
puts the clone back (``sd_forge_ipadapter``: attn2 replace patches; ``modules_forge/supported_controlnet.py``:
``add_patched_controlnet``; ``sd_forge_freeu``-like feature patches, here an ``attn1_output_patch``; and a
block-level ``(block, number)`` attn1 replace patch, the key Forge looks up after ``(block, number, index)``). Every
patch records the call it was made in when the UNet runs it. The test hands in a probe through
``shared.fake_patches_probe``; without one the extension does nothing."""

import torch
from modules import scripts, shared


class TaggedControlNet:
    """The part of Forge's ``ControlBase`` the sampling function uses: a linked list asked for its control."""

    def __init__(self, tag):
        self.tag = tag
        self.previous_controlnet = None

    def set_previous_controlnet(self, controlnet):
        self.previous_controlnet = controlnet

    def get_models(self):  # the control model patchers Forge loads with the UNet (ControlBase.get_models)
        return [] if self.previous_controlnet is None else self.previous_controlnet.get_models()

    def get_control(self, x_noisy, t, cond, batched_number):
        shared.fake_patches_probe.seen("controlnet", self.tag)
        if self.previous_controlnet is not None:
            self.previous_controlnet.get_control(x_noisy, t, cond, batched_number)
        return None


def style_adapter(tag, kind="ip-adapter"):
    def patch(q, k, v, extra_options):
        from backend.attention import attention_function

        shared.fake_patches_probe.seen(kind, tag)
        return attention_function(q, k, v, extra_options["n_heads"]) + torch.zeros_like(q)

    return patch


def feature_patch(tag):
    def patch(out, extra_options):
        shared.fake_patches_probe.seen("freeu-like", tag)
        return out

    return patch


class FakeHiresPatches(scripts.Script):
    sorting_priority = 10  # before FreeCure (15), as Forge's ControlNet

    def title(self):
        return "Fake hires patches"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []

    def process_before_every_sampling(self, p, *args, **kwargs):
        probe = getattr(shared, "fake_patches_probe", None)
        if probe is None:
            return
        probe.calls += 1
        tag = probe.calls
        unet = p.sd_model.forge_objects.unet.clone()
        unet.add_patched_controlnet(TaggedControlNet(tag))
        unet.set_model_attn1_output_patch(feature_patch(tag))
        unet.set_model_attn2_replace(style_adapter(tag), "output", 3, 0)
        # block-level key (block, number), as patches made for every transformer of a block are
        unet.set_model_attn1_replace(style_adapter(tag, "block-level"), "output", 4)
        p.sd_model.forge_objects.unet = unet
