"""Reusing a foundation pass across jobs: what it produced, kept in CPU memory under a key of its inputs.

X/Y/Z cells that vary only cure settings (strength, method, layers, step window, mask settings) and a second
"Generate" with the same seed would otherwise sample the same identity-off pass again. The key is a digest of
every input of the foundation pass (the WebUI adapter decides which, ``freecure.webui.foundation_key``); a
record is reused only when it also covers what this cure reads (the banked layers, noise-blending predictions).
Records live in CPU memory, least recently used first out, within ``max_bytes``.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from freecure.attention import KVBank, LayerKey

_MAX_DEPTH = 8


def digest(value: Any) -> str:
    """A stable hex digest of nested plain data, tensors, numpy arrays and PIL images (by content, never by a
    repr that numpy would shorten). Objects are digested by their attributes; what cannot be read that way by
    its ``repr``, which for most objects names their address, so an unknown object makes the key miss rather
    than hit wrongly."""
    hasher = hashlib.sha256()
    _feed(hasher, value, 0)
    return hasher.hexdigest()


def _feed(hasher: Any, value: Any, depth: int) -> None:
    def tag(name: str) -> None:
        hasher.update(name.encode() + b"\0")

    if depth > _MAX_DEPTH:
        tag("deep")
        hasher.update(repr(value).encode())
    elif value is None or isinstance(value, (bool, int, float, str, bytes)):
        tag(type(value).__name__)
        hasher.update(repr(value).encode())
    elif isinstance(value, Tensor):
        array = value.detach().to("cpu").contiguous()
        tag(f"tensor{tuple(array.shape)}{array.dtype}")
        hasher.update(array.view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    elif isinstance(value, np.ndarray):
        tag(f"ndarray{value.shape}{value.dtype}")
        hasher.update(np.ascontiguousarray(value).tobytes())
    elif hasattr(value, "tobytes") and hasattr(value, "mode") and hasattr(value, "size"):  # PIL image
        tag(f"image{value.mode}{value.size}")
        hasher.update(value.tobytes())
    elif isinstance(value, Mapping):
        tag(f"map{len(value)}")
        for key in sorted(value, key=repr):
            _feed(hasher, key, depth + 1)
            _feed(hasher, value[key], depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        tag(f"{type(value).__name__}{len(items)}")
        for item in items:
            _feed(hasher, item, depth + 1)
    elif is_dataclass(value) and not isinstance(value, type):
        tag(type(value).__qualname__)
        _feed(hasher, {f.name: getattr(value, f.name) for f in fields(value)}, depth + 1)
    elif hasattr(value, "__dict__") and not callable(value):
        tag(type(value).__qualname__)
        _feed(hasher, {k: v for k, v in vars(value).items() if not k.startswith("_")}, depth + 1)
    else:
        tag("repr")
        hasher.update(repr(value).encode())
    hasher.update(struct.pack("<I", depth))


def _to_cpu(tensor: Tensor) -> Tensor:
    return tensor.detach().to("cpu", copy=True)


def _nbytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()


@dataclass(frozen=True)
class FoundationRecord:
    """What a foundation pass produced, on the CPU. ``bank`` is None when no K/V were banked;
    ``predictions`` are the (x_t, guided x0) of every call (what noise blending reads)."""

    latents: Tensor
    images: Tensor
    maps: Mapping[str, Tensor]
    bank: KVBank | None
    bank_layers: frozenset[LayerKey]
    predictions: tuple[tuple[Tensor, Tensor], ...]
    calls: int
    notes: tuple[str, ...]

    @classmethod
    def capture(cls, *, latents: Tensor, images: Tensor, maps: Mapping[str, Tensor], bank: KVBank | None,
                bank_layers: frozenset[LayerKey], predictions: list[tuple[Tensor, Tensor]], calls: int,
                notes: tuple[str, ...]) -> FoundationRecord:
        return cls(
            latents=_to_cpu(latents),
            images=_to_cpu(images),
            maps={name: _to_cpu(m) for name, m in maps.items()},
            bank=bank.offloaded() if bank is not None else None,
            bank_layers=frozenset(bank_layers),
            predictions=tuple((_to_cpu(x), _to_cpu(x0)) for x, x0 in predictions),
            calls=calls,
            notes=notes,
        )

    def covers(self, bank_layers: frozenset[LayerKey], needs_predictions: bool) -> bool:
        """Whether this record holds what a cure reading ``bank_layers`` (and predictions) needs."""
        if bank_layers and (self.bank is None or not bank_layers <= self.bank_layers):
            return False
        return bool(self.predictions) or not needs_predictions

    @property
    def nbytes(self) -> int:
        tensors = [self.latents, self.images, *self.maps.values(), *(t for pair in self.predictions for t in pair)]
        return sum(map(_nbytes, tensors)) + (self.bank.nbytes if self.bank is not None else 0)


class FoundationCache:
    """Least-recently-used foundation records within ``max_bytes`` of CPU memory (0: keep nothing)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = 0
        self._records: OrderedDict[str, FoundationRecord] = OrderedDict()
        self.resize(max_bytes)

    def __len__(self) -> int:
        return len(self._records)

    @property
    def nbytes(self) -> int:
        return sum(record.nbytes for record in self._records.values())

    def resize(self, max_bytes: int) -> None:
        """Change the limit (from the settings page), dropping the oldest records that no longer fit."""
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._evict()

    def get(self, key: str) -> FoundationRecord | None:
        record = self._records.get(key)
        if record is not None:
            self._records.move_to_end(key)
        return record

    def put(self, key: str, record: FoundationRecord) -> bool:
        """Keep ``record`` under ``key``; False (and nothing kept) when it alone exceeds the limit."""
        self._records.pop(key, None)
        if record.nbytes > self.max_bytes:
            return False
        self._records[key] = record
        self._evict()
        return True

    def clear(self) -> None:
        self._records.clear()

    def _evict(self) -> None:
        total = self.nbytes
        while self._records and total > self.max_bytes:
            _, oldest = self._records.popitem(last=False)
            total -= oldest.nbytes
