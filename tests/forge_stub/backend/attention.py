"""``backend/attention.py``: the attention kernel on projected ``(B, N, heads * dim_head)`` tensors."""

import torch
import torch.nn.functional as F


def attention_function(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    """Forge 2's ``attention_pytorch`` (dfdcbab6): with ``skip_reshape`` q, k, v come as (B, H, L, D) (FLUX)."""
    if skip_reshape:
        b, _, _, dim_head = q.shape
    else:
        b, _, inner = q.shape
        dim_head = inner // heads
        q, k, v = (t.view(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, -1, heads * dim_head)


def attention_basic(q, k, v, heads, mask=None):
    """Explicit softmax(q k^T * scale) v, for references."""
    b, _, inner = q.shape
    dim_head = inner // heads
    q, k, v = (t.view(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) * dim_head**-0.5, dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, -1, heads * dim_head)
