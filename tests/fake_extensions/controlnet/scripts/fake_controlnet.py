"""A test extension shaped like sd-webui-controlnet (Mikubill/sd-webui-controlnet at 56cec5b2) where FreeCure
reads it: IP-Adapter units hang ``torch.no_grad`` closures of ``PlugableIPAdapter.patch_forward`` on the
``ipadapter_hacks`` of every attn2 (``scripts/ipadapter/plugable_ipadapter.py``); the model kind lives on
``PlugableIPAdapter.ipadapter`` (``scripts/ipadapter/ipadapter_model.py``: ``is_faceid``, ``is_instantid``,
``is_pulid``, ``is_plus``, ``is_v2``); an InstantID unit is an IP-Adapter unit followed by a ControlNet unit whose
``ControlParams.control_model_type`` is ``ControlModelType.InstantID`` and whose context is the IP-Adapter's
image embedding (``scripts/controlnet.py`` ``controlnet_main_entry``); ``Script.latest_network`` is a
``UnetHook`` whose hooked UNet forward reads ``control_params`` on every call (``scripts/hook.py``).

Simplified where FreeCure does not look: a unit's control is added to the UNet output (the real one adds it
to the skip connections), prompts are not cond/uncond-marked (the real one's fallback for unmarked
prompts: every row conditional), PuLID attends like an IP-Adapter. ``test_unit_kind`` on the model is test
bookkeeping for the call counts, absent from the real class. The test hands in a probe through
``shared.fake_adapter_probe`` (``probe.units``: 'faceid', 'faceid_plus_v2', 'instantid', 'pulid', 'style');
without one the extension does nothing, as ControlNet without enabled units.
"""

import enum

import torch
from modules import scripts, shared

TOKENS = 4
FLAGS = {"faceid": {"is_faceid": True}, "faceid_plus_v2": {"is_faceid": True, "is_plus": True, "is_v2": True},
         "instantid": {"is_instantid": True}, "pulid": {"is_pulid": True}, "style": {}}


class ControlModelType(enum.Enum):  # scripts/enums.py (the members used here)
    ControlNet = "ControlNet, Lvmin Zhang"
    IPAdapter = "IPAdapter, Hu Ye"
    InstantID = "InstantID, Qixun Wang"


class IPAdapterModel(torch.nn.Module):
    """The flags the real constructor stores, and one to_k_ip/to_v_ip pair per attn2 (``To_KV``)."""

    def __init__(self, kind, context_dim, layers, seed):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.test_unit_kind = kind
        for flag in ("is_plus", "is_sdxl", "is_v2", "is_faceid", "is_instantid", "is_pulid"):
            setattr(self, flag, FLAGS[kind].get(flag, False))
        self.to_kvs = torch.nn.ModuleDict()
        for number in range(layers):
            for name in ("k", "v"):
                linear = torch.nn.Linear(context_dim, context_dim, bias=False)
                linear.weight.data = torch.randn(context_dim, context_dim, generator=generator) * 0.3
                self.to_kvs[f"{number * 2 + 1}_to_{name}_ip"] = linear
        self.image_emb = torch.randn(1, TOKENS, context_dim, generator=generator)


def attn_forward_hacked(self, x, context=None, **kwargs):
    batch_size, _sequence_length, inner_dim = x.shape
    h = self.heads
    head_dim = inner_dim // h
    context = x if context is None else context
    q, k, v = (t.view(batch_size, -1, h, head_dim).transpose(1, 2)
               for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch_size, -1, inner_dim)
    for f in self.ipadapter_hacks:
        out = out + f(self, x, q)
    return self.to_out(out)


all_hacks = {}


def hack_blk(block, function, type):
    if not hasattr(block, "ipadapter_hacks"):
        block.ipadapter_hacks = []
    if len(block.ipadapter_hacks) == 0:
        all_hacks[block] = block.forward
        block.forward = attn_forward_hacked.__get__(block, type)
    block.ipadapter_hacks.append(function)


def clear_all_ip_adapter():
    global all_hacks
    for k, v in all_hacks.items():
        k.forward = v
        k.ipadapter_hacks = []
    all_hacks = {}


def attn2_modules(unet):
    return [m for name, m in unet.named_modules() if name.endswith("attn2")]


class PlugableIPAdapter(torch.nn.Module):
    def __init__(self, ipadapter):
        super().__init__()
        self.ipadapter = ipadapter
        self.disable_memory_management = True
        self.weight = 1.0

    @torch.no_grad()
    def hook(self, model, weight):
        self.weight = weight
        self.image_emb = self.ipadapter.image_emb
        for i, module in enumerate(attn2_modules(model)):
            hack_blk(module, self.patch_forward(i, i), type(module))

    @torch.no_grad()
    def patch_forward(self, number: int, transformer_index: int):
        @torch.no_grad()
        def forward(attn_blk, x, q):
            batch_size, _sequence_length, inner_dim = x.shape
            h = attn_blk.heads
            shared.fake_adapter_probe.adapter_calls[self.ipadapter.test_unit_kind] += 1
            emb = self.image_emb.to(q).expand(batch_size, -1, -1)
            ip_k, ip_v = (self.ipadapter.to_kvs[f"{number * 2 + 1}_to_{name}_ip"](emb)
                          .view(batch_size, -1, h, inner_dim // h).transpose(1, 2) for name in ("k", "v"))
            ip_out = torch.nn.functional.scaled_dot_product_attention(q, ip_k, ip_v)
            return ip_out.transpose(1, 2).reshape(batch_size, -1, inner_dim) * self.weight

        return forward


class InstantIdControlNet(torch.nn.Module):
    """InstantID's ControlNet: a control computed from its context, the face embedding."""

    def __init__(self, context_dim, seed):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Linear(context_dim, 1, bias=False)
        self.proj.weight.data = torch.randn(1, context_dim, generator=generator) * 0.1

    def forward(self, x, context):
        shared.fake_adapter_probe.adapter_calls["instantid controlnet"] += 1
        return self.proj(context.mean(dim=1))[:, :, None, None].to(x) * torch.ones_like(x)


class ControlParams:  # scripts/hook.py (the fields used here)
    def __init__(self, control_model, weight, control_model_type, control_context_override=None):
        self.control_model = control_model
        self.weight = weight
        self.control_model_type = control_model_type
        self.control_context_override = control_context_override
        self.guidance_stopped = False


class UnetHook:
    def __init__(self):
        self.model = None
        self.control_params = None

    def hook(self, model, control_params):
        self.model = model
        self.control_params = control_params
        outer = self

        def forward_webui(self, x, timesteps=None, context=None, y=None, **kwargs):
            out = outer.original_forward(x, timesteps=timesteps, context=context, y=y, **kwargs)
            for param in outer.control_params:
                if param.guidance_stopped or param.control_model_type != ControlModelType.InstantID:
                    continue
                emb = param.control_context_override.expand(x.shape[0], -1, -1)
                out = out + param.weight * param.control_model(x, emb)
            return out

        model._original_forward = model.forward
        outer.original_forward = model.forward
        model.forward = forward_webui.__get__(model, type(model))

    def restore(self):
        self.control_params = None
        if self.model is not None and hasattr(self.model, "_original_forward"):
            self.model.forward = self.model._original_forward
            del self.model._original_forward


class Script(scripts.Script):
    def __init__(self):
        super().__init__()
        self.latest_network = None

    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []

    def process(self, p, *args, **kwargs):
        unet = p.sd_model.model.diffusion_model
        if self.latest_network is not None:
            self.latest_network.restore()
        clear_all_ip_adapter()
        probe = getattr(shared, "fake_adapter_probe", None)
        if probe is None or not probe.units:
            self.latest_network = None
            return
        modules = attn2_modules(unet)
        context_dim = modules[0].to_k.in_features
        forward_params = []
        for seed, kind in enumerate(probe.units):
            adapter = PlugableIPAdapter(IPAdapterModel(kind, context_dim, len(modules), seed))
            forward_params.append(ControlParams(adapter, 1.0, ControlModelType.IPAdapter))
            if kind == "instantid":  # the unit pair: IP-Adapter, then its ControlNet fed the face embedding
                forward_params.append(ControlParams(InstantIdControlNet(context_dim, seed), 0.5,
                                                    ControlModelType.InstantID))
        for i, param in enumerate(forward_params):
            if param.control_model_type == ControlModelType.IPAdapter:
                param.control_model.hook(model=unet, weight=param.weight)
            if param.control_model_type == ControlModelType.InstantID:
                param.control_context_override = forward_params[i - 1].control_model.image_emb
        self.latest_network = UnetHook()
        self.latest_network.hook(model=unet, control_params=forward_params)

    def postprocess(self, p, processed, *args):
        clear_all_ip_adapter()
