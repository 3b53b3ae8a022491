"""``modules/sd_hijack_optimizations.py`` (A1111 1.10.1 82a973c0): the cross-attention optimizations that
``sd_hijack.apply_optimizations`` puts on ``ldm`` and ``sgm`` ``CrossAttention.forward`` when a model is loaded.
Mirrored: "InvokeAI", which "Automatic" picks wherever CUDA and MPS are absent (priority 1000 there, as on
this CPU), and "sdp" (``scaled_dot_product_attention_forward``), the one a CUDA user without xformers gets
from "Automatic" through its "sdp-no-mem" variant. Both feed ``to_k``/``to_v`` the context through the loaded
hypernetworks. They give results that differ in the last bits, as the real ones do."""

import ldm.modules.attention
import sgm.modules.attention
import torch

from modules import devices, shared
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


# -- InvokeAI's sliced einsum attention (the real file's CPU path: einsum_op -> einsum_op_tensor_mem(q, k, v, 32))
def einsum_op_compvis(q, k, v):
    s = torch.einsum("b i d, b j d -> b i j", q, k)
    s = s.softmax(dim=-1, dtype=s.dtype)
    return torch.einsum("b i j, b j d -> b i d", s, v)


def einsum_op_slice_0(q, k, v, slice_size):
    r = torch.zeros(q.shape[0], q.shape[1], v.shape[2], device=q.device, dtype=q.dtype)
    for i in range(0, q.shape[0], slice_size):
        r[i:i + slice_size] = einsum_op_compvis(q[i:i + slice_size], k[i:i + slice_size], v[i:i + slice_size])
    return r


def einsum_op_slice_1(q, k, v, slice_size):
    r = torch.zeros(q.shape[0], q.shape[1], v.shape[2], device=q.device, dtype=q.dtype)
    for i in range(0, q.shape[1], slice_size):
        r[:, i:i + slice_size] = einsum_op_compvis(q[:, i:i + slice_size], k, v)
    return r


def einsum_op_tensor_mem(q, k, v, max_tensor_mb):
    size_mb = q.shape[0] * q.shape[1] * k.shape[1] * q.element_size() // (1 << 20)
    if size_mb <= max_tensor_mb:
        return einsum_op_compvis(q, k, v)
    div = 1 << int((size_mb - 1) / max_tensor_mb).bit_length()
    if div <= q.shape[0]:
        return einsum_op_slice_0(q, k, v, q.shape[0] // div)
    return einsum_op_slice_1(q, k, v, max(q.shape[1] // div, 1))


def split_cross_attention_forward_invokeAI(self, x, context=None, mask=None, **kwargs):
    h = self.heads
    q = self.to_q(x)
    context = x if context is None else context
    context_k, context_v = hypernetwork.apply_hypernetworks(shared.loaded_hypernetworks, context)
    k = self.to_k(context_k)
    v = self.to_v(context_v)
    dtype = q.dtype
    if shared.opts.upcast_attn:
        q, k, v = q.float(), k.float(), v.float()
    with devices.without_autocast(disable=not shared.opts.upcast_attn):
        k = k * self.scale
        # rearrange 'b n (h d) -> (b h) n d'
        q, k, v = (t.reshape(t.shape[0], t.shape[1], h, -1).permute(0, 2, 1, 3).reshape(t.shape[0] * h, t.shape[1], -1)
                   for t in (q, k, v))
        r = einsum_op_tensor_mem(q, k, v, 32)
    r = r.to(dtype)
    # rearrange '(b h) n d -> b n (h d)'
    r = r.reshape(-1, h, r.shape[1], r.shape[2]).permute(0, 2, 1, 3).reshape(-1, r.shape[1], h * r.shape[2])
    return self.to_out(r)


class SdOptimization:
    name = ""

    def title(self):
        return self.name


class SdOptimizationSdp(SdOptimization):
    name = "sdp"
    priority = 70

    def apply(self):
        ldm.modules.attention.CrossAttention.forward = scaled_dot_product_attention_forward
        sgm.modules.attention.CrossAttention.forward = scaled_dot_product_attention_forward


class SdOptimizationInvokeAI(SdOptimization):
    name = "InvokeAI"

    def apply(self):
        ldm.modules.attention.CrossAttention.forward = split_cross_attention_forward_invokeAI
        sgm.modules.attention.CrossAttention.forward = split_cross_attention_forward_invokeAI

    @property
    def priority(self):
        return 1000 if shared.device.type != "mps" and not torch.cuda.is_available() else 10


def list_optimizers():
    """The real list comes from the ``list_optimizers`` callback, highest priority first."""
    return sorted([SdOptimizationInvokeAI(), SdOptimizationSdp()], key=lambda o: o.priority, reverse=True)
