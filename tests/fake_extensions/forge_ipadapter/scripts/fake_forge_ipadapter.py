"""A test extension shaped like Forge's built-in IP-Adapter (lllyasviel/stable-diffusion-webui-forge at
dfdcbab6, ``extensions-builtin/sd_forge_ipadapter/lib_ipadapter/IPAdapterPlus.py``) where FreeCure reads it.
In ``process_before_every_sampling`` (as ``IPAdapterPatcher`` does) each unit runs ``apply_ipadapter``: it
clones ``forge_objects.unet`` and puts a ``CrossAttentionPatch`` on every attn2 through
``set_model_patch_replace`` (SD1: ``(block, id)`` keys; SDXL: ``(block, id, index)``); a second unit on the same
layer joins the patch (``set_new_condition``: parallel lists). The ``IPAdapter`` module stores
``is_instant_id``, ``is_plus``, ``is_full``, ``is_sdxl`` but not ``is_faceid``: FaceID shows only as its
``image_proj_model`` class (``MLPProjModelFaceId``, ``ProjModelFaceIdPlus`` for Plus/v2). InstantID adds a
``controlnet_conditioning_modifier`` that feeds its face embedding to the ControlNets of the pass.

Simplified where FreeCure does not look: tiny projection modules, no sigma range, masks or weight types.
``test_unit_kind`` on the module is test bookkeeping for the call counts, absent from the real class. The
test hands in a probe through ``shared.fake_adapter_probe`` (``probe.units``: 'faceid', 'faceid_plus_v2',
'instantid', 'style'; Forge has no PuLID); without one the extension does nothing.
"""

import torch
from modules import scripts, shared

TOKENS = 4


class MLPProjModelFaceId(torch.nn.Linear):
    pass


class ProjModelFaceIdPlus(torch.nn.Linear):
    pass


class Resampler(torch.nn.Linear):
    pass


class ImageProjModel(torch.nn.Linear):
    pass


class To_KV(torch.nn.Module):
    def __init__(self, state_dict):
        super().__init__()
        self.to_kvs = torch.nn.ModuleDict()
        for key, value in state_dict.items():
            self.to_kvs[key.replace(".weight", "").replace(".", "_")] = torch.nn.Linear(value.shape[1], value.shape[0],
                                                                                        bias=False)
            self.to_kvs[key.replace(".weight", "").replace(".", "_")].weight.data = value


class IPAdapter(torch.nn.Module):
    def __init__(self, ipadapter_model, cross_attention_dim, is_sdxl=False, is_plus=False, is_full=False,
                 is_faceid=False, is_instant_id=False):
        super().__init__()
        self.cross_attention_dim = cross_attention_dim
        self.is_sdxl = is_sdxl
        self.is_full = is_full
        self.is_plus = is_plus
        self.is_instant_id = is_instant_id
        if is_instant_id:
            projection = Resampler
        elif is_faceid:
            projection = ProjModelFaceIdPlus if is_plus else MLPProjModelFaceId
        else:
            projection = ImageProjModel
        self.image_proj_model = projection(cross_attention_dim, TOKENS * cross_attention_dim)
        self.ip_layers = To_KV(ipadapter_model["ip_adapter"])


class CrossAttentionPatch:
    def __init__(self, weight, ipadapter, number, cond, uncond, weight_type="original"):
        self.weights = [weight]
        self.ipadapters = [ipadapter]
        self.conds = [cond]
        self.unconds = [uncond]
        self.number = number
        self.weight_type = [weight_type]
        self.k_key = str(self.number * 2 + 1) + "_to_k_ip"
        self.v_key = str(self.number * 2 + 1) + "_to_v_ip"

    def set_new_condition(self, weight, ipadapter, number, cond, uncond, weight_type="original"):
        self.weights.append(weight)
        self.ipadapters.append(ipadapter)
        self.conds.append(cond)
        self.unconds.append(uncond)
        self.weight_type.append(weight_type)

    def __call__(self, n, context_attn2, value_attn2, extra_options):
        from backend.attention import attention_function

        cond_or_uncond = extra_options["cond_or_uncond"]
        batch_prompt = n.shape[0] // len(cond_or_uncond)
        out = attention_function(n, context_attn2, value_attn2, extra_options["n_heads"])
        units = zip(self.weights, self.conds, self.unconds, self.ipadapters, strict=True)
        for weight, cond, uncond, ipadapter in units:
            shared.fake_adapter_probe.adapter_calls[ipadapter.test_unit_kind] += 1
            k_cond, k_uncond, v_cond, v_uncond = (ipadapter.ip_layers.to_kvs[key](emb).repeat(batch_prompt, 1, 1)
                                                  for key in (self.k_key, self.v_key) for emb in (cond, uncond))
            ip_k = torch.cat([(k_cond, k_uncond)[i] for i in cond_or_uncond], dim=0)
            ip_v = torch.cat([(v_cond, v_uncond)[i] for i in cond_or_uncond], dim=0)
            out = out + attention_function(n, ip_k.to(n.dtype), ip_v.to(n.dtype), extra_options["n_heads"]) * weight
        return out.to(dtype=n.dtype)


def set_model_patch_replace(model, patch_kwargs, key):
    to = model.model_options["transformer_options"]
    if "patches_replace" not in to:
        to["patches_replace"] = {}
    if "attn2" not in to["patches_replace"]:
        to["patches_replace"]["attn2"] = {}
    if key not in to["patches_replace"]["attn2"]:
        to["patches_replace"]["attn2"][key] = CrossAttentionPatch(**patch_kwargs)
    else:
        to["patches_replace"]["attn2"][key].set_new_condition(**patch_kwargs)


def cross_attention_keys(unet, is_sdxl):
    keys = []
    for name, _module in unet.model.diffusion_model.named_modules():
        if name.endswith("attn2"):
            parts = name.split(".")
            block = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}[parts[0]]
            number = 0 if block == "middle" else int(parts[1])
            index = int(parts[parts.index("transformer_blocks") + 1])
            keys.append((block, number, index) if is_sdxl else (block, number))
    return keys


def apply_ipadapter(kind, model, seed, is_sdxl):
    """``IPAdapterApply.apply_ipadapter`` for one unit of ``kind`` on a random-weight adapter."""
    generator = torch.Generator().manual_seed(seed)
    keys = cross_attention_keys(model, is_sdxl)
    dim = next(m for name, m in model.model.diffusion_model.named_modules() if name.endswith("attn2")).to_k.in_features
    state = {"ip_adapter": {f"{i * 2 + 1}.to_{name}_ip.weight": torch.randn(dim, dim, generator=generator) * 0.3
                            for i in range(len(keys)) for name in ("k", "v")}}
    ipadapter = IPAdapter(state, dim, is_sdxl=is_sdxl, is_plus=kind == "faceid_plus_v2",
                          is_faceid=kind.startswith("faceid"), is_instant_id=kind == "instantid")
    ipadapter.test_unit_kind = kind
    image_prompt_embeds = torch.randn(1, TOKENS, dim, generator=generator)
    uncond_image_prompt_embeds = torch.zeros_like(image_prompt_embeds)
    work_model = model.clone()
    if ipadapter.is_instant_id:
        def modifier(cnet, x_noisy, t, cond, batched_number):
            cond_mark = cond["transformer_options"]["cond_mark"][:, None, None].to(cond["c_crossattn"])
            cond["c_crossattn"] = image_prompt_embeds * (1.0 - cond_mark) + uncond_image_prompt_embeds * cond_mark
            return x_noisy, t, cond, batched_number

        work_model.add_controlnet_conditioning_modifier(modifier)
    patch_kwargs = {"number": 0, "weight": 1.0, "ipadapter": ipadapter, "cond": image_prompt_embeds,
                    "uncond": uncond_image_prompt_embeds}
    for key in keys:
        set_model_patch_replace(work_model, patch_kwargs, key)
        patch_kwargs["number"] += 1
    return work_model


class FakeForgeIpAdapter(scripts.Script):
    sorting_priority = 10  # before FreeCure (15), as Forge's ControlNet

    def title(self):
        return "Fake Forge IP-Adapter"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []

    def process_before_every_sampling(self, p, *args, **kwargs):
        probe = getattr(shared, "fake_adapter_probe", None)
        if probe is None:
            return
        for seed, kind in enumerate(probe.units):
            p.sd_model.forge_objects.unet = apply_ipadapter(kind, p.sd_model.forge_objects.unet, seed,
                                                            p.sd_model.is_sdxl)
