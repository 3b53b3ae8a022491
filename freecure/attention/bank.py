"""Key/value bank: self-attention keys and values of the foundation pass, read back in the cure pass."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .types import LayerKey

_BankKey = tuple[LayerKey, int, int]


class KVBank:
    """K/V of chosen self-attention layers, conditional rows only, keyed by (layer, call_index, image).

    Tensors are stored as given to ``put`` (projected, before the head split, shape (N, C)) in ``dtype``
    (None: the dtype they come in, the one attention computes in, whatever dtype the weights are stored in),
    on the device they come from while ``device_budget`` bytes allow (None: no limit). With ``offload``, and
    for whatever exceeds the budget, they live in CPU memory (pinned when CUDA is available, so the copies
    are asynchronous) and are brought to the requested device on each ``get``.

    ``device_budget`` may also be a function of the device the first K/V come from, called at the first
    ``put``: the device attention runs on, when the model is loaded there for sampling (with the WebUI's
    low-VRAM modes or Forge's offload the weights are elsewhere before sampling starts).
    """

    def __init__(
        self,
        dtype: torch.dtype | None = torch.float16,
        offload: bool = False,
        device_budget: int | Callable[[torch.device], int | None] | None = None,
    ) -> None:
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        if not callable(device_budget):
            _check_budget(device_budget)
        self.dtype = dtype
        self.offload = bool(offload)
        self.device_budget = device_budget
        self.device_bytes = 0  # bytes held where the tensors came from (not offloaded)
        self.misses = 0
        self._entries: dict[_BankKey, tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _store(self, tensor: Tensor) -> Tensor:
        tensor = tensor.detach()
        dtype = self.dtype or tensor.dtype
        if not dtype.is_floating_point:
            raise ValueError(f"k and v must be floating-point tensors, got {dtype}")
        if callable(self.device_budget):
            self.device_budget = _check_budget(self.device_budget(tensor.device))
        size = tensor.numel() * torch.empty((), dtype=dtype).element_size()
        fits = self.device_budget is None or self.device_bytes + size <= self.device_budget
        if not self.offload and fits:
            self.device_bytes += size
            return tensor.to(dtype=dtype, copy=True)
        pin = torch.cuda.is_available()
        stored = torch.empty(tensor.shape, dtype=dtype, device="cpu", pin_memory=pin)
        # Into pinned memory the copy is asynchronous: the foundation pass does not wait for it. The source
        # block is not reused before the copy ran, since both are ordered on the current stream.
        stored.copy_(tensor, non_blocking=pin)
        return stored

    def put(self, layer: LayerKey, call_index: int, image: int, k: Tensor, v: Tensor) -> None:
        """Store (or replace) the K/V of one image's conditional row; ``k``, ``v``: (N, C)."""
        if k.ndim != 2 or k.shape != v.shape:
            raise ValueError(f"k and v must both be (N, C), got {tuple(k.shape)} and {tuple(v.shape)}")
        self._entries[(layer, call_index, image)] = (self._store(k), self._store(v))

    def get(
        self,
        layer: LayerKey,
        call_index: int,
        image: int,
        device: torch.device | str,
        dtype: torch.dtype,
        tokens: Tensor | None = None,
        grid_tokens: int = 0,
    ) -> tuple[Tensor, Tensor] | None:
        """K/V on ``device`` in ``dtype`` (only the rows ``tokens`` when given), or None (counted in
        ``misses``) when nothing was stored.
        ``grid_tokens``: how many tokens the caller's grid has; a shorter entry is an error (checked here,
        without a device sync, instead of an out-of-range gather)."""
        entry = self._entries.get((layer, call_index, image))
        if entry is None:
            self.misses += 1
            return None
        if entry[0].shape[0] < grid_tokens:
            raise ValueError(
                f"bank entry for {layer} has shape {tuple(entry[0].shape)}, expected at least {grid_tokens} tokens"
            )
        non_blocking = entry[0].is_pinned()
        moved = tuple(t.to(device=device, dtype=dtype, non_blocking=non_blocking) for t in entry)
        # Gather after the copy: a gather on the CPU would leave pinned memory and make the copy synchronous.
        return moved if tokens is None else tuple(t[tokens.to(t.device)] for t in moved)  # type: ignore[return-value]

    def offloaded(self) -> KVBank:
        """A bank with the same entries in CPU memory (shared where they are there already), and its own miss
        count: what a reused foundation reads from."""
        copy = KVBank(dtype=self.dtype, offload=True)
        copy._entries = {
            key: tuple(t if t.device.type == "cpu" else copy._store(t) for t in entry)  # type: ignore[misc]
            for key, entry in self._entries.items()
        }
        return copy

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored tensors."""
        return sum(t.numel() * t.element_size() for entry in self._entries.values() for t in entry)

    def clear(self) -> None:
        """Drop every entry and reset the miss count."""
        self._entries.clear()
        self.misses = 0
        self.device_bytes = 0


def _check_budget(budget: object) -> int | None:
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
        raise ValueError(f"device_budget must be bytes >= 0, None, or a function giving one, got {budget!r}")
    return budget  # type: ignore[return-value]
