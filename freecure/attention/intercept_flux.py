"""diffusers' ``FluxTransformer2DModel``: its joint attention routed through the engine (the reference host).

Each block's ``FluxAttention`` gets a processor that wraps the previous one. Calls the engine does not
want, and any call form other than the plain one (an attention mask, IP-Adapter arguments), go to the
previous processor unchanged, so an inert engine leaves the model's output bit for bit.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .engine import AttentionEngine
from .intercept import RowTracker, processors_replaced
from .joint import joint_attention
from .layers import joint_blocks
from .types import LayerKey


def _heads_first(t: Tensor, head_dim: int) -> Tensor:
    """(B, L, H * D) -> (B, L, H, D), diffusers' layout before norms and RoPE."""
    return t.unflatten(-1, (-1, head_dim))


class _FluxProcessor:
    """Wraps the previous processor of one block's ``FluxAttention``."""

    def __init__(self, engine: AttentionEngine, tracker: RowTracker, layer: LayerKey, previous: Any) -> None:
        self.engine, self.tracker, self.layer, self.previous = engine, tracker, layer, previous

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        image_rotary_emb: tuple[Tensor, Tensor] | None = None,
        **kwargs: Any,
    ) -> Any:
        def call_original() -> Any:
            return self.previous(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                                 **kwargs)

        engine, layer = self.engine, self.layer
        if (
            not (engine.wants(layer, True) or engine.wants(layer, False))
            or kwargs
            or attention_mask is not None
            or image_rotary_emb is None
            or getattr(attn, "fused_projections", False)
        ):
            return call_original()
        rows = self.tracker.take(layer, hidden_states.shape[0])
        q, k, v = self._qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        out = joint_attention(engine, layer, q, k, v, rows, _sdpa)
        if out is None:
            return call_original()
        out = out.to(hidden_states.dtype)
        if encoder_hidden_states is None:  # single-stream block: no output projection in the attention
            return out
        n_text = encoder_hidden_states.shape[1]
        image = attn.to_out[1](attn.to_out[0](out[:, n_text:].contiguous()))
        return image, attn.to_add_out(out[:, :n_text].contiguous())

    @staticmethod
    def _qkv(attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor | None,
             rotary: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (B, H, L, D) after the QK norms and RoPE, text tokens first, as ``FluxAttnProcessor``."""
        from diffusers.models.embeddings import apply_rotary_emb

        head_dim = attn.head_dim
        q = attn.norm_q(_heads_first(attn.to_q(hidden_states), head_dim))
        k = attn.norm_k(_heads_first(attn.to_k(hidden_states), head_dim))
        v = _heads_first(attn.to_v(hidden_states), head_dim)
        if encoder_hidden_states is not None:
            text_q = attn.norm_added_q(_heads_first(attn.add_q_proj(encoder_hidden_states), head_dim))
            text_k = attn.norm_added_k(_heads_first(attn.add_k_proj(encoder_hidden_states), head_dim))
            text_v = _heads_first(attn.add_v_proj(encoder_hidden_states), head_dim)
            q, k, v = torch.cat([text_q, q], dim=1), torch.cat([text_k, k], dim=1), torch.cat([text_v, v], dim=1)
        q = apply_rotary_emb(q, rotary, sequence_dim=1)
        k = apply_rotary_emb(k, rotary, sequence_dim=1)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Plain attention on (B, H, L, D): what ``FluxAttnProcessor`` dispatches to by default."""
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


def intercept_flux_diffusers(
    engine: AttentionEngine, transformer: nn.Module, tracker: RowTracker
) -> AbstractContextManager[None]:
    """Route the joint attention of every double- and single-stream block of a diffusers
    ``FluxTransformer2DModel``; on exit every module has its previous processor object back."""
    names = {module: name for name, module in transformer.named_modules()}

    def wrap(previous: dict[str, Any]) -> dict[str, Any]:
        wrapped = {}
        for layer, block in joint_blocks(transformer).items():
            name = f"{names[block.attn]}.processor"
            wrapped[name] = _FluxProcessor(engine, tracker, layer, previous[name])
        return wrapped

    return processors_replaced(transformer, wrap)
