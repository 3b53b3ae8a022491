"""The attention engine: the one router between intercepted attention layers and FreeCure's work.

The host announces every denoiser call with ``begin_call`` (row roles, latent size, progress); the
interceptors ask ``wants(layer, is_self)`` and call the original forward when it is False. Three modes,
entered as context managers: ``recording`` (foundation pass: bank self-attention K/V, record
cross-attention maps, output untouched), ``curing`` (cure pass: FASA on chosen self-attention layers with
the banked K/V) and ``one_pass`` (foundation rows in the personalized pass's calls: their cross-attention
recorded, and FASA, once ``start_fasa`` gives it masks, reading their K/V in the same call, no bank).
Outside them the engine is inert.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import Tensor

from .bank import KVBank
from .fasa import FasaSettings, fasa_attention, logit_bias, mask_tokens
from .recorder import CrossAttentionRecorder
from .types import LayerKey, RowRole, check_layer_key

_NO_LAYERS: frozenset[LayerKey] = frozenset()


class AttentionEngine:
    """Routes intercepted attention calls; see the module docstring."""

    def __init__(self) -> None:
        self.mode: str | None = None  # "recording" | "curing" | None
        self.call_index = -1
        self.call_serial = 0  # counts every begin_call, never reset: lets RowTracker spot a new call
        self.roles: tuple[RowRole, ...] = ()
        self.latent_hw: tuple[int, int] = (0, 0)
        self.progress = 0.0
        self._self_layers = _NO_LAYERS
        self._cross_layers = _NO_LAYERS
        self._all_cross = False
        self._bank: KVBank | None = None
        self._bank_layers = _NO_LAYERS
        self._recorder: CrossAttentionRecorder | None = None
        self._settings: FasaSettings | None = None
        self._fasa_can_change = False
        self._banked: set[tuple[LayerKey, int]] = set()
        self._mask_cache: dict[tuple[tuple[int, int], int, torch.device], tuple[Tensor, Tensor | None]] = {}
        self._bias_cache: dict[tuple, Tensor] = {}
        self.failure: Exception | None = None  # the first error in our own attention work this pass
        self.source_misses = 0  # one-pass: cured rows whose image had no foundation row in their module call

    # ----- modes -------------------------------------------------------------------------------

    @contextmanager
    def _mode(self, mode: str) -> Iterator[None]:
        if self.mode is not None:
            raise RuntimeError(f"the attention engine is already {self.mode}; modes do not nest")
        self.mode = mode
        self.call_index = -1
        self.failure = None
        self.source_misses = 0
        self._route_nothing()
        try:
            yield
        finally:
            self.mode = None
            self._route_nothing()
            self._bank = self._recorder = self._settings = None
            self._bank_layers = _NO_LAYERS
            self._mask_cache.clear()
            self._bias_cache.clear()
            self._banked.clear()

    def recording(
        self,
        bank: KVBank | None,
        bank_layers: Collection[LayerKey],
        recorder: CrossAttentionRecorder | None,
    ) -> AbstractContextManager[None]:
        """Foundation pass: bank the K/V of ``bank_layers`` (cond rows) and feed ``recorder``."""
        if bank is not None and not isinstance(bank, KVBank):
            raise TypeError(f"bank must be a KVBank or None, got {type(bank).__name__}")
        if recorder is not None and not isinstance(recorder, CrossAttentionRecorder):
            raise TypeError(f"recorder must be a CrossAttentionRecorder or None, got {type(recorder)}")
        layers = frozenset(check_layer_key(key, "bank_layers") for key in bank_layers)

        @contextmanager
        def session() -> Iterator[None]:
            with self._mode("recording"):
                self._bank, self._bank_layers, self._recorder = bank, layers, recorder
                yield

        return session()

    def curing(self, settings: FasaSettings, bank: KVBank) -> AbstractContextManager[None]:
        """Cure pass: FASA on ``settings.layers`` with the foundation K/V from ``bank``."""
        if not isinstance(settings, FasaSettings):
            raise TypeError(f"settings must be FasaSettings, got {type(settings).__name__}")
        if not isinstance(bank, KVBank):
            raise TypeError(f"bank must be a KVBank, got {type(bank).__name__}")

        @contextmanager
        def session() -> Iterator[None]:
            with self._mode("curing"):
                self._settings, self._bank = settings, bank
                self._fasa_can_change = settings.can_change_output()
                yield

        return session()

    def one_pass(self, recorder: CrossAttentionRecorder | None) -> AbstractContextManager[None]:
        """One-pass mode: ``recorder`` gets the foundation rows' cross-attention; FASA starts with
        ``start_fasa``."""
        if recorder is not None and not isinstance(recorder, CrossAttentionRecorder):
            raise TypeError(f"recorder must be a CrossAttentionRecorder or None, got {type(recorder)}")

        @contextmanager
        def session() -> Iterator[None]:
            with self._mode("one-pass"):
                self._recorder = recorder
                yield

        return session()

    def start_fasa(self, settings: FasaSettings) -> None:
        """One-pass mode: FASA with ``settings`` from the next ``begin_call`` on, the foundation K/V taken from
        the foundation rows of each call."""
        if self.mode != "one-pass":
            raise RuntimeError(f"start_fasa is for one-pass mode; the engine is {self.mode or 'inert'}")
        if not isinstance(settings, FasaSettings):
            raise TypeError(f"settings must be FasaSettings, got {type(settings).__name__}")
        self._settings = settings
        self._fasa_can_change = settings.can_change_output()

    def records(self, is_self: bool) -> bool:
        """Whether a wanted attention call of this kind is observed (its output the original) rather than
        cured: every call while recording; the cross-attention calls in one-pass mode."""
        return self.mode == "recording" or (self.mode == "one-pass" and not is_self)

    # ----- per denoiser call -------------------------------------------------------------------

    def begin_call(self, roles: Sequence[RowRole], latent_hw: tuple[int, int], progress: float) -> None:
        """Announce one denoiser call: the role of every row (over all its UNet calls), latent size,
        and progress = fraction of the schedule done (0 at the first call)."""
        roles = tuple(roles)
        if not roles or not all(isinstance(role, RowRole) for role in roles):
            raise ValueError(f"roles must be a non-empty sequence of RowRole, got {roles!r}")
        sizes_ok = all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in latent_hw)
        if len(latent_hw) != 2 or not sizes_ok:
            raise ValueError(f"latent_hw must be two positive ints (h, w), got {latent_hw!r}")
        if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be a number in [0, 1], got {progress!r}")
        self.call_index += 1
        self.call_serial += 1
        self.roles, self.latent_hw, self.progress = roles, tuple(latent_hw), float(progress)
        self._banked.clear()
        self._route_nothing()
        if self.failure is not None or not any(role.cond for role in roles):
            return
        if self.mode == "recording" and self._bank is not None:
            self._self_layers = self._bank_layers
        recorder = self._recorder
        if self.mode in ("recording", "one-pass") and recorder is not None and recorder.active_at(progress):
            self._all_cross = recorder.layers is None
            self._cross_layers = recorder.layers or _NO_LAYERS
        settings = self._settings
        curing = self.mode in ("curing", "one-pass") and settings is not None and self._fasa_can_change
        if curing and settings.active_at(progress):
            self._self_layers = settings.layers

    def fail(self, error: Exception) -> None:
        """Record a failure of our own attention work and route nothing for the rest of the pass: the host's
        sampling goes on with plain attention, and the pipeline reports the pass as failed."""
        if self.failure is None:
            self.failure = error
        self._route_nothing()

    def _route_nothing(self) -> None:
        self._self_layers = self._cross_layers = _NO_LAYERS
        self._all_cross = False

    def wants(self, layer: LayerKey, is_self: bool) -> bool:
        """Hot path: True only if this layer has work in the current call (False when inert)."""
        if is_self:
            return layer in self._self_layers
        return self._all_cross or layer in self._cross_layers

    # ----- called by interceptors --------------------------------------------------------------

    def observe_self(self, layer: LayerKey, k: Tensor, v: Tensor, rows: Sequence[RowRole]) -> None:
        """Recording: bank the K/V (B, N, C) of the conditional rows. With several conditional rows
        of one image in a call (AND prompts), the first one is banked."""
        if self.mode != "recording" or self._bank is None or layer not in self._bank_layers:
            return
        for row, role in enumerate(rows):
            if role.cond and (layer, role.image) not in self._banked:
                self._bank.put(layer, self.call_index, role.image, k[row], v[row])
                self._banked.add((layer, role.image))

    def observe_cross(
        self,
        layer: LayerKey,
        q: Tensor,
        k: Tensor,
        heads: int,
        scale: float,
        rows: Sequence[RowRole],
        grid: tuple[int, int],
    ) -> None:
        """Recording: give the recorder the conditional rows' q (B, N, C) and context keys k (B, L, C); in
        one-pass mode the foundation rows' only."""
        if not self.records(False) or self._recorder is None or not self.wants(layer, False):
            return
        one_pass = self.mode == "one-pass"
        cond = [row for row, role in enumerate(rows) if role.cond and (role.foundation or not one_pass)]
        if cond:
            # The call index is the WebUI denoiser's ``step``: the prompt schedule entry each row's context is from.
            roles = [rows[row] for row in cond]
            self._recorder.observe(q[cond], k[cond], heads, scale, roles, self.call_index, grid, self.latent_hw)

    def fasa_rows(
        self,
        layer: LayerKey,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        heads: int,
        scale: float,
        rows: Sequence[RowRole],
        grid: tuple[int, int],
        image_tokens_last: bool = False,
    ) -> tuple[list[int], Tensor] | None:
        """Curing and one-pass mode: FASA for the conditional rows that can use it.

        q: (B, N, C); k, v: (B, M, C) the rows' own keys/values (M = N, or more when another extension
        passes a context to attn1). Returns (row indices handled, their output (len, N, C) before
        ``to_out``), or None when no row is handled. A row is left to the caller's plain path when it
        is unconditional or a foundation row, its image's mask is empty on this grid, or its foundation K/V
        are missing: no bank entry (counted in ``bank.misses``) or, in one-pass mode, no foundation row of
        its image among ``rows`` (counted in ``source_misses``). The foundation contributes only its N spatial
        tokens, selected by the mask: the first N of k, v, or the last N with ``image_tokens_last`` (joint
        attention, text tokens first).
        """
        if self.mode not in ("curing", "one-pass") or layer not in self._self_layers:
            return None
        assert self._settings is not None
        handled: list[int] = []
        outputs: list[Tensor] = []
        n_grid = grid[0] * grid[1]
        sources: dict[int, int] = {}  # one-pass: image -> its first foundation conditional row here
        for row, role in enumerate(rows):
            if role.cond and role.foundation:
                sources.setdefault(role.image, row)
        for row, role in enumerate(rows):
            if not role.cond or role.foundation:
                continue
            tokens, token_weights = self._tokens_in_mask(role.image, grid, q.device)
            if tokens.numel() == 0:
                continue
            found = self._foundation_kv(layer, role.image, k, v, sources, tokens, n_grid, image_tokens_last)
            if found is None:
                continue
            k_found, v_found = found
            if k_found.shape[1] != k.shape[-1]:
                raise ValueError(f"bank entry for {layer} has {k_found.shape[1]} channels, expected {k.shape[-1]}")
            weight = self._settings.weight
            if token_weights is not None:
                weight = self._bias((grid, role.image, k.shape[1], q.dtype, q.device), token_weights)
            outputs.append(fasa_attention(q[row], k[row], v[row], k_found, v_found, heads, scale, weight))
            handled.append(row)
        if not handled:
            return None
        return handled, torch.stack(outputs)

    def _foundation_kv(self, layer: LayerKey, image: int, k: Tensor, v: Tensor, sources: dict[int, int],
                       tokens: Tensor, n_grid: int, image_tokens_last: bool) -> tuple[Tensor, Tensor] | None:
        """The foundation's in-mask K/V of ``image``: from the bank, or in one-pass mode from the image's
        foundation row in this module call."""
        if self.mode == "curing":
            assert self._bank is not None
            return self._bank.get(layer, self.call_index, image, k.device, k.dtype, tokens, n_grid)
        row = sources.get(image)
        if row is None:
            self.source_misses += 1
            return None
        spatial = slice(k.shape[1] - n_grid, None) if image_tokens_last else slice(0, n_grid)
        return k[row, spatial][tokens], v[row, spatial][tokens]

    def _tokens_in_mask(
        self, image: int, grid: tuple[int, int], device: torch.device
    ) -> tuple[Tensor, Tensor | None]:
        """The image's in-mask token indices on ``grid`` and their weights (None: all take w)."""
        key = (grid, image, device)
        cached = self._mask_cache.get(key)
        if cached is None:
            assert self._settings is not None
            masks = self._settings.masks
            if image >= len(masks):
                raise ValueError(f"FasaSettings.masks: {len(masks)} mask(s), but a row is image {image}")
            tokens = mask_tokens(masks[image], grid)
            cached = tokens.to(device), self._settings.token_weights(image, tokens, grid)
            self._mask_cache[key] = cached
        return cached

    def _bias(self, key: tuple, token_weights: Tensor) -> Tensor:
        """The (own + S,) logit bias of a row (see ``fasa.logit_bias``), built once per grid, image and dtype."""
        bias = self._bias_cache.get(key)
        if bias is None:
            _grid, _image, own, dtype, device = key
            bias = self._bias_cache[key] = logit_bias(own, token_weights, device, dtype)
        return bias
