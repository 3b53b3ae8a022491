"""Attribute masks on the foundation image: from face parsing, from cross-attention maps, or both.

- Attention maps (one (h, w) float map per attribute word, recorded during the foundation pass) become
  masks as in the paper's code: min-max normalise, sharpen with ``exp(10 a)``, upsample bilinearly to the
  image, Otsu threshold on uint8; then connected components smaller than ``min_area`` (a fraction of the
  image area) are dropped.
- Parser masks are the union of the attribute's parts (``freecure.parsing.PART_LABELS`` names).
- :func:`build_masks` combines them per attribute as the settings say, dilates by a radius in image
  pixels (a Euclidean disc: every offset with dx² + dy² <= r²), and returns one mask per attribute plus
  their union, with the source used and notes for everything that fell back or came out empty.
- Resizing to a token grid or a latent uses exact area coverage: a cell's coverage is the fraction of its
  area (in image coordinates, the cell being the image area divided evenly) covered by the mask.
  :func:`to_grid` turns a cell on when coverage >= 0.5; :func:`to_latent` returns the coverage itself.
  Grids need not be square nor divide the image size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from freecure.parsing import ParseResult

MASK_SOURCES = ("parser", "attention", "both")
MASK_COMBINES = ("union", "intersection")
DEFAULT_MIN_AREA = 0.0005
SHARPNESS = 10.0


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class AttributeMasks:
    """Masks of one image: ``per_attribute`` bool (H, W) arrays, their ``union``, the source each came
    from (``parser``, ``attention``, ``parser|attention``, ``parser&attention`` or ``none``) and notes on
    fallbacks and empty masks, meant for the console and infotext."""

    per_attribute: dict[str, np.ndarray]
    union: np.ndarray
    sources: dict[str, str]
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.union.any()

    def within(self, region: np.ndarray) -> AttributeMasks:
        """These masks cut to ``region`` (bool (H, W), e.g. where an inpaint pass may change the image)."""
        notes = list(self.notes)
        per_attribute = {name: mask & region for name, mask in self.per_attribute.items()}
        notes += [f"{name}: mask is outside the inpaint mask" for name, mask in per_attribute.items()
                  if self.per_attribute[name].any() and not mask.any()]
        return AttributeMasks(per_attribute=per_attribute, union=self.union & region, sources=dict(self.sources),
                              notes=notes)


def region_on_image(region: np.ndarray | torch.Tensor, image_hw: tuple[int, int]) -> np.ndarray:
    """A (h, w) region (a latent mask: on where non-zero) on an (H, W) image: each pixel takes the value of
    the cell it lies in (nearest; exact when the image size is a multiple of the grid's)."""
    if isinstance(region, torch.Tensor):
        region = region.detach().cpu().numpy()
    region = np.asarray(region) != 0
    if region.ndim != 2 or 0 in region.shape:
        raise ValueError(f"region must be a non-empty 2-D array (h, w); got shape {region.shape}")
    (grid_h, grid_w), (height, width) = region.shape, image_hw
    rows = np.arange(height) * grid_h // height
    columns = np.arange(width) * grid_w // width
    return region[rows[:, None], columns[None, :]]


def sharpen(attention_map: np.ndarray) -> np.ndarray | None:
    """The paper's sharpening in float64: a <- norm(a) + 1; a <- exp(10 a); a <- norm(a).

    Returns None for maps with no contrast (constant) or with non-finite values: they locate nothing.
    """
    values = np.asarray(attention_map, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        return None
    low, high = values.min(), values.max()
    if high <= low:
        return None
    sharpened = np.exp(SHARPNESS * ((values - low) / (high - low) + 1.0))
    return (sharpened - sharpened.min()) / (sharpened.max() - sharpened.min())


def drop_small_components(mask: np.ndarray, min_area: float) -> np.ndarray:
    """``mask`` without its 8-connected components smaller than ``min_area`` x image area."""
    min_pixels = min_area * mask.size
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_pixels
    return keep[components]


def attention_mask(
    attention_map: np.ndarray, image_hw: tuple[int, int], *, min_area: float = DEFAULT_MIN_AREA
) -> np.ndarray:
    """Bool (H, W) mask from one word's attention map; all False when the map locates nothing."""
    height, width = image_hw
    sharpened = sharpen(attention_map)
    if sharpened is None:
        return np.zeros((height, width), dtype=bool)
    if sharpened.shape != (height, width):
        sharpened = cv2.resize(sharpened, (width, height), interpolation=cv2.INTER_LINEAR)
    levels = np.rint(np.clip(sharpened, 0.0, 1.0) * 255).astype(np.uint8)
    _, binary = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return drop_small_components(binary > 0, min_area)


def disc(radius: int) -> np.ndarray:
    """uint8 kernel of the offsets within Euclidean distance ``radius`` of the centre."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` grown by ``radius`` pixels (Euclidean disc); radius 0 returns a copy."""
    if radius == 0:
        return mask.copy()
    return cv2.dilate(mask.astype(np.uint8), disc(radius)) > 0


def _check_choice(name: str, value: str, accepted: Sequence[str]) -> None:
    if value not in accepted:
        raise ValueError(f"{name} must be one of {', '.join(accepted)}; got {value!r}")


def build_masks(
    attributes: Sequence[str],
    parts_of: Mapping[str, Sequence[str]],
    image_hw: tuple[int, int],
    *,
    parse: ParseResult | None,
    attention_maps: Mapping[str, np.ndarray] | None,
    source: str,
    combine: str,
    dilation: int | Mapping[str, int],
    min_area: float = DEFAULT_MIN_AREA,
) -> AttributeMasks:
    """One mask per attribute and their union, for an image of ``image_hw`` (H, W).

    ``parts_of`` gives the parser parts of each attribute (attributes with none, e.g. beard, use their
    attention map only); ``attention_maps`` maps attribute names to their (h, w) maps. ``source`` is
    ``parser``, ``attention`` or ``both``; with ``both`` the two masks are joined by ``combine``
    (``union`` or ``intersection``), and when only one exists it is used alone. A parser that did not
    run (``parse`` None or with a reason) falls back to attention, noted. ``dilation``: pixels, for every
    attribute or per attribute name.
    """
    _check_choice("mask_source", source, MASK_SOURCES)
    _check_choice("mask_combine", combine, MASK_COMBINES)
    dilations = dict(dilation) if isinstance(dilation, Mapping) else dict.fromkeys(attributes, dilation)
    for name in attributes:
        radius = dilations.get(name)
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
            field = f"mask_dilation of {name}" if isinstance(dilation, Mapping) else "mask_dilation"
            raise ValueError(f"{field} must be an integer >= 0 (pixels); got {radius!r}")
    if not 0.0 <= min_area < 1.0:
        raise ValueError(f"min_area must be a fraction in [0, 1); got {min_area!r}")
    if len(image_hw) != 2 or not all(isinstance(n, int) and n > 0 for n in image_hw):
        raise ValueError(f"image_hw must be two positive integers (height, width); got {image_hw!r}")
    height, width = image_hw
    attention_maps = attention_maps or {}
    notes: list[str] = []

    parser_ready = parse is not None and parse.ok
    if parser_ready and parse.labels.shape != (height, width):
        raise ValueError(f"parse labels have shape {parse.labels.shape}, image_hw is {image_hw}")
    if source != "attention" and not parser_ready:
        why = "no parse was given" if parse is None else parse.reason
        notes.append(f"face parser unavailable ({why}); using attention masks")
    if source != "attention" and parse is not None:
        notes.extend(parse.notes)

    per_attribute: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for name in attributes:
        parts = tuple(parts_of.get(name, ()))
        from_parser = None
        if source != "attention" and parser_ready and parts:
            from_parser = parse.part_mask(parts)
        from_attention = None
        if (source != "parser" or from_parser is None) and name in attention_maps:
            from_attention = attention_mask(attention_maps[name], image_hw, min_area=min_area)

        if from_parser is not None and from_attention is not None:
            joined = from_parser | from_attention if combine == "union" else from_parser & from_attention
            mask, sources[name] = joined, "parser|attention" if combine == "union" else "parser&attention"
        elif from_parser is not None:
            mask, sources[name] = from_parser, "parser"
        elif from_attention is not None:
            mask, sources[name] = from_attention, "attention"
        else:
            mask, sources[name] = np.zeros((height, width), dtype=bool), "none"
            notes.append(f"{name}: no parser parts and no attention map")
        mask = dilate(mask, dilations[name])
        if sources[name] != "none" and not mask.any():
            notes.append(f"{name}: mask is empty ({sources[name]})")
        per_attribute[name] = mask

    union = np.zeros((height, width), dtype=bool)
    for mask in per_attribute.values():
        union |= mask
    return AttributeMasks(per_attribute=per_attribute, union=union, sources=sources, notes=notes)


# ---------------------------------------------------------------------------------------------------
# Resizing to token grids and latents.


def _overlaps(source_size: int, target_size: int) -> np.ndarray:
    """(target, source) matrix of overlap lengths between target cells and source pixels.

    In units where each source pixel is ``target_size`` long and each target cell ``source_size`` long
    (both spans are then integers), so every entry and every sum below is an exact integer in float64.
    """
    target_edges = np.arange(target_size + 1, dtype=np.int64) * source_size
    source_edges = np.arange(source_size + 1, dtype=np.int64) * target_size
    start = np.maximum(target_edges[:-1, None], source_edges[None, :-1])
    end = np.minimum(target_edges[1:, None], source_edges[None, 1:])
    return np.clip(end - start, 0, None).astype(np.float64)


def _coverage_units(mask: np.ndarray | torch.Tensor, grid_hw: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Covered area of each grid cell in exact integer units, and the area of a whole cell."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"mask must be a non-empty 2-D array (H, W); got shape {mask.shape}")
    if len(grid_hw) != 2 or not all(isinstance(n, int) and n > 0 for n in grid_hw):
        raise ValueError(f"grid size must be two positive integers (h, w); got {grid_hw!r}")
    (height, width), (grid_h, grid_w) = mask.shape, grid_hw
    covered = _overlaps(height, grid_h) @ (mask != 0).astype(np.float64) @ _overlaps(width, grid_w).T
    return covered, height * width


def coverage(mask: np.ndarray | torch.Tensor, grid_hw: tuple[int, int]) -> np.ndarray:
    """Fraction in [0, 1] of each cell of an (h, w) grid laid evenly over ``mask`` that the mask covers."""
    covered, cell_area = _coverage_units(mask, grid_hw)
    return covered / cell_area


def to_grid(mask: np.ndarray | torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Bool (h, w) tensor: a cell is on when the mask covers at least half of it."""
    covered, cell_area = _coverage_units(mask, grid_hw)
    return torch.from_numpy(2 * covered >= cell_area)


def to_latent(mask: np.ndarray | torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Float32 (h, w) tensor of each latent cell's mask coverage in [0, 1] (a soft mask for blending)."""
    return torch.from_numpy(coverage(mask, latent_hw).astype(np.float32))
