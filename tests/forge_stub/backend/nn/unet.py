"""``backend/nn/unet.py``: ``IntegratedUNet2DConditionModel`` with ldm module names and Forge's attention
dispatch. A tiny diffusers UNet computes; in every transformer block the attention goes through the logic of
Forge's ``BasicTransformerBlock._forward``: ``attn1_patch``/``attn2_patch`` pre-patches, then a replace
patch looked up by ``(block_name, number, transformer_index)`` and then ``(block_name, number)`` (the patch
gets projected q/k/v and ``extra_options``; ``to_out`` follows), else ``CrossAttention.forward``.
"""

from __future__ import annotations

from stand_in.layout import BasicTransformerBlock, build_ldm_tree, transformer_slots
from torch import nn

from backend.attention import attention_function


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0, dtype=None, device=None,
                 operations=None):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x, context=None, value=None, mask=None, transformer_options=None):
        q = self.to_q(x)
        context = x if context is None else context
        k = self.to_k(context)
        v = self.to_v(value if value is not None else context)
        return self.to_out(attention_function(q, k, v, self.heads, mask))


def _shared(diffusers_attn: nn.Module) -> CrossAttention:
    heads = diffusers_attn.heads
    inner_dim = diffusers_attn.to_q.out_features
    module = CrossAttention(diffusers_attn.to_q.in_features,
                            diffusers_attn.to_k.in_features if diffusers_attn.is_cross_attention else None,
                            heads=heads, dim_head=inner_dim // heads)
    module.to_q = diffusers_attn.to_q
    module.to_k = diffusers_attn.to_k
    module.to_v = diffusers_attn.to_v
    module.to_out[0] = diffusers_attn.to_out[0]
    return module


class _ForgeAttentionDispatch:
    """diffusers processor doing one attention of ``BasicTransformerBlock._forward`` on the normed input."""

    def __init__(self, owner, block: BasicTransformerBlock, slot, is_self: bool):
        self.owner = owner
        self.block = block
        self.slot = slot
        self.is_self = is_self

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        transformer_options = self.owner.current_transformer_options
        transformer_options["block"] = (self.slot.block_name, self.slot.number)
        transformer_options["block_index"] = self.slot.transformer_index
        extra_options = {k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")}
        extra_options["n_heads"] = self.block.n_heads
        extra_options["dim_head"] = self.block.d_head
        patches = transformer_options.get("patches", {})
        replace = transformer_options.get("patches_replace", {})
        name = "attn1" if self.is_self else "attn2"
        module = self.block.attn1 if self.is_self else self.block.attn2
        n = hidden_states
        context = None if self.is_self else encoder_hidden_states
        value = None
        if f"{name}_patch" in patches:
            if context is None:
                context = n
            value = context
            for patch in patches[f"{name}_patch"]:
                n, context, value = patch(n, context, value, extra_options)
        block = transformer_options["block"]
        key = (block[0], block[1], transformer_options["block_index"])
        table = replace.get(name, {})
        if key not in table:
            key = block
        if key in table:
            if context is None:
                context = n
            if value is None:
                value = context
            out = table[key](module.to_q(n), module.to_k(context), module.to_v(value), extra_options)
            out = module.to_out(out)
        else:
            out = module(n, context=context, value=value, transformer_options=extra_options)
        for patch in patches.get(f"{name}_output_patch", []):
            out = patch(out, extra_options)
        return out


class IntegratedUNet2DConditionModel(nn.Module):
    def __init__(self, unet: nn.Module, sdxl: bool):
        super().__init__()
        object.__setattr__(self, "diffusers_unet", unet)
        self.is_sdxl = sdxl
        self.current_transformer_options: dict = {}
        blocks = {}
        for slot in transformer_slots(unet):
            d = slot.diffusers_block
            block = BasicTransformerBlock(_shared(d.attn1), _shared(d.attn2))
            block.n_heads = d.attn1.heads
            block.d_head = d.attn1.to_q.out_features // d.attn1.heads
            blocks[slot] = block
            d.attn1.set_processor(_ForgeAttentionDispatch(self, block, slot, True))
            d.attn2.set_processor(_ForgeAttentionDispatch(self, block, slot, False))
        build_ldm_tree(self, unet, blocks)

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options=None, **kwargs):
        transformer_options = {} if transformer_options is None else transformer_options
        transformer_options["original_shape"] = list(x.shape)
        transformer_options["transformer_index"] = 0
        self.current_transformer_options = transformer_options
        added = None
        if self.is_sdxl:
            config = self.diffusers_unet.config
            pooled_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
            added = {"text_embeds": y[:, :pooled_dim], "time_ids": y[:, pooled_dim:]}
        try:
            return self.diffusers_unet(x, timesteps, encoder_hidden_states=context, added_cond_kwargs=added).sample
        finally:
            self.current_transformer_options = {}
