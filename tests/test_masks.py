"""Attribute masks: attention maps -> Otsu masks, dilation, combination, grid and latent resizing.

Every expected value comes from synthetic inputs with a known answer or from an independent reference
(exact rational arithmetic for coverage, the paper's formula written out for sharpening).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freecure.masks import (
    attention_mask,
    build_masks,
    coverage,
    dilate,
    sharpen,
    to_grid,
    to_latent,
)
from freecure.parsing import PART_LABELS, ParseResult

HAIR = PART_LABELS["bisenet"]["hair"]
GLASSES = PART_LABELS["bisenet"]["eye_g"]


def _blob_map(shape, blob, seed=0):
    """Noise in [0, 0.3] everywhere, values in [0.95, 1] on ``blob``.

    The blob is near-uniform on purpose: exp(10 a) sharpening stretches the top of the range, so Otsu
    keeps only values close to the peak (a blob spread over [0.7, 1] would be split).
    """
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 0.3, shape)
    values[blob] = rng.uniform(0.95, 1.0, int(blob.sum()))
    return values


def _disc_mask(shape, centre, radius):
    rows, cols = np.indices(shape)
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


# ------------------------------------------------------------------------------------------ attention


def test_sharpen_is_the_papers_formula():
    values = np.random.default_rng(1).normal(size=(7, 5))
    a = (values - values.min()) / (values.max() - values.min()) + 1
    a = np.exp(10 * a)
    expected = (a - a.min()) / (a.max() - a.min())
    np.testing.assert_allclose(sharpen(values), expected, rtol=1e-12, atol=1e-15)


def test_constant_or_non_finite_maps_give_empty_masks_without_nan():
    with np.errstate(all="raise"):
        assert sharpen(np.full((4, 4), 0.3)) is None
        assert not attention_mask(np.full((4, 4), 0.3), (16, 16)).any()
        assert not attention_mask(np.zeros((4, 4)), (16, 16)).any()
    nan_map = np.ones((4, 4))
    nan_map[0, 0] = np.nan
    assert sharpen(nan_map) is None
    assert attention_mask(nan_map, (8, 8)).shape == (8, 8)
    assert not attention_mask(nan_map, (8, 8)).any()


def test_otsu_recovers_a_blob_at_image_resolution():
    blob = _disc_mask((64, 48), (30, 20), 9) | (np.indices((64, 48))[0] > 58)
    mask = attention_mask(_blob_map((64, 48), blob), (64, 48), min_area=0.0)
    np.testing.assert_array_equal(mask, blob)


def test_otsu_on_an_upsampled_map_keeps_the_blob_up_to_one_bilinear_band():
    small = np.zeros((16, 12), dtype=bool)
    small[4:10, 3:7] = True
    mask = attention_mask(_blob_map((16, 12), small, seed=2), (64, 48), min_area=0.0)
    blob = np.kron(small, np.ones((4, 4), dtype=bool))
    interior = ~dilate(~blob, 2)
    exterior = ~dilate(blob, 2)
    assert mask[interior].all()
    assert not mask[exterior].any()


def test_small_components_are_dropped_by_area_fraction():
    big = np.zeros((40, 40), dtype=bool)
    big[5:25, 5:25] = True  # 400 px = 25 % of the image
    speck = np.zeros((40, 40), dtype=bool)
    speck[35:37, 35:37] = True  # 4 px = 0.25 %
    values = _blob_map((40, 40), big | speck)
    np.testing.assert_array_equal(attention_mask(values, (40, 40), min_area=0.0), big | speck)
    np.testing.assert_array_equal(attention_mask(values, (40, 40), min_area=0.0025), big | speck)
    np.testing.assert_array_equal(attention_mask(values, (40, 40), min_area=0.003), big)
    assert not attention_mask(values, (40, 40), min_area=0.3).any()


# ------------------------------------------------------------------------------------------- dilation


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 5, 8])
def test_a_single_pixel_dilates_to_a_euclidean_disc(radius):
    pixel = np.zeros((21, 23), dtype=bool)
    pixel[10, 11] = True
    np.testing.assert_array_equal(dilate(pixel, radius), _disc_mask((21, 23), (10, 11), radius))


def test_dilation_at_the_border_is_the_clipped_disc():
    pixel = np.zeros((10, 10), dtype=bool)
    pixel[0, 9] = True
    np.testing.assert_array_equal(dilate(pixel, 3), _disc_mask((10, 10), (0, 9), 3))


# ----------------------------------------------------------------------------------------- combination


H, W = 32, 40


def _labels():
    labels = np.zeros((H, W), dtype=np.int32)
    labels[0:10, :] = HAIR
    labels[14:18, 8:32] = GLASSES
    return labels


def _hair_attention_blob():
    blob = np.zeros((H, W), dtype=bool)
    blob[6:20, 20:36] = True
    return blob


PARTS = {"hair": ("hair",), "glasses": ("eye_g",), "beard": ()}


def _build(**overrides):
    arguments = dict(
        parse=ParseResult(parser="bisenet", labels=_labels()),
        attention_maps={"hair": _blob_map((H, W), _hair_attention_blob()), "beard": _blob_map((H, W), _beard())},
        source="both",
        combine="union",
        dilation=0,
        min_area=0.0,
    )
    arguments.update(overrides)
    attributes = arguments.pop("attributes", ("hair", "glasses", "beard"))
    return build_masks(attributes, PARTS, (H, W), **arguments)


def _beard():
    blob = np.zeros((H, W), dtype=bool)
    blob[24:30, 10:20] = True
    return blob


def test_both_sources_union_and_intersection():
    hair_parser = _labels() == HAIR
    glasses_parser = _labels() == GLASSES
    union = _build(combine="union")
    np.testing.assert_array_equal(union.per_attribute["hair"], hair_parser | _hair_attention_blob())
    np.testing.assert_array_equal(union.per_attribute["glasses"], glasses_parser)  # no attention map
    np.testing.assert_array_equal(union.per_attribute["beard"], _beard())  # no parser parts
    assert union.sources == {"hair": "parser|attention", "glasses": "parser", "beard": "attention"}
    np.testing.assert_array_equal(
        union.union, hair_parser | _hair_attention_blob() | glasses_parser | _beard()
    )
    assert union.notes == []

    intersection = _build(combine="intersection")
    np.testing.assert_array_equal(intersection.per_attribute["hair"], hair_parser & _hair_attention_blob())
    np.testing.assert_array_equal(intersection.per_attribute["glasses"], glasses_parser)
    assert intersection.sources["hair"] == "parser&attention"


def test_single_sources_ignore_the_other():
    parser_only = _build(source="parser")
    np.testing.assert_array_equal(parser_only.per_attribute["hair"], _labels() == HAIR)
    np.testing.assert_array_equal(parser_only.per_attribute["beard"], _beard())  # no parts: attention
    assert parser_only.sources == {"hair": "parser", "glasses": "parser", "beard": "attention"}

    attention_only = _build(source="attention")
    np.testing.assert_array_equal(attention_only.per_attribute["hair"], _hair_attention_blob())
    assert not attention_only.per_attribute["glasses"].any()
    assert attention_only.sources["glasses"] == "none"
    assert attention_only.notes == ["glasses: no parser parts and no attention map"]


@pytest.mark.parametrize(
    ("parse", "why"),
    [(None, "no parse was given"), (ParseResult(parser="bisenet", reason="no face found"), "no face found")],
)
def test_unavailable_parser_falls_back_to_attention_and_says_so(parse, why):
    masks = _build(parse=parse, source="parser")
    np.testing.assert_array_equal(masks.per_attribute["hair"], _hair_attention_blob())
    assert masks.sources == {"hair": "attention", "glasses": "none", "beard": "attention"}
    assert masks.notes == [
        f"face parser unavailable ({why}); using attention masks",
        "glasses: no parser parts and no attention map",
    ]


def test_parser_notes_are_passed_on():
    note = "faces: index 3 asked for but only 1 face(s) found"
    parse = ParseResult(parser="bisenet", labels=_labels(), notes=(note,))
    assert _build(parse=parse, source="parser", attributes=("hair",)).notes == [note]
    assert _build(parse=parse, source="attention", attributes=("hair",)).notes == []


def test_empty_masks_are_reported():
    labels = np.zeros((H, W), dtype=np.int32)  # no hair pixels at all
    masks = _build(parse=ParseResult(parser="bisenet", labels=labels), source="parser", attributes=("hair",))
    assert masks.empty
    assert masks.notes == ["hair: mask is empty (parser)"]
    constant = _build(source="attention", attention_maps={"hair": np.ones((4, 4))}, attributes=("hair",))
    assert constant.notes == ["hair: mask is empty (attention)"]


def test_dilation_applies_to_each_attribute_after_combining():
    masks = _build(dilation=2)
    combined = (_labels() == HAIR) | _hair_attention_blob()
    np.testing.assert_array_equal(masks.per_attribute["hair"], dilate(combined, 2))
    np.testing.assert_array_equal(masks.per_attribute["glasses"], dilate(_labels() == GLASSES, 2))
    np.testing.assert_array_equal(
        masks.union, masks.per_attribute["hair"] | masks.per_attribute["glasses"] | masks.per_attribute["beard"]
    )


def test_dilation_per_attribute_grows_each_mask_by_its_own_radius():
    masks = _build(dilation={"hair": 3, "glasses": 0, "beard": 1})
    combined = (_labels() == HAIR) | _hair_attention_blob()
    np.testing.assert_array_equal(masks.per_attribute["hair"], dilate(combined, 3))
    np.testing.assert_array_equal(masks.per_attribute["glasses"], _labels() == GLASSES)
    np.testing.assert_array_equal(masks.per_attribute["beard"], dilate(_beard(), 1))
    with pytest.raises(ValueError, match="mask_dilation of glasses must be an integer >= 0"):
        _build(dilation={"hair": 3, "beard": 1})


def test_parsenet_labels_are_read_with_the_parsenet_table():
    labels = np.zeros((H, W), dtype=np.int32)
    labels[:5] = PART_LABELS["parsenet"]["hair"]  # 13, which is l_lip for BiSeNet
    masks = _build(parse=ParseResult(parser="parsenet", labels=labels), source="parser", attributes=("hair",))
    np.testing.assert_array_equal(masks.per_attribute["hair"], labels == 13)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"source": "sam"}, "mask_source must be one of parser, attention, both; got 'sam'"),
        ({"combine": "xor"}, "mask_combine must be one of union, intersection; got 'xor'"),
        ({"dilation": -1}, r"mask_dilation must be an integer >= 0 \(pixels\); got -1"),
        ({"dilation": 1.5}, "mask_dilation must be an integer"),
        ({"min_area": 1.0}, r"min_area must be a fraction in \[0, 1\)"),
        (
            {"parse": ParseResult(parser="bisenet", labels=np.zeros((4, 4), dtype=np.int32))},
            r"parse labels have shape \(4, 4\), image_hw is \(32, 40\)",
        ),
    ],
)
def test_bad_settings_raise_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        _build(**overrides)


def test_bad_image_size_raises():
    with pytest.raises(ValueError, match="image_hw must be two positive integers"):
        build_masks(
            ["hair"], PARTS, (0, 4), parse=None, attention_maps=None, source="both", combine="union", dilation=0
        )


# ------------------------------------------------------------------------------------------- resizing


def _reference_coverage(mask: np.ndarray, grid_hw) -> list[list[Fraction]]:
    """Exact covered fraction of each grid cell, integrating pixel by pixel in rationals."""
    height, width = mask.shape
    grid_h, grid_w = grid_hw
    cell_h, cell_w = Fraction(height, grid_h), Fraction(width, grid_w)

    def overlap(start, length, pixel):
        return max(Fraction(0), min(start + length, pixel + 1) - max(start, Fraction(pixel)))

    result = []
    for i in range(grid_h):
        row = []
        for j in range(grid_w):
            top, left = i * cell_h, j * cell_w
            covered = sum(
                overlap(top, cell_h, y) * overlap(left, cell_w, x)
                for y in range(height)
                for x in range(width)
                if mask[y, x]
            )
            row.append(covered / (cell_h * cell_w))
        result.append(row)
    return result


def test_grid_cells_follow_the_half_coverage_rule_exactly():
    # 16 x 24 image on an 8 x 12 grid: each cell is 2 x 2 pixels.
    mask = np.zeros((16, 24), dtype=bool)
    mask[0, 0:2] = True  # cell (0, 0): 2 of 4 pixels -> exactly half -> on
    mask[2, 2] = True  # cell (1, 1): 1 of 4 -> off
    mask[4:6, 4:6] = True  # cell (2, 2): full -> on
    mask[15, 22:24] = True
    mask[14, 23] = True  # cell (7, 11): 3 of 4 -> on
    grid = to_grid(mask, (8, 12))
    assert grid.dtype == torch.bool and grid.shape == (8, 12)
    assert sorted(map(tuple, grid.nonzero().tolist())) == [(0, 0), (2, 2), (7, 11)]
    latent = to_latent(mask, (8, 12))
    assert latent.dtype == torch.float32
    assert (latent[0, 0], latent[1, 1], latent[2, 2], latent[7, 11]) == (0.5, 0.25, 1.0, 0.75)
    assert latent.sum() == 0.5 + 0.25 + 1.0 + 0.75


def test_a_9x7_grid_over_a_size_it_does_not_divide():
    # 18 x 21 image on 9 x 7: cells are 2 x 3 pixels; an image 10 x 10 gives fractional cells.
    mask = np.zeros((18, 21), dtype=bool)
    mask[0:2, 0:3] = True  # cell (0, 0) full
    mask[2:4, 3:4] = True  # cell (1, 1): 2 of 6 -> off
    mask[4:6, 6:8] = True  # cell (2, 2): 4 of 6 -> on
    assert sorted(map(tuple, to_grid(mask, (9, 7)).nonzero().tolist())) == [(0, 0), (2, 2)]
    odd = np.zeros((10, 10), dtype=bool)
    odd[:, :5] = True  # the left half; grid column 3 spans x in [30/7, 40/7): (5 - 30/7) / (10/7) = 1/2
    grid = to_grid(odd, (9, 7))
    assert grid[:, :4].all() and not grid[:, 4:].any()
    assert (coverage(odd, (9, 7))[:, 3] == 0.5).all()


@settings(max_examples=25, deadline=None)
@given(
    mask=st.integers(1, 9).flatmap(
        lambda h: st.integers(1, 9).flatmap(
            lambda w: st.lists(st.booleans(), min_size=h * w, max_size=h * w).map(
                lambda bits: np.array(bits, dtype=bool).reshape(h, w)
            )
        )
    ),
    grid_hw=st.tuples(st.integers(1, 12), st.integers(1, 12)),
)
def test_coverage_equals_exact_rational_integration(mask, grid_hw):
    reference = _reference_coverage(mask, grid_hw)
    expected_on = np.array([[value >= Fraction(1, 2) for value in row] for row in reference])
    np.testing.assert_array_equal(to_grid(mask, grid_hw).numpy(), expected_on)
    expected = np.array([[float(value) for value in row] for row in reference])
    np.testing.assert_allclose(coverage(mask, grid_hw), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(to_latent(torch.from_numpy(mask), grid_hw).numpy(), expected, atol=1e-6)


def test_upsampling_a_mask_to_a_finer_grid():
    mask = np.array([[True, False], [False, True]])
    grid = to_grid(mask, (4, 6))
    expected = np.kron(mask, np.ones((2, 3), dtype=bool))
    np.testing.assert_array_equal(grid.numpy(), expected)


@pytest.mark.parametrize("grid_hw", [(0, 4), (4,), (2.0, 3), (-1, 2)])
def test_bad_grid_sizes_raise(grid_hw):
    with pytest.raises(ValueError, match="grid size must be two positive integers"):
        to_grid(np.ones((4, 4), dtype=bool), grid_hw)


def test_bad_masks_raise():
    with pytest.raises(ValueError, match="mask must be a non-empty 2-D array"):
        to_latent(np.ones((4, 4, 3), dtype=bool), (2, 2))
