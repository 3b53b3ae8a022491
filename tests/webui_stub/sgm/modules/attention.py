"""Stand-in for ``sgm.modules.attention.CrossAttention`` (SDXL in A1111): the same constructor and
attributes and ``forward(x, context=None, mask=None, additional_tokens=None,
n_times_crossframe_attn_in_self=0)``, computing real attention with SDPA."""

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0, backend=None):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.scale = dim_head**-0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))
        self.backend = backend

    def forward(self, x, context=None, mask=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        if additional_tokens is not None:  # prepended for the attention, dropped from the output
            n_extra = additional_tokens.shape[1]
            x = torch.cat([additional_tokens, x], dim=1)
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        if n_times_crossframe_attn_in_self:  # every group of n rows attends to its group's first row
            n = n_times_crossframe_attn_in_self
            k = k[::n].repeat_interleave(x.shape[0] // n, dim=0)
            v = v[::n].repeat_interleave(x.shape[0] // n, dim=0)
        batch, heads = x.shape[0], self.heads
        q, k, v = (t.view(batch, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, q.shape[2], -1)
        if additional_tokens is not None:
            out = out[:, n_extra:]
        return self.to_out(out)
