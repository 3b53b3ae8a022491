"""A1111's ``model.diffusion_model``: a tiny diffusers UNet computes, and every attention call goes
through an ldm (SD1) or sgm (SDXL) ``CrossAttention`` that shares the diffusers projection weights and
sits at its real ldm name. So per-instance ``forward`` overrides and forward hooks on those modules see
and change every attention call, exactly as on the real ldm UNet.
"""

from __future__ import annotations

import torch
from torch import nn

from stand_in.layout import BasicTransformerBlock, build_ldm_tree, transformer_slots


class _CallLdmAttention:
    """diffusers attention processor that hands the call to the ldm/sgm module, called the way
    ldm's (``context=``) or sgm's (``additional_tokens=``...) ``BasicTransformerBlock._forward`` calls it."""

    def __init__(self, target: nn.Module, is_self: bool, sgm: bool):
        self.target = target
        self.is_self = is_self
        self.sgm = sgm

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if not self.sgm:
            return self.target(hidden_states, context=encoder_hidden_states)
        if self.is_self:
            return self.target(hidden_states, context=None, additional_tokens=None, n_times_crossframe_attn_in_self=0)
        return self.target(hidden_states, context=encoder_hidden_states, additional_tokens=None)


def _shared_attention(cross_attention_cls, diffusers_attn: nn.Module) -> nn.Module:
    heads = diffusers_attn.heads
    inner_dim = diffusers_attn.to_q.out_features
    module = cross_attention_cls(
        diffusers_attn.to_q.in_features,
        context_dim=diffusers_attn.to_k.in_features if diffusers_attn.is_cross_attention else None,
        heads=heads,
        dim_head=inner_dim // heads,
    )
    module.to_q = diffusers_attn.to_q
    module.to_k = diffusers_attn.to_k
    module.to_v = diffusers_attn.to_v
    module.to_out[0] = diffusers_attn.to_out[0]
    return module


class UNetModel(nn.Module):
    """``ldm.modules.diffusionmodules.openaimodel.UNetModel`` in name and call signature."""

    def __init__(self, unet: nn.Module, sdxl: bool):
        super().__init__()
        if sdxl:
            from sgm.modules.attention import CrossAttention
        else:
            from ldm.modules.attention import CrossAttention
        # Kept out of the module tree: the tree holds only ldm names, as the real diffusion_model does.
        object.__setattr__(self, "diffusers_unet", unet)
        self.is_sdxl = sdxl
        blocks = {}
        processors = {}
        for slot in transformer_slots(unet):
            d = slot.diffusers_block
            attn1 = _shared_attention(CrossAttention, d.attn1)
            attn2 = _shared_attention(CrossAttention, d.attn2)
            blocks[slot] = BasicTransformerBlock(attn1, attn2)
            processors[d.attn1] = _CallLdmAttention(attn1, True, sdxl)
            processors[d.attn2] = _CallLdmAttention(attn2, False, sdxl)
        build_ldm_tree(self, unet, blocks)
        for attention, processor in processors.items():
            attention.set_processor(processor)
        self.dtype = torch.float32

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        added = None
        if self.is_sdxl:
            pooled_dim = self.diffusers_unet.config.projection_class_embeddings_input_dim - \
                6 * self.diffusers_unet.config.addition_time_embed_dim
            added = {"text_embeds": y[:, :pooled_dim], "time_ids": y[:, pooled_dim:]}
        return self.diffusers_unet(x, timesteps, encoder_hidden_states=context, added_cond_kwargs=added).sample
