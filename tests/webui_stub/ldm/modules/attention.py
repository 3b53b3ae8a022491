"""Stand-in for ``ldm.modules.attention.CrossAttention`` (SD1/SD2 in A1111): the same constructor,
attributes and ``forward(x, context=None, mask=None)``, computing real attention with SDPA."""

import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.scale = dim_head**-0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x, context=None, mask=None):
        context = x if context is None else context
        batch, heads = x.shape[0], self.heads
        projected = (self.to_q(x), self.to_k(context), self.to_v(context))
        q, k, v = (t.view(batch, t.shape[1], heads, -1).transpose(1, 2) for t in projected)
        attn_mask = None if mask is None else mask.reshape(batch, 1, 1, -1).bool()  # (b, j): True = visible
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        return self.to_out(out.transpose(1, 2).reshape(batch, x.shape[1], -1))
