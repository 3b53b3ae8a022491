"""Foundation-aware self-attention (FASA): settings, mask-to-token selection and the attention itself.

For a conditional row of the cure pass, the keys/values are the row's own plus the foundation's
tokens *inside the mask*, with an additive logit bias ``weight`` on the foundation tokens:

    out = softmax([q K_own^T * scale, q K_f[M]^T * scale + w]) [V_own; V_f[M]]

This gather form is exactly the reference code's, which keeps all foundation tokens and gives the
out-of-mask ones a logit of -inf.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from freecure.masks import coverage, to_grid

from .types import LayerKey, check_layer_key, check_progress_range, in_progress_range


@dataclass
class FasaSettings:
    """What the cure pass does: which self-attention layers, the logit bias w, when, and where.

    ``masks``: one per image, 2-D (H, W) at any resolution, bool or float in {0, 1}. Each layer sees
    the mask resized to its token grid by area: a token is inside when at least half of its area is
    (adaptive average pooling >= 0.5).

    ``attribute_weights``: optional, per image, (weight, mask) pairs, one per attribute, whose masks make up
    that image's mask: a foundation token inside the mask then takes the largest weight of the attributes
    whose masks touch it, instead of ``weight`` (a strength per attribute).
    """

    layers: frozenset[LayerKey]
    weight: float
    progress_range: tuple[float, float] = (0.0, 1.0)
    masks: Sequence[Tensor] = ()
    attribute_weights: Sequence[Sequence[tuple[float, Tensor]]] = ()

    def __post_init__(self) -> None:
        self.layers = frozenset(check_layer_key(key, "FasaSettings.layers") for key in self.layers)
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"FasaSettings.weight must be a finite number, got {self.weight!r}")
        self.weight = float(self.weight)
        self.progress_range = check_progress_range(self.progress_range, "FasaSettings.progress_range")
        masks = tuple(self.masks)
        for i, mask in enumerate(masks):
            if not isinstance(mask, Tensor) or mask.ndim != 2 or min(mask.shape) < 1:
                raise ValueError(f"FasaSettings.masks[{i}] must be a non-empty 2-D tensor (H, W)")
            if mask.dtype != torch.bool and not (
                mask.dtype.is_floating_point and bool(((mask == 0) | (mask == 1)).all())
            ):
                raise ValueError(f"FasaSettings.masks[{i}] must be bool or float with values in {{0, 1}}")
        self.masks = masks
        self.attribute_weights = tuple(tuple(pairs) for pairs in self.attribute_weights)
        if self.attribute_weights and len(self.attribute_weights) != len(masks):
            raise ValueError(f"FasaSettings.attribute_weights: {len(self.attribute_weights)} image(s) for "
                             f"{len(masks)} mask(s)")

    def token_weights(self, image: int, tokens: Tensor, grid: tuple[int, int]) -> Tensor | None:
        """(S,) float64 weight of each in-mask token of ``grid`` (from ``mask_tokens``), or None when every
        token takes ``weight``."""
        if not self.attribute_weights:
            return None
        weights = torch.zeros(tokens.numel(), dtype=torch.float64)
        for weight, mask in self.attribute_weights[image]:
            touched = torch.from_numpy(coverage(mask.cpu(), grid)).flatten()[tokens.cpu()] > 0
            weights = torch.where(touched, weights.clamp(min=weight), weights)
        return weights

    def can_change_output(self) -> bool:
        """False when FASA is plain attention everywhere: w <= 0 or every mask empty."""
        return self.weight > 0 and any(bool(mask.any()) for mask in self.masks)

    def active_at(self, progress: float) -> bool:
        """Whether ``progress`` (fraction of the schedule done) is inside ``progress_range``."""
        return in_progress_range(progress, self.progress_range)


def mask_tokens(mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """Row-major (h w) indices of the tokens of ``grid`` that are at least half inside ``mask`` (the exact
    area rule of ``freecure.masks.to_grid``, also for grids that do not divide the mask's size)."""
    return torch.nonzero(to_grid(mask.cpu(), grid).flatten()).flatten()


@functools.lru_cache(maxsize=64)
def _logit_bias(own: int, found: int, weight: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(1, 1, 1, own + found): 0 on the row's own keys, ``weight`` on the foundation's. Cached: it is the same
    for every call of a layer with a given mask, and building it costs two kernel launches."""
    bias = torch.zeros(1, 1, 1, own + found, device=device, dtype=dtype)
    bias[..., own:] = weight
    return bias


def logit_bias(own: int, token_weights: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(own + S,): 0 on the row's own keys, each foundation token's weight on its key."""
    return torch.cat([torch.zeros(own, dtype=torch.float64), token_weights]).to(device=device, dtype=dtype)


def fasa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_found: Tensor,
    v_found: Tensor,
    heads: int,
    scale: float,
    weight: float | Tensor,
) -> Tensor:
    """FASA for one row. q: (N, C); k, v: (M, C) own; k_found, v_found: (S, C) the in-mask foundation
    tokens; ``weight``: w, or an (M + S,) logit bias (``logit_bias``). Returns (N, C), before ``to_out``.
    One fused SDPA call with a broadcast (1, 1, 1, M + S) logit bias, so the N x (M + S) logits are never
    materialised by us."""
    n_queries, channels = q.shape
    head_dim = channels // heads
    keys = torch.cat([k, k_found]).view(1, -1, heads, head_dim).transpose(1, 2)
    values = torch.cat([v, v_found]).view(1, -1, heads, head_dim).transpose(1, 2)
    if isinstance(weight, Tensor):
        bias = weight.view(1, 1, 1, -1)
    else:
        bias = _logit_bias(k.shape[0], k_found.shape[0], weight, q.device, q.dtype)
    queries = q.view(1, n_queries, heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=bias, scale=scale)
    return out.transpose(1, 2).reshape(n_queries, channels)
