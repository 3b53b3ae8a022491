"""``modules/masking.py`` (A1111 1.10.1 82a973c0; Forge 2 dfdcbab6 has the same file): the crop region of
"Only masked" inpainting and the blur fill of the masked area. Not mirrored: ``get_crop_region``."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps


def get_crop_region_v2(mask, pad=0):
    """The bounding box (x1, y1, x2, y2) of the mask's non-zero pixels grown by ``pad`` on each side (clipped
    to the image); None for an all-black mask."""
    image = mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask))
    box = image.getbbox()
    if not box:
        return None
    if not pad:
        return box
    left, top, right, bottom = box
    return max(left - pad, 0), max(top - pad, 0), min(right + pad, image.size[0]), min(bottom + pad, image.size[1])


def _grow_to(low, high, wanted_extra, limit):
    """One axis of ``expand_crop_region``: ``wanted_extra`` more pixels, split before/after, shifted back
    inside [0, limit]."""
    low -= wanted_extra // 2
    high += wanted_extra - wanted_extra // 2
    if high >= limit:
        low -= high - limit
        high = limit
    if low < 0:
        high -= low
        low = 0
    return low, min(high, limit)


def expand_crop_region(crop_region, processing_width, processing_height, image_width, image_height):
    """Grow the crop region along one axis to the aspect ratio of the processing size."""
    x1, y1, x2, y2 = crop_region
    processing_ratio = processing_width / processing_height
    if (x2 - x1) / (y2 - y1) > processing_ratio:
        y1, y2 = _grow_to(y1, y2, int((x2 - x1) / processing_ratio - (y2 - y1)), image_height)
    else:
        x1, x2 = _grow_to(x1, x2, int((y2 - y1) * processing_ratio - (x2 - x1)), image_width)
    return x1, y1, x2, y2


# (blur radius, times composited), widest first: the masked area ends up in the colours around it.
_FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


def fill(image, mask):
    """The image with its masked area painted from the unmasked surroundings by repeated blurs."""
    outside = Image.new("RGBa", (image.width, image.height))
    outside.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    filled = Image.new("RGBA", (image.width, image.height))
    for radius, times in _FILL_PASSES:
        layer = outside.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(times):
            filled.alpha_composite(layer)
    return filled.convert("RGB")
