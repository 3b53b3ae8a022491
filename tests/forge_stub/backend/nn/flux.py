"""``backend/nn/flux.py`` of Forge 2 (lllyasviel/stable-diffusion-webui-forge dfdcbab6; einops replaced by
views): the call structure the FLUX adapter relies on, at cut widths.

- Every block calls this module's ``attention(q, k, v, pe)``: q, k, v (B, H, L, D) after the QK norms, text
  tokens first; RoPE inside (``apply_rope``), then ``attention_function(..., skip_reshape=True)``.
- ``DoubleStreamBlock.forward(img, txt, vec, pe)``; ``SingleStreamBlock.forward(x, vec, pe)`` on cat(txt, img).
- The model's ``forward(x, timestep, context, y, guidance=None, **kwargs)`` pads the latent circularly to
  even sizes and patchifies 2x2; img_ids (0, row, col), txt_ids 0. ``kwargs`` holds ``transformer_options``
  (``KModel.apply_model`` passes it) and is otherwise ignored, as in the real file.

Neo's flux.py (Haoming02 ``neo``, as vendored in exo101/sd-webui-forge-neo-v3 f95f632) has the same blocks,
with ``attention(q, k, v, pe, mask=None, transformer_options={})`` and ``transformer_options`` passed down to
every block: ``NEO_SIGNATURE`` switches to that.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from backend.attention import attention_function

NEO_SIGNATURE = False  # tests set it to run Neo's attention signature


def attention(q, k, v, pe, mask=None, transformer_options=None):
    q, k = apply_rope(q, k, pe)
    return attention_function(q, k, v, q.shape[1], skip_reshape=True, mask=mask)


def _attention_call(q, k, v, pe, transformer_options):
    if NEO_SIGNATURE:
        return attention(q, k, v, pe=pe, mask=None, transformer_options=transformer_options or {})
    return attention(q, k, v, pe=pe)


def rope(pos, dim, theta):
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = 1.0 / (theta**scale)
    out = pos.unsqueeze(-1) * omega.unsqueeze(0)
    out = torch.stack([torch.cos(out), -torch.sin(out), torch.sin(out), torch.cos(out)], dim=-1)
    b, n, d, _ = out.shape
    return out.view(b, n, d, 2, 2).float()


def apply_rope(xq, xk, freqs_cis):
    xq_ = xq.float().reshape(*xq.shape[:-1], -1, 1, 2)
    xk_ = xk.float().reshape(*xk.shape[:-1], -1, 1, 2)
    xq_out = freqs_cis[..., 0] * xq_[..., 0] + freqs_cis[..., 1] * xq_[..., 1]
    xk_out = freqs_cis[..., 0] * xk_[..., 0] + freqs_cis[..., 1] * xk_[..., 1]
    return xq_out.reshape(*xq.shape).type_as(xq), xk_out.reshape(*xk.shape).type_as(xk)


def timestep_embedding(t, dim, max_period=10000, time_factor=1000.0):
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t)


class EmbedND(nn.Module):
    def __init__(self, dim, theta, axes_dim):
        super().__init__()
        self.theta, self.axes_dim = theta, axes_dim

    def forward(self, ids):
        emb = torch.cat([rope(ids[..., i], self.axes_dim[i], self.theta) for i in range(ids.shape[-1])], dim=-3)
        return emb.unsqueeze(1)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim, hidden_dim):
        super().__init__()
        self.in_layer, self.silu = nn.Linear(in_dim, hidden_dim), nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x):
        return self.out_layer(self.silu(self.in_layer(x)))


class QKNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query_norm, self.key_norm = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)


class Modulation(nn.Module):
    def __init__(self, dim, double):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)

    def forward(self, vec):
        return self.lin(nn.functional.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)


def _mlp(hidden, ratio):
    return nn.Sequential(nn.Linear(hidden, int(hidden * ratio)), nn.GELU(approximate="tanh"),
                         nn.Linear(int(hidden * ratio), hidden))


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.img_mod, self.txt_mod = Modulation(hidden_size, True), Modulation(hidden_size, True)
        self.img_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.img_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_mlp = _mlp(hidden_size, mlp_ratio)
        self.txt_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.txt_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_mlp = _mlp(hidden_size, mlp_ratio)

    def _qkv(self, attn, norm, x, shift, scale):
        qkv = attn.qkv((1 + scale) * norm(x) + shift)
        b, length, _ = qkv.shape
        q, k, v = qkv.view(b, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = attn.norm(q, k, v)
        return q, k, v

    def forward(self, img, txt, vec, pe, transformer_options=None):
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(vec)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(vec)
        img_q, img_k, img_v = self._qkv(self.img_attn, self.img_norm1, img, i_shift1, i_scale1)
        txt_q, txt_k, txt_v = self._qkv(self.txt_attn, self.txt_norm1, txt, t_shift1, t_scale1)
        q, k, v = (torch.cat(pair, dim=2) for pair in ((txt_q, img_q), (txt_k, img_k), (txt_v, img_v)))
        attn = _attention_call(q, k, v, pe, transformer_options)
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1] :]
        img = img + i_gate1 * self.img_attn.proj(img_attn)
        img = img + i_gate2 * self.img_mlp((1 + i_scale2) * self.img_norm2(img) + i_shift2)
        txt = txt + t_gate1 * self.txt_attn.proj(txt_attn)
        txt = txt + t_gate2 * self.txt_mlp((1 + t_scale2) * self.txt_norm2(txt) + t_shift2)
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.num_heads, self.hidden_size = num_heads, hidden_size
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x, vec, pe, transformer_options=None):
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = torch.split(self.linear1((1 + scale) * self.pre_norm(x) + shift),
                               [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = qkv.view(qkv.size(0), qkv.size(1), 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = self.norm(q, k, v)
        attn = _attention_call(q, k, v, pe, transformer_options)
        return x + gate * self.linear2(torch.cat((attn, self.mlp_act(mlp)), dim=2))


class LastLayer(nn.Module):
    def __init__(self, hidden_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :])


class IntegratedFluxTransformer2DModel(nn.Module):
    def __init__(self, in_channels=4, vec_in_dim=8, context_in_dim=16, hidden_size=16, mlp_ratio=2.0, num_heads=2,
                 depth=2, depth_single_blocks=4, axes_dim=(2, 2, 4), theta=10000, qkv_bias=True,
                 guidance_embed=True):
        super().__init__()
        self.guidance_embed = guidance_embed
        self.in_channels = self.out_channels = in_channels * 4
        self.pe_embedder = EmbedND(hidden_size // num_heads, theta, list(axes_dim))
        self.img_in = nn.Linear(self.in_channels, hidden_size)
        self.time_in = MLPEmbedder(256, hidden_size)
        self.vector_in = MLPEmbedder(vec_in_dim, hidden_size)
        self.guidance_in = MLPEmbedder(256, hidden_size) if guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(context_in_dim, hidden_size)
        self.double_blocks = nn.ModuleList(
            [DoubleStreamBlock(hidden_size, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)])
        self.single_blocks = nn.ModuleList(
            [SingleStreamBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth_single_blocks)])
        self.final_layer = LastLayer(hidden_size, self.out_channels)

    def inner_forward(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None, transformer_options=None):
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256).to(img.dtype))
        if self.guidance_embed:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        extra = {"transformer_options": transformer_options} if NEO_SIGNATURE else {}  # Neo passes them down
        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe, **extra)
        img = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            img = block(img, vec=vec, pe=pe, **extra)
        return self.final_layer(img[:, txt.shape[1] :, ...], vec)

    def forward(self, x, timestep, context, y, guidance=None, **kwargs):
        bs, c, h, w = x.shape
        pad_h, pad_w = (2 - h % 2) % 2, (2 - w % 2) % 2
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="circular")
        h_len, w_len = (h + 1) // 2, (w + 1) // 2
        img = x.view(bs, c, h_len, 2, w_len, 2).permute(0, 2, 4, 1, 3, 5).reshape(bs, h_len * w_len, c * 4)
        img_ids = torch.zeros((h_len, w_len, 3), device=x.device, dtype=x.dtype)
        img_ids[..., 1] += torch.linspace(0, h_len - 1, steps=h_len, device=x.device, dtype=x.dtype)[:, None]
        img_ids[..., 2] += torch.linspace(0, w_len - 1, steps=w_len, device=x.device, dtype=x.dtype)[None, :]
        img_ids = img_ids.view(1, h_len * w_len, 3).repeat(bs, 1, 1)
        txt_ids = torch.zeros((bs, context.shape[1], 3), device=x.device, dtype=x.dtype)
        out = self.inner_forward(img, img_ids, context, txt_ids, timestep, y, guidance,
                                 kwargs.get("transformer_options"))
        out = out.view(bs, h_len, w_len, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(bs, c, 2 * h_len, 2 * w_len)
        return out[:, :, :h, :w]
