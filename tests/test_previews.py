"""Debug previews: mask overlay with legend, attention heatmap with caption."""

from __future__ import annotations

import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from freecure.previews import (
    LEGEND_BACKGROUND,
    PALETTE,
    attribute_colours,
    heatmap_preview,
    legend_swatches,
    overlay_preview,
)

H, W = 96, 128
GREY = 101


def _grey_image():
    return Image.new("RGB", (W, H), (GREY, GREY, GREY))


def _masks():
    hair = np.zeros((H, W), dtype=bool)
    hair[60:90, 70:120] = True
    glasses = np.zeros((H, W), dtype=bool)
    glasses[70:80, 10:50] = True
    return {"hair": hair, "glasses": glasses}


def test_overlay_tints_each_mask_in_its_colour_and_keeps_the_size():
    masks = _masks()
    preview = overlay_preview(_grey_image(), masks, alpha=0.45)
    assert preview.size == (W, H) and preview.mode == "RGB"
    pixels = np.asarray(preview)
    colours = attribute_colours(list(masks))
    assert colours["hair"] != colours["glasses"]
    for name, mask in masks.items():
        expected = np.rint(0.55 * GREY + 0.45 * np.asarray(colours[name], dtype=np.float64)).astype(np.uint8)
        assert (pixels[mask] == expected).all(), name
    untouched = ~(masks["hair"] | masks["glasses"])
    untouched[:40, :] = False  # the legend's corner
    assert (pixels[untouched] == GREY).all()


def test_legend_has_a_swatch_of_each_colour_and_the_names():
    masks = _masks()
    pixels = np.asarray(overlay_preview(_grey_image(), masks))
    colours = attribute_colours(list(masks))
    swatches = legend_swatches(list(masks))
    for name, (x0, y0, x1, y1) in swatches.items():
        assert x1 - x0 >= 8 and y1 - y0 >= 8
        assert (pixels[y0:y1, x0:x1] == colours[name]).all(), name
        # The name is written in white to the right of its swatch, over the darkened legend box.
        text_area = pixels[y0:y1, x1 + 2 : x1 + 40]
        assert text_area.max() > 200
    shaded = round(GREY * (1 - LEGEND_BACKGROUND[3] / 255))
    first_top = swatches["hair"][1]
    assert abs(int(pixels[first_top, 1, 0]) - shaded) <= 1  # the legend box darkens the image


def test_colours_are_stable_per_name_and_distinct_within_a_preview():
    names = ["hair", "glasses", "hat", "earrings", "necklace", "beard", "eyes", "lips", "brows"]
    first = attribute_colours(names)
    assert first == attribute_colours(names)
    assert len(set(first.values())) == len(names)
    assert attribute_colours(["hat"])["hat"] == PALETTE[zlib.crc32(b"hat") % len(PALETTE)]
    # Two names with the same home colour still get different colours in one preview.
    candidates = [f"attribute{i}" for i in range(100)]
    homes = {}
    for name in candidates:
        homes.setdefault(zlib.crc32(name.encode()) % len(PALETTE), []).append(name)
    clash = next(group for group in homes.values() if len(group) >= 2)[:2]
    colours = attribute_colours(clash)
    assert colours[clash[0]] == PALETTE[zlib.crc32(clash[0].encode()) % len(PALETTE)]
    assert colours[clash[0]] != colours[clash[1]]


def test_overlay_without_masks_is_the_image():
    image = _grey_image()
    assert np.array_equal(np.asarray(overlay_preview(image, {})), np.asarray(image))


def test_overlay_refuses_mismatched_masks_and_alpha():
    with pytest.raises(ValueError, match=r"masks\['hair'\] has shape \(4, 4\); the image is \(96, 128\)"):
        overlay_preview(_grey_image(), {"hair": np.ones((4, 4), dtype=bool)})
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]"):
        overlay_preview(_grey_image(), _masks(), alpha=0)


def _jet(level: int) -> np.ndarray:
    bgr = cv2.applyColorMap(np.array([[level]], dtype=np.uint8), cv2.COLORMAP_JET)[0, 0]
    return bgr[::-1].astype(np.float64)


def test_heatmap_shows_the_peak_hot_and_the_rest_cold():
    black = Image.new("RGB", (W, H))
    attention = np.zeros((H, W))
    attention[70:80, 100:110] = 5.0
    preview = heatmap_preview(black, attention, "hair")
    assert preview.size == (W, H)
    pixels = np.asarray(preview).astype(np.float64)
    np.testing.assert_array_equal(pixels[75, 105], np.rint(_jet(255) / 2))
    np.testing.assert_array_equal(pixels[40, 20], np.rint(_jet(0) / 2))


def test_heatmap_upsamples_a_small_map_over_the_image():
    black = Image.new("RGB", (W, H))
    attention = np.zeros((12, 16))
    attention[8:10, 12:14] = 1.0  # cells of 8 x 8 pixels: image y 64..79, x 96..111
    pixels = np.asarray(heatmap_preview(black, attention, "hat")).astype(np.float64)
    # Bilinear: full heat between the two peak cells' centres (y 68..75, x 100..107).
    np.testing.assert_array_equal(pixels[72, 104], np.rint(_jet(255) / 2))
    np.testing.assert_array_equal(pixels[30, 30], np.rint(_jet(0) / 2))


def test_heatmap_caption_is_written_in_the_top_band_only():
    image = Image.new("RGB", (W, H), (50, 90, 130))
    attention = np.random.default_rng(0).random((8, 8))
    with_title = np.asarray(heatmap_preview(image, attention, "glasses"))
    without = np.asarray(heatmap_preview(image, attention, ""))
    differs = (with_title != without).any(axis=2)
    assert differs.any()
    rows = np.nonzero(differs.any(axis=1))[0]
    assert rows.max() < 24


def test_heatmap_of_a_constant_map_is_all_cold_without_nan():
    with np.errstate(all="raise"):
        pixels = np.asarray(heatmap_preview(Image.new("RGB", (W, H)), np.full((8, 8), 0.7), "smile"))
    assert (pixels[40:, :] == np.rint(_jet(0) / 2)).all()
    with pytest.raises(ValueError, match="attention_map must be a non-empty 2-D array"):
        heatmap_preview(Image.new("RGB", (W, H)), np.ones(5), "x")
