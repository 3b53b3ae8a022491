"""FLUX on Forge 2 and Forge Neo (``backend/nn/flux.py``): joint attention routed to the engine.

Neither host has an attention patch for FLUX. Forge 2's flux.py reads no ``transformer_options`` at all,
and Neo's offers only whole-block replace patches (``patches_replace["dit"]``); in both, every block calls
the module-level ``attention(q, k, v, pe, ...)`` of its own module (RoPE, then ``attention_function``).
So for the duration of a pass FreeCure installs, on the diffusion model the pass's patcher holds:

- an instance ``forward`` on the model: the call's row roles, from ``transformer_options["cond_or_uncond"]``
  (Forge's ``KModel.apply_model`` passes them to the model on both hosts);
- an instance ``forward`` on every double- and single-stream block: which layer is running;
- the module's ``attention`` global, wrapping the one found there: a call from a block the engine wants
  gets q, k after the host's own ``apply_rope`` and the host's ``attention_function`` as the kernel
  (``freecure.attention.joint_attention``); every other call goes to the wrapped function unchanged.

Everything is put back exactly on exit, also when the pass raises. Host imports happen inside functions.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from freecure.attention import AttentionEngine, LayerKey, RowRole, joint_attention, joint_blocks, patch_grid
from freecure.tokens import phrase_columns

_ABSENT = object()


def is_flux(diffusion_model: nn.Module) -> bool:
    """FLUX.1 (dev, schnell): Forge's joint-attention blocks with per-block modulation and a pooled-CLIP
    ``vector_in``. Flux.2 (Neo's flux.py with ``global_modulation``) and Chroma (``IntegratedChroma...``,
    no ``vector_in``) share the blocks but not the conditioning FreeCure was checked against: not these."""
    return (bool(joint_blocks(diffusion_model)) and hasattr(diffusion_model, "vector_in")
            and not getattr(diffusion_model, "global_modulation", False))


class _CallState:
    """What the wrappers learn on the way down one model call: its rows, then the running block."""

    def __init__(self) -> None:
        self.rows: list[RowRole] | None = None
        self.layer: LayerKey | None = None


def _wrap_forward(module: nn.Module, make: Callable[[Callable[..., Any]], Callable[..., Any]],
                  saved: list[tuple[nn.Module, object]]) -> None:
    previous = module.__dict__.get("forward", _ABSENT)
    saved.append((module, previous))

    def call_previous(*args: Any, **kwargs: Any) -> Any:
        if previous is _ABSENT:
            return type(module).forward(module, *args, **kwargs)
        return previous(*args, **kwargs)  # type: ignore[operator]

    module.__dict__["forward"] = make(call_previous)


def _model_forward(engine: AttentionEngine, state: _CallState) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    from freecure.webui.forge import rows_of  # forge.py imports this module for its FLUX branch

    def make(call_previous: Callable[..., Any]) -> Callable[..., Any]:
        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            options = kwargs.get("transformer_options") or {}
            state.rows = rows_of(options, x.shape[0], engine.roles) if "cond_or_uncond" in options else None
            try:
                return call_previous(x, *args, **kwargs)
            finally:
                state.rows = None

        return forward

    return make


def _block_forward(engine: AttentionEngine, state: _CallState, layer: LayerKey) -> Callable[..., Any]:
    def make(call_previous: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            image = kwargs.get("img") if engine.mode is not None else None
            grid = patch_grid(engine.latent_hw)
            if layer[0] == "double" and image is not None and image.shape[1] != grid[0] * grid[1]:
                # reference latents (Kontext) or another extension's extra image tokens: not ours to index
                engine.fail(ValueError(f"{image.shape[1]} image tokens for a {grid[0]}x{grid[1]} token grid "
                                       "(reference images appended?)"))
            state.layer = layer
            try:
                return call_previous(*args, **kwargs)
            finally:
                state.layer = None

        return forward

    return make


def _routed_attention(engine: AttentionEngine, state: _CallState, module: Any,
                      previous: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """The module's ``attention`` for the pass: Forge 2 ``attention(q, k, v, pe)``, Neo ``attention(q, k, v,
    pe, mask=None, transformer_options={})``; q, k, v (B, H, L, D) before RoPE, text tokens first."""

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: Any, *args: Any, **kwargs: Any):
        layer, rows = state.layer, state.rows
        mask = args[0] if args else kwargs.get("mask")
        if (layer is None or rows is None or pe is None or mask is not None
                or not (engine.wants(layer, True) or engine.wants(layer, False))):
            return previous(q, k, v, pe, *args, **kwargs)
        q_rope, k_rope = module.apply_rope(q, k, pe)

        def attend(q_: torch.Tensor, k_: torch.Tensor, v_: torch.Tensor) -> torch.Tensor:
            return module.attention_function(q_, k_, v_, q_.shape[1], skip_reshape=True)

        out = joint_attention(engine, layer, q_rope, k_rope, v, rows, attend)
        return previous(q, k, v, pe, *args, **kwargs) if out is None else out

    return attention


@contextmanager
def intercepted_flux(engine: AttentionEngine, diffusion_model: nn.Module) -> Iterator[None]:
    """Route the FLUX model's joint attention to ``engine`` for the duration (see the module docstring)."""
    state = _CallState()
    saved: list[tuple[nn.Module, object]] = []
    globals_saved: list[tuple[Any, Callable[..., Any]]] = []
    try:
        _wrap_forward(diffusion_model, _model_forward(engine, state), saved)
        for layer, block in joint_blocks(diffusion_model).items():
            _wrap_forward(block, _block_forward(engine, state, layer), saved)
            module = sys.modules[type(block).__module__]
            if all(module is not m for m, _ in globals_saved):
                globals_saved.append((module, module.attention))
                module.attention = _routed_attention(engine, state, module, module.attention)
        yield
    finally:
        for module, previous in reversed(globals_saved):
            module.attention = previous
        for instance, previous in reversed(saved):
            if previous is _ABSENT:
                instance.__dict__.pop("forward", None)
            else:
                instance.__dict__["forward"] = previous


def t5_token_columns(engine: Any, prompt: str, phrases: Mapping[str, Sequence[str]]) -> dict[str, list[int]]:
    """Context columns of the attribute phrases in FLUX's T5 context (Forge's ``T5TextProcessingEngine``:
    one chunk of at least 256 tokens, no start token, the end token after the prompt)."""
    chunks, _ = engine.tokenize_line(prompt)
    tokens = [list(chunk.tokens) for chunk in chunks]
    return phrase_columns(tokens, lambda text: engine.tokenize([text])[0], phrases,
                          chunk_length=max(len(chunk) for chunk in tokens))
