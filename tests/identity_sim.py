"""Simulated identity sources for pipeline tests, switched on/off the way the WebUI adapters do it.

(a) :class:`LoraIdentity`: a LoRA-like low-rank delta on every attention projection (to_q/k/v/out),
    added by forward hooks on the Linear layers (A1111's LoRA patches weights; the effect is the same).
(b) :class:`AdapterIdentity`: extra identity tokens attended to in every cross-attention, added by an
    instance ``forward`` on each attn2 module that chains to the module's own forward, the way
    IP-Adapter/InstantID/PuLID arrive through the ControlNet extension.
Both count the calls in which they actually changed something (``active_calls``), and both can be switched
per batch row (``set_rows``, what one-pass mode asks of a host's identity sources).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def attention_modules(unet: nn.Module, cross: bool) -> list[tuple[str, nn.Module]]:
    suffix = ".attn2" if cross else ".attn1"
    return [(name, module) for name, module in unet.named_modules() if name.endswith(suffix)]


class LoraIdentity:
    """Low-rank delta x A B * scale on the attention projections of every transformer block."""

    def __init__(self, unet: nn.Module, rank: int = 2, scale: float = 0.5, seed: int = 100) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.on = True
        self.rows: Tensor | None = None  # per batch row, 1.0 where the identity is on (None: every row)
        self.active_calls = 0
        self._handles = []
        for _, attn in attention_modules(unet, cross=False) + attention_modules(unet, cross=True):
            for linear in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
                down = torch.randn(linear.in_features, rank, generator=gen) / linear.in_features**0.5
                up = torch.randn(rank, linear.out_features, generator=gen) * scale
                self._handles.append(linear.register_forward_hook(self._hook(down, up)))

    def _hook(self, down: Tensor, up: Tensor):
        def add_delta(_module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            if not self.on:
                return None
            self.active_calls += 1
            delta = (inputs[0] @ down.to(output.dtype)) @ up.to(output.dtype)
            return output + delta if self.rows is None else output + delta * _per_row(self.rows, output)

        return add_delta

    def set(self, on: bool) -> None:
        self.on = on

    def set_rows(self, rows: list[bool] | None) -> None:
        self.rows = None if rows is None else torch.tensor(rows, dtype=torch.float32)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class AdapterIdentity:
    """IP-Adapter-like decoupled cross-attention to ``n_tokens`` identity tokens on every attn2."""

    def __init__(self, unet: nn.Module, n_tokens: int = 4, scale: float = 1.0, seed: int = 200) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.on = True
        self.rows: Tensor | None = None  # per batch row, 1.0 where the identity is on (None: every row)
        self.active_calls = 0
        self.scale = scale
        self._patched: list[nn.Module] = []
        for _, attn in attention_modules(unet, cross=True):
            context_dim = attn.to_k.in_features
            inner = attn.to_k.out_features
            tokens = torch.randn(n_tokens, context_dim, generator=gen)
            to_k = torch.randn(context_dim, inner, generator=gen) / context_dim**0.5
            to_v = torch.randn(context_dim, inner, generator=gen) / context_dim**0.5
            self._wrap(attn, tokens @ to_k, tokens @ to_v)

    def _wrap(self, attn: nn.Module, id_keys: Tensor, id_values: Tensor) -> None:
        chained = attn.forward  # whatever forward is there now (class or instance), as the WebUI chains

        def forward(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            out = chained(hidden_states, *args, **kwargs)
            if not self.on:
                return out
            self.active_calls += 1
            batch, n_tokens, _ = hidden_states.shape
            heads = attn.heads
            q = attn.to_q(hidden_states).view(batch, n_tokens, heads, -1).transpose(1, 2)
            head_dim = q.shape[-1]
            k = id_keys.to(q.dtype).view(1, -1, heads, head_dim).transpose(1, 2).expand(batch, -1, -1, -1)
            v = id_values.to(q.dtype).view(1, -1, heads, head_dim).transpose(1, 2).expand(batch, -1, -1, -1)
            extra = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, n_tokens, -1)
            added = self.scale * attn.to_out[0](extra)
            return out + added if self.rows is None else out + added * _per_row(self.rows, added)

        attn.forward = forward
        self._patched.append(attn)

    def set(self, on: bool) -> None:
        self.on = on

    def set_rows(self, rows: list[bool] | None) -> None:
        self.rows = None if rows is None else torch.tensor(rows, dtype=torch.float32)

    def remove(self) -> None:
        for attn in self._patched:
            del attn.forward
        self._patched.clear()


def _per_row(rows: Tensor, like: Tensor) -> Tensor:
    """(B, 1, ...) row factors shaped to broadcast over ``like``."""
    if rows.numel() != like.shape[0]:
        raise ValueError(f"identity rows: {rows.numel()} flags for a batch of {like.shape[0]}")
    return rows.to(like.device, like.dtype).view(-1, *[1] * (like.ndim - 1))


def installed_state(unet: nn.Module) -> dict[str, Any]:
    """Everything an interceptor could leave behind: processors, instance forwards, hooks."""
    return {
        "processors": {name: id(proc) for name, proc in unet.attn_processors.items()},
        "forwards": {
            name: id(m.__dict__["forward"]) for name, m in unet.named_modules() if "forward" in m.__dict__
        },
        "hooks": {
            name: (len(m._forward_hooks), len(m._forward_pre_hooks))
            for name, m in unet.named_modules()
            if m._forward_hooks or m._forward_pre_hooks
        },
    }


# --- helpers shared by the pipeline tests -----------------------------------------------------------


class RolesHooks:
    """CallHooks that change nothing and remember the current call's row roles (for test processors)."""

    def __init__(self) -> None:
        self.roles: tuple = ()
        self.calls = 0

    def before_call(self, roles, latent_hw, progress) -> None:
        self.roles = tuple(roles)
        self.calls += 1

    def after_cfg(self, x_t: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
        return x0


def block_mask(latent_hw: tuple[int, int], rows: slice, cols: slice) -> Tensor:
    """A bool latent mask that is True on ``[rows, cols]``; pick bounds on the coarsest layer's grid so
    every resize rule (nearest, area >= 0.5, full coverage) agrees on every layer."""
    mask = torch.zeros(latent_hw, dtype=torch.bool)
    mask[rows, cols] = True
    return mask


def tokens_in_block_mask(mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """Row-major indices of the grid cells inside a grid-aligned ``mask`` (sampled at each cell's corner)."""
    step_h, step_w = mask.shape[0] // grid[0], mask.shape[1] // grid[1]
    return torch.nonzero(mask[::step_h, ::step_w].flatten()).flatten()
