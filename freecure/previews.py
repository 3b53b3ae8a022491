"""Debug images: attribute masks over the foundation image, and one word's attention heatmap.

Both return a new PIL image of the input's size. Colours come from a fixed palette: each attribute name
has a home colour (CRC-32 of the name, stable across runs, unlike ``hash``); when two attributes of one
preview share a home colour, the later one takes the next free palette colour, so colours are distinct
within a preview (up to the palette's size).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
)  # fmt: skip
LEGEND_MARGIN = 4
LEGEND_GAP = 3
LEGEND_BACKGROUND = (0, 0, 0, 160)
TEXT_COLOUR = (255, 255, 255)


def attribute_colours(names: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """A palette colour per name: its home colour, or the next free one if an earlier name took it."""
    colours: dict[str, tuple[int, int, int]] = {}
    taken: set[int] = set()
    for name in names:
        index = zlib.crc32(name.encode("utf-8")) % len(PALETTE)
        for step in range(len(PALETTE)):
            if (index + step) % len(PALETTE) not in taken:
                index = (index + step) % len(PALETTE)
                break
        taken.add(index)
        colours[name] = PALETTE[index]
    return colours


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _line_height(font: ImageFont.ImageFont) -> int:
    bottom = font.getbbox("Hg")[3]
    return max(int(bottom), 8)


def legend_swatches(names: Sequence[str]) -> dict[str, tuple[int, int, int, int]]:
    """Where :func:`overlay_preview` draws each name's colour swatch: (x0, y0, x1, y1), x1/y1 exclusive."""
    size = _line_height(_font())
    swatches = {}
    for row, name in enumerate(names):
        top = LEGEND_MARGIN + row * (size + LEGEND_GAP)
        swatches[name] = (LEGEND_MARGIN, top, LEGEND_MARGIN + size, top + size)
    return swatches


def _draw_legend(canvas: Image.Image, colours: Mapping[str, tuple[int, int, int]]) -> Image.Image:
    font = _font()
    swatches = legend_swatches(list(colours))
    text_widths = [font.getbbox(name)[2] for name in colours]
    right = LEGEND_MARGIN * 2 + _line_height(font) + 4 + max(text_widths)
    bottom = max(box[3] for box in swatches.values()) + LEGEND_MARGIN
    shade = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    ImageDraw.Draw(shade).rectangle((0, 0, right, bottom), fill=LEGEND_BACKGROUND)
    canvas = Image.alpha_composite(canvas.convert("RGBA"), shade).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for name, (x0, y0, x1, y1) in swatches.items():
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colours[name])
        draw.text((x1 + 4, y0), name, fill=TEXT_COLOUR, font=font)
    return canvas


def overlay_preview(image: Image.Image, masks: Mapping[str, np.ndarray], alpha: float = 0.45) -> Image.Image:
    """``image`` with each attribute's mask tinted in its colour (``alpha`` opacity, later masks on top
    where they overlap) and a legend of names and colour swatches in the top-left corner."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1]; got {alpha!r}")
    base = np.asarray(image.convert("RGB"), dtype=np.float64)
    for name, mask in masks.items():
        if np.shape(mask) != base.shape[:2]:
            raise ValueError(f"masks[{name!r}] has shape {np.shape(mask)}; the image is {base.shape[:2]}")
    colours = attribute_colours(list(masks))
    for name, mask in masks.items():
        covered = np.asarray(mask, dtype=bool)
        base[covered] = (1.0 - alpha) * base[covered] + alpha * np.asarray(colours[name], dtype=np.float64)
    tinted = Image.fromarray(np.rint(base).astype(np.uint8))
    return _draw_legend(tinted, colours) if masks else tinted


def heatmap_colours(attention_map: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (H, W, 3) jet heatmap of ``attention_map`` min-max normalised and upsampled bilinearly.

    A constant or non-finite map shows as all-cold.
    """
    values = np.asarray(attention_map, dtype=np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"attention_map must be a non-empty 2-D array; got shape {values.shape}")
    low, high = (values.min(), values.max()) if np.isfinite(values).all() else (0.0, 0.0)
    normalised = (values - low) / (high - low) if high > low else np.zeros_like(values)
    height, width = size_hw
    upsampled = cv2.resize(normalised, (width, height), interpolation=cv2.INTER_LINEAR)
    levels = np.rint(np.clip(upsampled, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def heatmap_preview(image: Image.Image, attention_map: np.ndarray, title: str) -> Image.Image:
    """Half-and-half blend of ``image`` and the heatmap of one word's map, ``title`` as caption at the top."""
    base = np.asarray(image.convert("RGB"), dtype=np.float64)
    heat = heatmap_colours(attention_map, base.shape[:2]).astype(np.float64)
    canvas = Image.fromarray(np.rint((base + heat) / 2).astype(np.uint8))
    font = _font()
    band = _line_height(font) + 2 * LEGEND_MARGIN
    shade = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    ImageDraw.Draw(shade).rectangle((0, 0, canvas.width, band - 1), fill=LEGEND_BACKGROUND)
    canvas = Image.alpha_composite(canvas.convert("RGBA"), shade).convert("RGB")
    ImageDraw.Draw(canvas).text((LEGEND_MARGIN, LEGEND_MARGIN), title, fill=TEXT_COLOUR, font=font)
    return canvas
