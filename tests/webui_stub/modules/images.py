"""``modules/images.py`` (A1111 1.10.1 82a973c0; unchanged in Forge 2 dfdcbab6): ``resize_image`` and
``flatten`` as img2img and inpainting use them. Not mirrored: upscalers (``opts.upscaler_for_img2img`` is None
by default, so every resize is a plain Lanczos one), saving, grids."""

from __future__ import annotations

from PIL import Image

LANCZOS = Image.Resampling.LANCZOS if hasattr(Image, "Resampling") else Image.LANCZOS


def resize_image(resize_mode, im, width, height, upscaler_name=None):
    """0: stretch to (width, height); 1: cover (scale to fill, centre, crop the rest); 2: contain (scale to
    fit, centre, fill the two bands by stretching the image's edge rows or columns). Modes 1 and 2 return RGB
    images, also for an "L" input, as the real function does."""
    if upscaler_name not in (None, "None"):
        raise NotImplementedError("the stand-in has no upscalers")
    if resize_mode == 0:
        return im.resize((width, height), resample=LANCZOS)
    target_ratio, source_ratio = width / height, im.width / im.height
    wide = target_ratio > source_ratio if resize_mode == 1 else target_ratio < source_ratio
    scaled_w = width if wide else im.width * height // im.height
    scaled_h = height if not wide else im.height * width // im.width
    scaled = im.resize((scaled_w, scaled_h), resample=LANCZOS)
    result = Image.new("RGB", (width, height))
    left, top = width // 2 - scaled_w // 2, height // 2 - scaled_h // 2
    result.paste(scaled, box=(left, top))
    if resize_mode == 2:
        if target_ratio < source_ratio and top > 0:
            # bands above and below: the first and last row stretched
            result.paste(scaled.resize((width, top), box=(0, 0, width, 0)), box=(0, 0))
            result.paste(scaled.resize((width, top), box=(0, scaled.height, width, scaled.height)),
                         box=(0, top + scaled_h))
        elif target_ratio > source_ratio and left > 0:
            result.paste(scaled.resize((left, height), box=(0, 0, 0, height)), box=(0, 0))
            result.paste(scaled.resize((left, height), box=(scaled.width, 0, scaled.width, height)),
                         box=(left + scaled_w, 0))
    return result


def flatten(img, bgcolor):
    """An RGB image; transparency over ``bgcolor``."""
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, bgcolor)
        background.paste(img, mask=img)
        img = background
    return img.convert("RGB")
