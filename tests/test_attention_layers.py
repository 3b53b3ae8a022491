"""Layer keys, execution order, presets and token grids on the tiny SD1.x and SDXL layouts."""

from __future__ import annotations

import pytest
import torch
from tiny_models import sdxl_added_cond, tiny_sd1_unet, tiny_sdxl_unet

from freecure.attention import (
    AttentionEngine,
    CrossAttentionRecorder,
    RowRole,
    RowTracker,
    diffusers_layer_keys,
    execution_order,
    intercept_diffusers,
    layer_key_from_ldm_name,
    preset_layers,
    token_grid,
)


def sd1_expected() -> dict[str, tuple]:
    """webui.md 8.3: down_blocks.{0,1,2}.attentions.{0,1} = input 1,2 / 4,5 / 7,8; mid = middle;
    up_blocks.{1,2,3}.attentions.{0,1,2} = output 3-5 / 6-8 / 9-11; one transformer block each."""
    expected = {}
    for n in (1, 2):
        for level, first in enumerate((1, 4, 7)):
            for a in (0, 1):
                name = f"down_blocks.{level}.attentions.{a}.transformer_blocks.0.attn{n}"
                expected[name] = (("input", first + a, 0), n == 1)
        expected[f"mid_block.attentions.0.transformer_blocks.0.attn{n}"] = (("middle", 0, 0), n == 1)
        for level, first in ((1, 3), (2, 6), (3, 9)):
            for a in (0, 1, 2):
                name = f"up_blocks.{level}.attentions.{a}.transformer_blocks.0.attn{n}"
                expected[name] = (("output", first + a, 0), n == 1)
    return expected


def sdxl_expected() -> dict[str, tuple]:
    """down_blocks.1 = input 4,5 (depth 2), down_blocks.2 = input 7,8 (depth 10), mid (depth 10),
    up_blocks.0 = output 0-2 (depth 10), up_blocks.1 = output 3-5 (depth 2)."""
    expected = {}
    groups = [("down_blocks.1", "input", (4, 5), 2), ("down_blocks.2", "input", (7, 8), 10),
              ("up_blocks.0", "output", (0, 1, 2), 10), ("up_blocks.1", "output", (3, 4, 5), 2)]
    for n in (1, 2):
        for prefix, section, blocks, depth in groups:
            for a, block in enumerate(blocks):
                for j in range(depth):
                    expected[f"{prefix}.attentions.{a}.transformer_blocks.{j}.attn{n}"] = ((section, block, j), n == 1)
        for j in range(10):
            expected[f"mid_block.attentions.0.transformer_blocks.{j}.attn{n}"] = (("middle", 0, j), n == 1)
    return expected


def ldm_name(key, is_self, prefix="model.diffusion_model."):
    section, block, index = key
    head = "middle_block" if section == "middle" else f"{section}_blocks.{block}"
    return f"{prefix}{head}.1.transformer_blocks.{index}.attn{1 if is_self else 2}"



@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a CPU shared with parallel jobs run far faster on one thread than on contended ones."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

@pytest.fixture(scope="module")
def sd1():
    return tiny_sd1_unet(0)


@pytest.fixture(scope="module")
def sdxl():
    return tiny_sdxl_unet(0)


def test_sd1_diffusers_keys_match_the_ldm_layout(sd1):
    keys = diffusers_layer_keys(sd1)
    assert keys == sd1_expected()
    assert len({key for key, _ in keys.values()}) == 16


def test_sdxl_diffusers_keys_match_the_sgm_layout(sdxl):
    keys = diffusers_layer_keys(sdxl)
    assert keys == sdxl_expected()
    assert len({key for key, _ in keys.values()}) == 70


@pytest.mark.parametrize("prefix", ["", "diffusion_model.", "model.diffusion_model."])
def test_ldm_names_map_to_the_same_keys(prefix):
    for key, is_self in {**sd1_expected(), **sdxl_expected()}.values():
        assert layer_key_from_ldm_name(ldm_name(key, is_self, prefix)) == (key, is_self)


@pytest.mark.parametrize(
    "name",
    [
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
        "input_blocks.1.0.in_layers.0",
        "output_blocks.3.1.proj_in",
        "first_stage_model.encoder.mid.attn_1",
        "input_blocks.1.1.transformer_blocks.0.attn3",
        "xinput_blocks.1.1.transformer_blocks.0.attn1",
    ],
)
def test_other_names_are_not_layers(name):
    assert layer_key_from_ldm_name(name) is None


def test_execution_order_sorts_sections_then_blocks_then_transformer_index():
    keys = [("output", 2, 0), ("middle", 0, 1), ("input", 8, 0), ("output", 1, 9), ("input", 4, 1),
            ("middle", 0, 0), ("input", 4, 0), ("output", 1, 10), ("input", 4, 1)]
    assert execution_order(keys) == [("input", 4, 0), ("input", 4, 1), ("input", 8, 0), ("middle", 0, 0),
                                     ("middle", 0, 1), ("output", 1, 9), ("output", 1, 10), ("output", 2, 0)]


def test_sd1_presets(sd1):
    keys = [key for key, _ in diffusers_layer_keys(sd1).values()]
    order = execution_order(keys)
    outputs = {("output", b, 0) for b in range(3, 12)}
    high = {("output", b, 0) for b in range(6, 12)}
    assert preset_layers("default", keys, "sd1") == high == set(order[10:16])
    assert preset_layers("default", keys, "sd2") == high
    assert preset_layers("decoder-high", keys, "sd1") == high
    assert preset_layers("decoder", keys, "sd1") == outputs
    assert preset_layers("all", keys, "sd1") == set(order)


def test_sdxl_presets(sdxl):
    keys = [key for key, _ in diffusers_layer_keys(sdxl).values()]
    order = execution_order(keys)
    reference = ({("output", 1, j) for j in range(6, 10)} | {("output", 2, j) for j in range(10)}
                 | {("output", b, j) for b in (3, 4, 5) for j in (0, 1)})
    outputs = {key for key in order if key[0] == "output"}
    assert preset_layers("default", keys, "sdxl") == reference == set(order[50:70])
    assert preset_layers("decoder-high", keys, "sdxl") == outputs  # only two levels carry transformers
    assert len(outputs) == 36
    assert preset_layers("all", keys, "sdxl") == set(order)


def test_reduced_sdxl_unet_default_keeps_the_last_two_sevenths():
    unet = tiny_sdxl_unet(0, deep=2)  # 22 blocks
    keys = [key for key, _ in diffusers_layer_keys(unet).values()]
    assert preset_layers("default", keys, "sdxl") == {("output", b, j) for b in (3, 4, 5) for j in (0, 1)}


@pytest.mark.parametrize(
    "preset, family, field", [("decoder-low", "sd1", "preset"), ("default", "sd3", "family")]
)
def test_preset_errors_name_the_field(preset, family, field):
    with pytest.raises(ValueError, match=field):
        preset_layers(preset, [("input", 1, 0)], family)


LEVEL_SIZES = {
    (64, 64): [(64, 64), (32, 32), (16, 16), (8, 8)],
    (64, 96): [(64, 96), (32, 48), (16, 24), (8, 12)],
    (72, 56): [(72, 56), (36, 28), (18, 14), (9, 7)],
    (5, 3): [(5, 3), (3, 2), (2, 1), (1, 1)],
}


@pytest.mark.parametrize("latent", list(LEVEL_SIZES))
def test_token_grid_exact_values(latent):
    for grid in LEVEL_SIZES[latent]:
        assert token_grid(latent, grid[0] * grid[1]) == grid


@pytest.mark.parametrize("latent, tokens", [((64, 64), 1000), ((64, 64), 5000), ((72, 56), 0)])
def test_token_grid_rejects_token_counts_of_no_level(latent, tokens):
    with pytest.raises(ValueError, match="token merging"):
        token_grid(latent, tokens)


SD1_LEVEL = {"input": {1: 0, 2: 0, 4: 1, 5: 1, 7: 2, 8: 2}, "middle": {0: 3},
             "output": {3: 2, 4: 2, 5: 2, 6: 1, 7: 1, 8: 1, 9: 0, 10: 0, 11: 0}}
SDXL_LEVEL = {"input": {4: 1, 5: 1, 7: 2, 8: 2}, "middle": {0: 2},
              "output": {0: 2, 1: 2, 2: 2, 3: 1, 4: 1, 5: 1}}


def grids_seen(unet, latent_hw, added_cond):
    """Run one UNet forward with the recorder on every cross-attention layer; return the layers in
    call order with the grid the interceptor derived for each."""
    engine = AttentionEngine()
    seen = []
    observe = engine.observe_cross

    def spy(layer, q, k, heads, scale, rows, grid):
        seen.append((layer, grid))
        observe(layer, q, k, heads, scale, rows, grid)

    engine.observe_cross = spy
    recorder = CrossAttentionRecorder({"word": [1]})
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, *latent_hw, generator=generator)
    context = torch.randn(1, 4, 32, generator=generator)
    with intercept_diffusers(engine, unet, RowTracker(engine)), engine.recording(None, (), recorder), torch.no_grad():
        engine.begin_call([RowRole(True, 0)], latent_hw, 0.0)
        unet(sample, 10, context, added_cond_kwargs=added_cond)
    return seen


def test_sd1_forward_grids_and_call_order(sd1):
    """A real forward at 36x28 (odd halving 9x7 -> 5x4, as 72x56 one level down); the full-size
    latents are checked through ``token_grid`` above, which this shows the interceptor uses."""
    seen = grids_seen(sd1, (36, 28), None)
    keys = [key for key, _ in diffusers_layer_keys(sd1).values()]
    assert [layer for layer, _ in seen] == execution_order(keys)
    sizes = [(36, 28), (18, 14), (9, 7), (5, 4)]
    assert all(grid == sizes[SD1_LEVEL[layer[0]][layer[1]]] for layer, grid in seen)


def test_sdxl_forward_grids_and_call_order(sdxl):
    seen = grids_seen(sdxl, (18, 14), sdxl_added_cond(1))  # small latent: 140 attention modules
    keys = [key for key, _ in diffusers_layer_keys(sdxl).values()]
    assert [layer for layer, _ in seen] == execution_order(keys)
    sizes = [(18, 14), (9, 7), (5, 4)]
    assert all(grid == sizes[SDXL_LEVEL[layer[0]][layer[1]]] for layer, grid in seen)
