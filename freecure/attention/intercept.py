"""Interceptors: route ldm/sgm ``CrossAttention`` forwards and diffusers attention processors through
the engine, leaving every call the engine does not want on the original path, bit for bit.

Both install for the duration of a ``with`` block and restore exactly what was there before, also
after an exception. Only the plain call form is taken over (no attention mask, no sgm
``additional_tokens`` or cross-frame attention); any other call goes to the previous forward.

A context passed to attn1 (ControlNet reference-only passes ``cat([x] + reference tokens)``) is
kept: the row's own keys/values come from it, as that extension intends, while the bank records
the K/V of ``x`` itself, the spatial tokens the FASA mask indexes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .engine import AttentionEngine
from .layers import diffusers_layer_keys, token_grid
from .types import LayerKey, RowRole, check_layer_key

_ATTENTION_ATTRIBUTES = ("heads", "scale", "to_q", "to_k", "to_v", "to_out")

KVInputs = Callable[[Tensor], tuple[Tensor, Tensor]]
"""What a host feeds ``to_k`` and ``to_v`` for a context (A1111 applies its hypernetworks there)."""


def same_inputs(context: Tensor) -> tuple[Tensor, Tensor]:
    return context, context
_LDM_PARAMETERS = ("x", "context", "mask", "additional_tokens", "n_times_crossframe_attn_in_self")


class RowTracker:
    """Roles of the rows each module sees when one denoiser call is split into several UNet calls.

    ``begin_call`` on the engine announces the roles of the whole call; every module keeps a running
    row offset, so a module call with batch b gets ``roles[offset:offset + b]``. Offsets start again
    at 0 with the engine's next ``begin_call``. Chunks must arrive in row order (A1111 does this).
    """

    def __init__(self, engine: AttentionEngine) -> None:
        self._engine = engine
        self._serial = -1
        self._offsets: dict[Hashable, int] = {}

    def take(self, module_key: Hashable, batch: int) -> tuple[RowRole, ...]:
        """The roles of the next ``batch`` rows seen by ``module_key`` in the current denoiser call."""
        engine = self._engine
        if engine.call_serial != self._serial:
            self._serial = engine.call_serial
            self._offsets.clear()
        start = self._offsets.get(module_key, 0)
        end = start + batch
        if end > len(engine.roles):
            raise RuntimeError(
                f"{module_key}: {end} rows arrived in this denoiser call, "
                f"begin_call announced {len(engine.roles)}"
            )
        self._offsets[module_key] = end
        return engine.roles[start:end]


def _route(
    engine: AttentionEngine,
    tracker: RowTracker,
    layer: LayerKey,
    is_self: bool,
    attn: nn.Module,
    x: Tensor,
    context: Tensor | None,
    call_original: Callable[[], Tensor],
    call_plain: Callable[[Tensor, Tensor | None], Tensor],
    kv_inputs: KVInputs = same_inputs,
) -> Tensor:
    """One wanted attention call. ``call_original()`` runs the previous forward with the caller's exact
    arguments; ``call_plain(x_rows, context_rows)`` runs it on a subset of rows.

    A failure in our own work never breaks the host's sampling: the engine records it and goes inert
    (``engine.fail``), and this call takes the original path.
    """
    if engine.records(is_self):
        out = call_original()
        try:
            _record(engine, tracker, layer, is_self, attn, x, context, kv_inputs)
        except Exception as error:
            engine.fail(error)
        return out
    try:
        cured = _cure(engine, tracker, layer, attn, x, context, call_plain, kv_inputs)
    except Exception as error:
        engine.fail(error)
        cured = None
    return call_original() if cured is None else cured


def _record(engine: AttentionEngine, tracker: RowTracker, layer: LayerKey, is_self: bool, attn: nn.Module,
            x: Tensor, context: Tensor | None, kv_inputs: KVInputs) -> None:
    rows = tracker.take((layer, is_self), x.shape[0])
    cond = [row for row, role in enumerate(rows) if role.cond]
    if not cond:
        return
    cond_roles = [rows[row] for row in cond]
    grid = token_grid(engine.latent_hw, x.shape[1])  # fails early when tokens were merged or tiled
    with torch.no_grad():
        x_cond = x[cond]
        if is_self:
            k_in, v_in = kv_inputs(x_cond)
            engine.observe_self(layer, attn.to_k(k_in), attn.to_v(v_in), cond_roles)
        elif context is not None:
            if engine.mode == "one-pass":
                # An identity switched per row acts on whole batches only: project them all, then pick the rows.
                q, k = attn.to_q(x)[cond], attn.to_k(kv_inputs(context)[0])[cond]
            else:
                q, k = attn.to_q(x_cond), attn.to_k(kv_inputs(context[cond])[0])
            engine.observe_cross(layer, q, k, attn.heads, attn.scale, cond_roles, grid)


def _cure(engine: AttentionEngine, tracker: RowTracker, layer: LayerKey, attn: nn.Module, x: Tensor,
          context: Tensor | None, call_plain: Callable[[Tensor, Tensor | None], Tensor],
          kv_inputs: KVInputs) -> Tensor | None:
    """FASA output for the whole batch, or None when no row is cured (the caller takes the original path)."""
    if engine.mode == "one-pass":
        return _cure_whole_batch(engine, tracker, layer, attn, x, context, kv_inputs)
    rows = tracker.take((layer, True), x.shape[0])
    cond = [row for row, role in enumerate(rows) if role.cond]
    if not cond:
        return None
    cond_roles = [rows[row] for row in cond]
    grid = token_grid(engine.latent_hw, x.shape[1])
    source = (x if context is None else context)[cond]
    x_cond = x[cond]
    k_in, v_in = kv_inputs(source)
    q, k, v = attn.to_q(x_cond), attn.to_k(k_in), attn.to_v(v_in)
    result = engine.fasa_rows(layer, q, k, v, attn.heads, attn.scale, cond_roles, grid)
    if result is None:
        return None
    handled = [cond[i] for i in result[0]]
    fasa_out = result[1]
    for module in attn.to_out:  # Linear, Dropout
        fasa_out = module(fasa_out)
    if len(handled) == x.shape[0]:
        return fasa_out
    handled_set = set(handled)
    rest = [row for row in range(x.shape[0]) if row not in handled_set]
    plain = call_plain(x[rest], None if context is None else context[rest])
    out = plain.new_empty((x.shape[0], *plain.shape[1:]))
    out[rest] = plain
    out[handled] = fasa_out.to(plain.dtype)
    return out


def _cure_whole_batch(engine: AttentionEngine, tracker: RowTracker, layer: LayerKey, attn: nn.Module, x: Tensor,
                      context: Tensor | None, kv_inputs: KVInputs) -> Tensor | None:
    """One-pass mode: the projections see the whole batch, since the identity is switched per row of it (a
    subset would meet the wrong rows' switches); the rows FASA leaves (unconditional and foundation rows) get
    plain attention from the same projections."""
    rows = tracker.take((layer, True), x.shape[0])
    grid = token_grid(engine.latent_hw, x.shape[1])
    k_in, v_in = kv_inputs(x if context is None else context)
    q, k, v = attn.to_q(x), attn.to_k(k_in), attn.to_v(v_in)
    result = engine.fasa_rows(layer, q, k, v, attn.heads, attn.scale, rows, grid)
    if result is None:
        return None
    handled, fasa_out = result
    out = q.new_empty(q.shape)
    out[handled] = fasa_out.to(q.dtype)
    taken = set(handled)
    rest = [row for row in range(x.shape[0]) if row not in taken]
    if rest:
        out[rest] = _attention(q[rest], k[rest], v[rest], attn.heads, attn.scale)
    for module in attn.to_out:  # Linear, Dropout
        out = module(out)
    return out


def _attention(q: Tensor, k: Tensor, v: Tensor, heads: int, scale: float) -> Tensor:
    """Plain multi-head attention of (B, N, C) projections, (B, N, C) before ``to_out``."""
    batch, n_queries, channels = q.shape
    q, k, v = (t.view(batch, -1, heads, channels // heads).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    return out.transpose(1, 2).reshape(batch, n_queries, channels)


def _check_attention(module: object, where: str) -> nn.Module:
    if not isinstance(module, nn.Module) or not all(hasattr(module, a) for a in _ATTENTION_ATTRIBUTES):
        raise ValueError(f"{where} must be an attention module with {', '.join(_ATTENTION_ATTRIBUTES)}")
    return module


def _plain_ldm_call(args: tuple, kwargs: dict) -> tuple[Tensor, Tensor | None] | None:
    """(x, context) when an ldm/sgm forward call has the plain form we may take over, else None."""
    if len(args) > len(_LDM_PARAMETERS):
        return None
    bound: dict[str, Any] = dict(zip(_LDM_PARAMETERS, args, strict=False))
    for name, value in kwargs.items():
        if name not in _LDM_PARAMETERS or name in bound:
            return None
        bound[name] = value
    if (
        bound.get("mask") is not None
        or bound.get("additional_tokens") is not None
        or bound.get("n_times_crossframe_attn_in_self")
    ):
        return None
    x, context = bound.get("x"), bound.get("context")
    if not isinstance(x, Tensor) or x.ndim != 3:
        return None
    if context is None or (isinstance(context, Tensor) and context.ndim == 3 and len(context) == len(x)):
        return x, context
    return None


class _ModuleForward:
    """The instance forward of one module. ``previous`` is the instance forward found there (None: the class
    forward, looked up at call time, since the WebUI swaps it with its optimizers); ``forward_beneath`` may
    replace it for a while."""

    def __init__(self, engine: AttentionEngine, tracker: RowTracker, layer: LayerKey, is_self: bool,
                 module: nn.Module, previous: Callable[..., Tensor] | None, kv_inputs: KVInputs) -> None:
        self.engine, self.tracker, self.layer, self.is_self = engine, tracker, layer, is_self
        self.module, self.previous, self.kv_inputs = module, previous, kv_inputs

    def call_previous(self, *args: Any, **kwargs: Any) -> Tensor:
        if self.previous is None:
            return type(self.module).forward(self.module, *args, **kwargs)
        return self.previous(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        if not self.engine.wants(self.layer, self.is_self):
            return self.call_previous(*args, **kwargs)
        plain_call = _plain_ldm_call(args, kwargs)
        if plain_call is None:
            return self.call_previous(*args, **kwargs)
        x, context = plain_call
        return _route(
            self.engine,
            self.tracker,
            self.layer,
            self.is_self,
            self.module,
            x,
            context,
            lambda: self.call_previous(*args, **kwargs),
            lambda x_rows, context_rows: (
                self.call_previous(x_rows) if context_rows is None
                else self.call_previous(x_rows, context=context_rows)
            ),
            self.kv_inputs,
        )


_ABSENT = object()


@contextmanager
def _installed_module_forwards(
    engine: AttentionEngine, modules: Mapping[LayerKey, tuple[nn.Module, nn.Module]], tracker: RowTracker,
    kv_inputs: KVInputs,
) -> Iterator[None]:
    saved: list[tuple[nn.Module, object]] = []
    try:
        seen: set[int] = set()
        for layer, pair in modules.items():
            check_layer_key(layer, "modules")
            if len(pair) != 2:
                raise ValueError(f"modules[{layer}] must be a pair (attn1, attn2)")
            for module, is_self, label in ((pair[0], True, "attn1"), (pair[1], False, "attn2")):
                _check_attention(module, f"modules[{layer}] {label}")
                if id(module) in seen:
                    raise ValueError(f"modules[{layer}] {label} is given twice")
                seen.add(id(module))
                previous = module.__dict__.get("forward", _ABSENT)
                saved.append((module, previous))
                module.__dict__["forward"] = _ModuleForward(
                    engine, tracker, layer, is_self, module, None if previous is _ABSENT else previous, kv_inputs
                )
        yield
    finally:
        for module, previous in reversed(saved):
            if previous is _ABSENT:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = previous


def intercept_modules(
    engine: AttentionEngine, modules: Mapping[LayerKey, tuple[nn.Module, nn.Module]], tracker: RowTracker,
    kv_inputs: KVInputs = same_inputs,
) -> AbstractContextManager[None]:
    """Per-instance forward wrappers on the (attn1, attn2) of each layer (ldm and sgm signatures).
    ``kv_inputs`` gives what our own keys/values project, as the host's forwards do.

    An instance forward already there (ControlNet's IP-Adapter puts one on attn2) is called for every
    call we do not take over; without one, the class forward is looked up at call time. On exit each
    module's instance ``forward`` is exactly as before: the same object, or absent.
    """
    return _installed_module_forwards(engine, modules, tracker, kv_inputs)


@contextmanager
def forward_beneath(module: nn.Module, forward: Callable[..., Tensor]) -> Iterator[None]:
    """For the duration, ``module`` runs ``forward`` where it ran its instance forward: beneath our interceptor
    when one is installed (which stays and keeps routing), else as the module's instance forward. The host side
    uses it to take another extension's forward out for a pass without taking ours out with it."""
    installed = module.__dict__.get("forward", _ABSENT)
    if isinstance(installed, _ModuleForward):
        saved, installed.previous = installed.previous, forward
        try:
            yield
        finally:
            installed.previous = saved
        return
    module.__dict__["forward"] = forward
    try:
        yield
    finally:
        if installed is _ABSENT:
            module.__dict__.pop("forward", None)
        else:
            module.__dict__["forward"] = installed


def _diffusers_structure_is_plain(attn: nn.Module) -> bool:
    """Whether a diffusers ``Attention`` is plain q/k/v attention plus to_out (true for UNet blocks)."""
    return (
        getattr(attn, "spatial_norm", None) is None
        and getattr(attn, "group_norm", None) is None
        and getattr(attn, "norm_q", None) is None
        and getattr(attn, "norm_k", None) is None
        and not getattr(attn, "norm_cross", False)
        and not getattr(attn, "residual_connection", False)
        and getattr(attn, "rescale_output_factor", 1.0) == 1.0
    )


class _DiffusersProcessor:
    """Wraps the previous processor of one diffusers attention module."""

    def __init__(
        self, engine: AttentionEngine, tracker: RowTracker, layer: LayerKey, is_self: bool, previous: Any
    ) -> None:
        self.engine, self.tracker, self.previous = engine, tracker, previous
        self.layer, self.is_self = layer, is_self

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        if temb is not None:
            kwargs["temb"] = temb

        def call_original() -> Tensor:
            return self.previous(
                attn,
                hidden_states,
                *args,
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=attention_mask,
                **kwargs,
            )

        if (
            not self.engine.wants(self.layer, self.is_self)
            or args
            or kwargs
            or attention_mask is not None
            or hidden_states.ndim != 3
            or (encoder_hidden_states is not None and len(encoder_hidden_states) != len(hidden_states))
        ):
            return call_original()
        return _route(
            self.engine,
            self.tracker,
            self.layer,
            self.is_self,
            attn,
            hidden_states,
            encoder_hidden_states,
            call_original,
            lambda x_rows, context_rows: self.previous(attn, x_rows, encoder_hidden_states=context_rows),
        )


@contextmanager
def processors_replaced(model: nn.Module, wrap: Callable[[dict[str, Any]], dict[str, Any]]) -> Iterator[None]:
    """Diffusers attention processors replaced by ``wrap(previous)`` (name -> processor, only those it
    changes) for the duration; on exit every module has its previous processor object back."""
    previous = dict(model.attn_processors)
    replacement = {**previous, **wrap(previous)}
    try:
        model.set_attn_processor(replacement)  # diffusers pops from the dict it is given: pass copies
        yield
    finally:
        model.set_attn_processor(dict(previous))


def _installed_processors(
    engine: AttentionEngine, unet: nn.Module, tracker: RowTracker
) -> AbstractContextManager[None]:
    def wrap(previous: dict[str, Any]) -> dict[str, Any]:
        wrapped = {}
        for module_name, (layer, is_self) in diffusers_layer_keys(unet).items():
            name = f"{module_name}.processor"
            if name in previous and _diffusers_structure_is_plain(unet.get_submodule(module_name)):
                wrapped[name] = _DiffusersProcessor(engine, tracker, layer, is_self, previous[name])
        return wrapped

    return processors_replaced(unet, wrap)


def intercept_diffusers(
    engine: AttentionEngine, unet: nn.Module, tracker: RowTracker
) -> AbstractContextManager[None]:
    """The same routing through diffusers attention processors (``set_attn_processor``); on exit every
    module has its previous processor object back."""
    return _installed_processors(engine, unet, tracker)
