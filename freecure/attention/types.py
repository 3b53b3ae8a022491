"""Small value types shared by the attention engine: layer keys, row roles, progress windows."""

from __future__ import annotations

import math
from dataclasses import dataclass

LayerKey = tuple[str, int, int]
"""``("input" | "middle" | "output", block, transformer_index)`` in ldm naming (the middle block is 0), or
``("double" | "single", block, 0)`` for the double- and single-stream blocks of a joint-attention DiT (FLUX)."""

UNET_SECTIONS = ("input", "middle", "output")
DIT_SECTIONS = ("double", "single")
SECTIONS = UNET_SECTIONS + DIT_SECTIONS  # also the execution order


@dataclass(frozen=True)
class RowRole:
    """Role of one batch row in one denoiser call: conditional or not, which image it belongs to, for a
    conditional row which AND sub-prompt of the image's prompt is its context (``part``, 0 without AND), and
    whether it is a foundation row riding in the personalized pass's calls (one-pass mode)."""

    cond: bool
    image: int
    part: int = 0
    foundation: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.cond, bool):
            raise TypeError(f"RowRole.cond must be a bool, got {self.cond!r}")
        if isinstance(self.image, bool) or not isinstance(self.image, int) or self.image < 0:
            raise ValueError(f"RowRole.image must be an int >= 0, got {self.image!r}")
        if isinstance(self.part, bool) or not isinstance(self.part, int) or self.part < 0:
            raise ValueError(f"RowRole.part must be an int >= 0, got {self.part!r}")
        if not isinstance(self.foundation, bool):
            raise TypeError(f"RowRole.foundation must be a bool, got {self.foundation!r}")


def check_layer_key(key: object, field: str) -> LayerKey:
    """Return ``key`` as a LayerKey or raise an error naming ``field`` and the accepted form."""
    if (
        isinstance(key, tuple)
        and len(key) == 3
        and key[0] in SECTIONS
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in key[1:])
    ):
        return key  # type: ignore[return-value]
    raise ValueError(
        f"{field}: {key!r} is not a layer key; expected (section, block, transformer_index) "
        f"with section in {SECTIONS} and non-negative ints"
    )


def check_progress_range(progress_range: tuple[float, float], field: str) -> tuple[float, float]:
    """Validate a ``(start, end)`` window of the schedule, fractions with 0 <= start <= end <= 1."""
    try:
        start, end = (float(v) for v in progress_range)
    except (TypeError, ValueError):
        raise ValueError(f"{field} must be a pair (start, end) of numbers, got {progress_range!r}") from None
    if not (math.isfinite(start) and math.isfinite(end) and 0.0 <= start <= end <= 1.0):
        raise ValueError(f"{field} must satisfy 0 <= start <= end <= 1, got {progress_range!r}")
    return start, end


def in_progress_range(progress: float, progress_range: tuple[float, float]) -> bool:
    """Half-open window [start, end); an end of 1 runs through the last call of the schedule."""
    start, end = progress_range
    return start <= progress and (progress < end or end >= 1.0)
