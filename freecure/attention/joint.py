"""Joint attention (FLUX's double- and single-stream blocks) routed through the engine.

A joint block attends over one sequence ``[text tokens; image tokens]``. FreeCure works on the image
tokens only, with the engine's existing pieces:

- foundation pass: the bank keeps the conditional rows' *image* keys/values, after RoPE; the recorder
  gets the image queries against the *text* keys (the text-to-image attention of the attribute words);
- cure pass: the image queries of a conditional row attend to the row's own keys/values (text and
  image) plus the foundation's image keys/values inside the mask, with the logit bias w
  (``AttentionEngine.fasa_rows``). Text queries keep plain attention.

RoPE: the banked keys carry the foundation's positional encoding, that of their own grid position,
which is the position the personalized pass gives its own key there. A query so sees a foundation
key at the same relative offset as its own key at that place, exactly as in a UNet, where a foundation
token is the token at the same spatial position.

Every host interceptor (diffusers processors, Forge's flux.py) hands over q, k, v after RoPE as
(B, H, L, D) with the image tokens last, and an ``attend(q, k, v) -> (B, L, H * D)`` that runs the
host's own kernel; ``joint_attention`` returns None for every call it leaves to the host's path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .engine import AttentionEngine
from .types import LayerKey, RowRole

PATCH = 2  # FLUX patchifies the latent 2x2 into one token (FLUX.1, Flux.2 and Chroma alike)

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]


def patch_grid(latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) image-token grid of a latent: FLUX pads it to even sizes and patchifies 2x2."""
    return math.ceil(latent_hw[0] / PATCH), math.ceil(latent_hw[1] / PATCH)


def joint_attention(
    engine: AttentionEngine,
    layer: LayerKey,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rows: Sequence[RowRole],
    attend: Attend,
) -> Tensor | None:
    """One wanted joint-attention call; q, k, v: (B, H, L, D) after RoPE, the last h * w tokens image tokens.

    Returns the attention output (B, L, H * D) before the output projection, or None when the caller must
    take its original path (recording, or no row cured). Our own failure never breaks the host's sampling:
    the engine records it and goes inert (``engine.fail``), and the call takes the original path.
    """
    try:
        if engine.records(True):
            _record(engine, layer, q, k, v, rows)
            return None
        if engine.records(False):  # one-pass mode: the foundation rows' maps and the cure in the same call
            _record(engine, layer, q, k, v, rows)
        return _cure(engine, layer, q, k, v, rows, attend) if engine.wants(layer, True) else None
    except Exception as error:
        engine.fail(error)
        return None


def _split(engine: AttentionEngine, q: Tensor) -> tuple[tuple[int, int], int]:
    """The image grid of this call and the number of text tokens in front of the image tokens."""
    grid = patch_grid(engine.latent_hw)
    n_text = q.shape[2] - grid[0] * grid[1]
    if n_text < 0:
        raise ValueError(
            f"joint attention over {q.shape[2]} tokens, fewer than the {grid[0]}x{grid[1]} image tokens "
            f"of a {engine.latent_hw[0]}x{engine.latent_hw[1]} latent"
        )
    return grid, n_text


def _flat(t: Tensor) -> Tensor:
    """(B, H, L, D) -> (B, L, H * D), the projected layout the bank and ``fasa_attention`` use."""
    return t.transpose(1, 2).flatten(2)


def _record(engine: AttentionEngine, layer: LayerKey, q: Tensor, k: Tensor, v: Tensor,
            rows: Sequence[RowRole]) -> None:
    cond = [row for row, role in enumerate(rows) if role.cond]
    if not cond:
        return
    grid, n_text = _split(engine, q)
    roles = [rows[row] for row in cond]
    heads, head_dim = q.shape[1], q.shape[3]
    with torch.no_grad():
        if engine.wants(layer, True) and engine.records(True):
            engine.observe_self(layer, _flat(k[cond, :, n_text:]), _flat(v[cond, :, n_text:]), roles)
        if engine.wants(layer, False) and n_text:
            q_image, k_text = _flat(q[cond, :, n_text:]), _flat(k[cond, :, :n_text])
            engine.observe_cross(layer, q_image, k_text, heads, head_dim**-0.5, roles, grid)


def _cure(engine: AttentionEngine, layer: LayerKey, q: Tensor, k: Tensor, v: Tensor,
          rows: Sequence[RowRole], attend: Attend) -> Tensor | None:
    cond = [row for row, role in enumerate(rows) if role.cond]
    if not cond:
        return None
    grid, n_text = _split(engine, q)
    heads, head_dim = q.shape[1], q.shape[3]
    k_flat, v_flat = _flat(k[cond]), _flat(v[cond])
    result = engine.fasa_rows(layer, _flat(q[cond, :, n_text:]), k_flat, v_flat, heads, head_dim**-0.5,
                              [rows[row] for row in cond], grid, image_tokens_last=True)
    if result is None:
        return None
    handled = [cond[i] for i in result[0]]
    image_out = result[1]
    out = q.new_empty((q.shape[0], q.shape[2], heads * head_dim))
    if n_text:
        out[handled, :n_text] = attend(q[handled, :, :n_text], k[handled], v[handled]).to(out.dtype)
    out[handled, n_text:] = image_out.to(out.dtype)
    handled_set = set(handled)
    rest = [row for row in range(q.shape[0]) if row not in handled_set]
    if rest:
        out[rest] = attend(q[rest], k[rest], v[rest]).to(out.dtype)
    return out
