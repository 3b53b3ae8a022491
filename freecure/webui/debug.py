"""Debug images for the gallery: the foundation image, the mask overlay and one heatmap per attribute word."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from freecure.pipeline import CureSession
from freecure.previews import heatmap_preview, overlay_preview


def debug_images(session: CureSession, pass_label: str = "") -> list[tuple[Image.Image, str]]:
    """(image, caption) pairs for every image of the batch; empty when no foundation pass ran.
    ``pass_label`` ("low-res", "hi-res") tells the hires-fix passes apart."""
    if session.foundation_images is None:
        return []
    maps: dict[str, Any] = session.maps
    items = []
    for index, tensor in enumerate(session.foundation_images):
        # Truncated like the WebUI's own conversion, so the image matches a plain identity-free generation.
        pixels = (tensor.permute(1, 2, 0).clamp(0, 1) * 255).byte().cpu().numpy()
        foundation = Image.fromarray(np.ascontiguousarray(pixels))
        where = f"image {index}" + (f", {pass_label}" if pass_label else "")
        items.append((foundation, f"FreeCure foundation (identity off), {where}"))
        if index < len(session.masks):
            items.append((overlay_preview(foundation, session.masks[index].per_attribute), f"FreeCure masks, {where}"))
        for name, attention_map in maps.items():
            if index < attention_map.shape[0]:
                items.append((heatmap_preview(foundation, attention_map[index].cpu().numpy(), name),
                              f"FreeCure attention: {name}, {where}"))
    return items
