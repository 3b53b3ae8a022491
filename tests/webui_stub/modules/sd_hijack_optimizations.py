"""``modules/sd_hijack_optimizations.py`` (A1111 1.10.1 82a973c0): the "sdp" optimization, which A1111 applies
when it loads a model (``sd_hijack.apply_optimizations``): ``ldm`` and ``sgm`` ``CrossAttention.forward``
become ``scaled_dot_product_attention_forward``, which feeds ``to_k``/``to_v`` the context through the loaded
hypernetworks. Only this optimization is mirrored (the default one on torch 2)."""

import ldm.modules.attention
import sgm.modules.attention
import torch

from modules import shared
from modules.hypernetworks import hypernetwork


def scaled_dot_product_attention_forward(self, x, context=None, mask=None, **kwargs):
    batch_size, sequence_length, inner_dim = x.shape
    if mask is not None:
        mask = self.prepare_attention_mask(mask, sequence_length, batch_size)
        mask = mask.view(batch_size, self.heads, -1, mask.shape[-1])
    h = self.heads
    q_in = self.to_q(x)
    context = x if context is None else context  # ldm.util.default
    context_k, context_v = hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, context)
    k_in = self.to_k(context_k)
    v_in = self.to_v(context_v)
    head_dim = inner_dim // h
    q = q_in.view(batch_size, -1, h, head_dim).transpose(1, 2)
    k = k_in.view(batch_size, -1, h, head_dim).transpose(1, 2)
    v = v_in.view(batch_size, -1, h, head_dim).transpose(1, 2)
    dtype = q.dtype
    if shared.opts.upcast_attn:
        q, k, v = q.float(), k.float(), v.float()
    hidden_states = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0,
                                                                     is_causal=False)
    hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, h * head_dim)
    hidden_states = hidden_states.to(dtype)
    hidden_states = self.to_out[0](hidden_states)
    hidden_states = self.to_out[1](hidden_states)
    return hidden_states


def apply_sdp():
    ldm.modules.attention.CrossAttention.forward = scaled_dot_product_attention_forward
    sgm.modules.attention.CrossAttention.forward = scaled_dot_product_attention_forward
