"""The engine inside tiny diffusers SD1.x/SDXL UNets through ``intercept_diffusers``: exact
pass-through, recorder normalisation, bank alignment across calls, chunked calls, clean restore."""

from __future__ import annotations

import pytest
import torch
from tiny_models import sdxl_added_cond, tiny_sd1_unet, tiny_sdxl_unet

from freecure.attention import (
    AttentionEngine,
    CrossAttentionRecorder,
    FasaSettings,
    KVBank,
    RowRole,
    RowTracker,
    diffusers_layer_keys,
    intercept_diffusers,
    preset_layers,
)

LATENT = (16, 12)
CONTEXT_LEN = 6
ROLES = (RowRole(True, 0), RowRole(True, 1), RowRole(False, 0), RowRole(False, 1))



@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a CPU shared with parallel jobs run far faster on one thread than on contended ones."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def model(request):
    if request.param == "sd1":
        return "sd1", tiny_sd1_unet(0), None
    # The 2-deep SDXL layout (22 blocks) keeps this cheap; test_attention_layers covers the 70-block one.
    return "sdxl", tiny_sdxl_unet(0, deep=2), sdxl_added_cond(len(ROLES), torch.Generator().manual_seed(0))


def inputs(seed):
    generator = torch.Generator().manual_seed(seed)
    batch = len(ROLES)
    return torch.randn(batch, 4, *LATENT, generator=generator), torch.randn(batch, CONTEXT_LEN, 32, generator=generator)


def call(unet, added, sample, context, rows=slice(None)):
    extra = None if added is None else {name: t[rows] for name, t in added.items()}
    with torch.no_grad():
        return unet(sample[rows], 10, context[rows], added_cond_kwargs=extra).sample


def self_layers(unet, family):
    keys = [key for key, _ in diffusers_layer_keys(unet).values()]
    return preset_layers("default", keys, family)


def foundation_and_cure(unet, added, family, weight, masks, found_inputs, cure_inputs, recorder=None):
    """Two passes of len(inputs) denoiser calls; returns (foundation outputs, cure outputs, bank)."""
    engine, bank = AttentionEngine(), KVBank(dtype=torch.float32)  # exact foundation K/V
    layers = self_layers(unet, family)
    found, cured = [], []
    with intercept_diffusers(engine, unet, RowTracker(engine)):
        with engine.recording(bank, layers, recorder):
            for i, (sample, context) in enumerate(found_inputs):
                engine.begin_call(ROLES, LATENT, i / len(found_inputs))
                found.append(call(unet, added, sample, context))
        with engine.curing(FasaSettings(layers, weight, masks=masks), bank):
            for i, (sample, context) in enumerate(cure_inputs):
                engine.begin_call(ROLES, LATENT, i / len(cure_inputs))
                cured.append(call(unet, added, sample, context))
    return found, cured, bank


@pytest.mark.parametrize("weight, mask_value", [(1.5, 0.0), (0.0, 1.0), (-2.0, 1.0)])
def test_recording_and_no_effect_curing_are_bit_identical(model, weight, mask_value):
    family, unet, added = model
    found_inputs, cure_inputs = [inputs(1), inputs(2)], [inputs(3), inputs(4)]
    masks = [torch.full((8, 8), mask_value)] * 2
    recorder = CrossAttentionRecorder({"a": [1, 2], "b": [4]})
    found, cured, bank = foundation_and_cure(unet, added, family, weight, masks, found_inputs, cure_inputs, recorder)
    for outputs, plain_inputs in ((found, found_inputs), (cured, cure_inputs)):
        for out, (sample, context) in zip(outputs, plain_inputs, strict=True):
            assert torch.equal(out, call(unet, added, sample, context))
    assert recorder.observations > 0 and bank.nbytes > 0 and bank.misses == 0


def test_identity_alignment_in_the_unet(model):
    """Foundation pass == cure pass inputs, two calls with different inputs: with full masks the cure
    output equals plain attention for any w (only if the bank lines up by call, layer and image);
    with half masks it does not."""
    family, unet, added = model
    pass_inputs = [inputs(5), inputs(6)]
    full = [torch.ones(4, 4)] * 2
    _, cured, bank = foundation_and_cure(unet, added, family, 3.0, full, pass_inputs, pass_inputs)
    half = torch.zeros(4, 4)
    half[:, :2] = 1
    _, cured_half, _ = foundation_and_cure(unet, added, family, 3.0, [half, half], pass_inputs, pass_inputs)
    for out, out_half, (sample, context) in zip(cured, cured_half, pass_inputs, strict=True):
        plain = call(unet, added, sample, context)
        torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-5)
        assert not torch.equal(out[:2], plain[:2])  # FASA really ran on the cond rows ...
        assert torch.equal(out[2:], plain[2:])  # ... and not on the uncond rows
        assert (out_half[:2] - plain[:2]).abs().max() > 1e-3
    assert bank.misses == 0


def test_fasa_changes_the_cond_rows_when_the_foundation_differs(model):
    family, unet, added = model
    full = [torch.ones(4, 4)] * 2
    _, cured, _ = foundation_and_cure(unet, added, family, 1.5, full, [inputs(7)], [inputs(8)])
    plain = call(unet, added, *inputs(8))
    assert (cured[0][:2] - plain[:2]).abs().max() > 1e-3
    assert torch.equal(cured[0][2:], plain[2:])


def test_chunked_calls_match_one_batched_call(model):
    """A1111 with batch_cond_uncond off: cond rows, then uncond rows, in separate UNet calls."""
    family, unet, added = model
    layers = self_layers(unet, family)
    half = torch.zeros(4, 4)
    half[:2] = 1
    settings = FasaSettings(layers, 1.5, masks=[half, torch.ones(4, 4)])
    found_sample, found_context = inputs(9)
    sample, context = inputs(10)
    results = {}
    for layout in ("one call", "chunked"):
        engine, bank = AttentionEngine(), KVBank(dtype=torch.float32)  # exact foundation K/V
        chunks = [slice(None)] if layout == "one call" else [slice(0, 2), slice(2, 4)]
        with intercept_diffusers(engine, unet, RowTracker(engine)):
            with engine.recording(bank, layers, None):
                engine.begin_call(ROLES, LATENT, 0.0)
                for rows in chunks:
                    call(unet, added, found_sample, found_context, rows)
            with engine.curing(settings, bank):
                engine.begin_call(ROLES, LATENT, 0.0)
                results[layout] = torch.cat([call(unet, added, sample, context, rows) for rows in chunks])
        assert bank.misses == 0 and len(bank) == 2 * len(layers)
    torch.testing.assert_close(results["chunked"], results["one call"], rtol=1e-5, atol=1e-6)
    assert (results["one call"][:2] - call(unet, added, sample, context)[:2]).abs().max() > 1e-3


def test_processors_are_restored_exactly_also_after_an_exception(model):
    _, unet, added = model
    before = dict(unet.attn_processors)
    engine = AttentionEngine()
    sample, context = inputs(11)
    recorder = CrossAttentionRecorder({"a": [0]})
    hooks = intercept_diffusers(engine, unet, RowTracker(engine))
    with hooks, engine.recording(None, (), recorder):
        engine.begin_call(ROLES[:2], LATENT, 0.0)  # announces 2 rows; the UNet call has 4
        call(unet, added, sample, context)  # our failure is recorded, the UNet call goes on
        assert isinstance(engine.failure, RuntimeError) and "rows arrived" in str(engine.failure)
    hooks = intercept_diffusers(engine, unet, RowTracker(engine))
    with pytest.raises(RuntimeError), hooks, engine.recording(None, (), recorder):
        engine.begin_call(ROLES, LATENT, 0.0)
        call(unet, added, sample[:, :1], context)  # the UNet itself rejects a 1-channel latent
    after = unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before)
    assert engine.mode is None and not engine.wants(("input", 4, 0), False)


def test_recorder_maps_are_float64_exact_and_normalised():
    """One layer at full latent resolution (no resize), one call: the map equals the float64 head-mean
    of softmax probabilities summed over the columns, and a partition of all columns sums to 1."""
    unet = tiny_sd1_unet(0)
    layer = ("input", 1, 0)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    attn = unet.get_submodule(name)
    captured = {}

    def capture(module, args, kwargs):
        captured["x"], captured["context"] = args[0], kwargs["encoder_hidden_states"]

    columns = {"a": [1, 2], "b": [0], "rest": [3, 4, 5]}
    recorder = CrossAttentionRecorder(columns, layers={layer})
    engine = AttentionEngine()
    sample, context = inputs(12)
    handle = attn.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with intercept_diffusers(engine, unet, RowTracker(engine)), engine.recording(None, (), recorder):
            engine.begin_call(ROLES, LATENT, 0.0)
            call(unet, None, sample, context)
    finally:
        handle.remove()
    maps = recorder.maps()
    assert recorder.observations == 2  # one layer, two cond rows
    heads = attn.heads
    x, ctx = captured["x"][:2].double(), captured["context"][:2].double()
    q = (x @ attn.to_q.weight.double().T).view(2, -1, heads, 4).transpose(1, 2)
    k = (ctx @ attn.to_k.weight.double().T).view(2, -1, heads, 4).transpose(1, 2)
    probs = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1).mean(dim=1)
    for label, cols in columns.items():
        expected = probs[..., cols].sum(-1).view(2, *LATENT)
        assert maps[label].shape == (2, *LATENT) and maps[label].dtype == torch.float32
        torch.testing.assert_close(maps[label].double(), expected, rtol=1e-5, atol=1e-6)
    total = sum(maps.values())
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-5)


def test_recorder_over_all_layers_and_calls_is_a_mean_that_partitions_to_one(model):
    _, unet, added = model
    recorder = CrossAttentionRecorder({"first": [0, 1], "second": [2, 3, 4, 5]}, progress_range=(0.0, 0.5))
    engine = AttentionEngine()
    n_layers = len({key for key, is_self in diffusers_layer_keys(unet).values() if not is_self})
    with intercept_diffusers(engine, unet, RowTracker(engine)), engine.recording(None, (), recorder):
        for i in range(4):  # progress 0, .25 recorded; .5, .75 outside the window
            engine.begin_call(ROLES, LATENT, i / 4)
            call(unet, added, *inputs(20 + i))
    maps = recorder.maps()
    assert recorder.observations == 2 * 2 * n_layers
    total = maps["first"] + maps["second"]
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-5)
    assert all(((m >= 0) & (m <= 1 + 1e-6)).all() for m in maps.values())
