"""Cross-attention recorder: how much each latent position attends to chosen prompt tokens.

Probabilities are recomputed on the side from the layer's own projections (no optimized attention
path materialises them), so the layer output is never touched.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from freecure.tokens import PromptColumns

from .types import LayerKey, RowRole, check_layer_key, check_progress_range, in_progress_range


class CrossAttentionRecorder:
    """Attention probabilities of named context columns, conditional rows, averaged over heads.

    Normalisation: one *observation* is one conditional row of one layer in one denoiser call. For it,
    the map of a name is, at every query token, the sum over the name's columns of the head-averaged
    softmax probabilities, so it lies in [0, 1], and the maps of names that partition all context
    columns sum to exactly 1 at every token. The token grid is resized bilinearly to the latent size
    (a linear, constant-preserving step, so both properties survive). ``maps()`` returns, per image,
    the mean over that image's observations: again in [0, 1], and a partition of all columns sums to 1.

    ``columns``: where each name's words are in a row's context. A mapping is the same for every row;
    :class:`~freecure.tokens.PromptColumns` gives each row (image, AND part) its own, per denoiser step
    (prompt editing): a row whose context lacks a name's words is no observation of that name.
    ``layers``: cross-attention layers to record (None = every one); ``progress_range``: the part of
    the schedule to record (see ``in_progress_range``).
    """

    def __init__(
        self,
        columns: Mapping[str, Sequence[int]] | PromptColumns,
        layers: Collection[LayerKey] | None = None,
        progress_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        if not isinstance(columns, PromptColumns):
            for name, cols in columns.items():
                cols = tuple(cols)
                if not cols or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cols):
                    raise ValueError(f"columns[{name!r}] must be a non-empty sequence of ints >= 0, got {cols!r}")
            columns = PromptColumns(every_row=columns)
        self.columns = columns
        self.names = columns.names()
        if not self.names:
            raise ValueError("columns must name at least one set of context columns")
        self.layers = None if layers is None else frozenset(check_layer_key(k, "layers") for k in layers)
        self.progress_range = check_progress_range(progress_range, "progress_range")
        self.observations = 0
        self._sums: dict[int, Tensor] = {}  # image -> (names, h_lat, w_lat) float32
        self._counts: dict[int, Tensor] = {}  # image -> (names,) observations per name
        self._latent_hw: tuple[int, int] | None = None

    def active_at(self, progress: float) -> bool:
        return in_progress_range(progress, self.progress_range)

    def observe(
        self,
        q: Tensor,
        k: Tensor,
        heads: int,
        scale: float,
        rows: Sequence[RowRole],
        step: int,
        grid: tuple[int, int],
        latent_hw: tuple[int, int],
    ) -> None:
        """Accumulate one observation per row and name found in it. q: (R, N, C) projected queries of
        conditional rows, k: (R, L, C) projected keys of their context, ``rows``: their roles, ``step``: the
        denoiser call (which prompt schedule entry the contexts come from)."""
        n_rows, n_tokens, channels = q.shape
        context_len = k.shape[1]
        if self._latent_hw not in (None, tuple(latent_hw)):
            raise ValueError(f"latent_hw changed from {self._latent_hw} to {latent_hw} within one recording")
        self._latent_hw = tuple(latent_hw)
        row_columns = [self.columns.at(role.image, role.part, step) for role in rows]
        for columns in row_columns:
            for name, cols in columns.items():
                if max(cols) >= context_len:
                    raise ValueError(f"columns[{name!r}] reaches column {max(cols)}, context has {context_len}")
        head_dim = channels // heads
        q_heads = q.float().view(n_rows, n_tokens, heads, head_dim).transpose(1, 2)
        k_heads = k.float().view(n_rows, context_len, heads, head_dim).transpose(1, 2)
        probs = torch.softmax(q_heads @ k_heads.transpose(-1, -2) * scale, dim=-1).mean(dim=1)  # (R, N, L)
        found = torch.tensor([[name in columns for name in self.names] for columns in row_columns])
        per_name = probs.new_zeros(n_rows, len(self.names), n_tokens)
        for row, columns in enumerate(row_columns):
            for index, name in enumerate(self.names):
                if name in columns:
                    per_name[row, index] = probs[row][:, list(columns[name])].sum(dim=-1)
        grids = per_name.view(n_rows, len(self.names), *grid)
        if tuple(grid) != tuple(latent_hw):
            grids = F.interpolate(grids, size=latent_hw, mode="bilinear", align_corners=False)
        for row, role in enumerate(rows):
            total = self._sums.get(role.image)
            self._sums[role.image] = grids[row] if total is None else total + grids[row]
            self._counts[role.image] = self._counts.get(role.image, torch.zeros(len(self.names))) + found[row]
        self.observations += n_rows

    def maps(self) -> dict[str, Tensor]:
        """name -> (n_images, h_lat, w_lat) float32 on the CPU, mean over each image's observations.

        ``n_images`` is one more than the highest image index observed; an image without an observation of
        a name gets zeros there. Empty dict before the first observation.
        """
        if not self._sums:
            return {}
        n_images = max(self._sums) + 1
        stacked = torch.zeros(n_images, len(self.names), *self._latent_hw)
        for image, total in self._sums.items():
            counts = self._counts[image]
            stacked[image] = total.cpu() / counts.clamp(min=1)[:, None, None]
        return {name: stacked[:, i].contiguous() for i, name in enumerate(self.names)}
