"""Reusing a foundation pass (freecure.pipeline.foundation_cache): content digests, the LRU bound, and on the
reference host the property that matters: a reused foundation gives the bit-identical cured image to a fresh
one, without sampling the foundation again."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from identity_sim import LoraIdentity, block_mask
from tiny_models import tiny_sd1_unet

from freecure.options import Options
from freecure.pipeline import run_freecure
from freecure.pipeline.diffusers_host import DiffusersHost
from freecure.pipeline.foundation_cache import FoundationCache, FoundationRecord, digest

LATENT = (8, 8)
PROMPT = "a photo of a woman with red hair"
MASK = block_mask(LATENT, slice(1, 6), slice(2, 8))


def record(size: int) -> FoundationRecord:
    return FoundationRecord.capture(latents=torch.zeros(size), images=torch.zeros(0), maps={}, bank=None,
                                    bank_layers=frozenset(), predictions=[], calls=1, notes=())


# --- digests --------------------------------------------------------------------------------------------------


def test_digest_reads_array_contents_not_their_shortened_repr():
    a = np.zeros((64, 64), dtype=np.float32)
    b = a.copy()
    b[32, 32] = 1.0  # numpy's repr of both is the same "..." summary
    assert repr(a) == repr(b)
    assert digest(a) != digest(b)
    assert digest(torch.from_numpy(a)) != digest(torch.from_numpy(b))
    assert digest({"x": a, "y": [1, "s"]}) == digest({"y": [1, "s"], "x": a.copy()})


def test_digest_tells_types_and_nesting_apart():
    values = [1, 1.0, "1", True, None, (1,), [1], {"a": 1}, {"a": (1,)}, torch.ones(1), torch.ones(1).double()]
    assert len({digest(v) for v in values}) == len(values)


def test_digest_of_an_object_without_readable_state_misses_rather_than_hits():
    assert digest(object()) != digest(object())

    class Unit:
        def __init__(self, image):
            self.image = image

    assert digest(Unit(np.zeros(3))) == digest(Unit(np.zeros(3)))
    assert digest(Unit(np.zeros(3))) != digest(Unit(np.ones(3)))


# --- the bound ------------------------------------------------------------------------------------------------


def test_least_recently_used_records_leave_first_within_the_byte_limit():
    one = record(100).nbytes
    cache = FoundationCache(3 * one)
    for key in "abc":
        assert cache.put(key, record(100))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", record(100))
    assert cache.get("b") is None and all(cache.get(k) is not None for k in "acd")
    cache.resize(one)
    assert len(cache) == 1 and cache.get("d") is not None
    assert cache.nbytes <= cache.max_bytes


def test_zero_keeps_nothing_and_a_record_larger_than_the_limit_is_refused():
    assert not FoundationCache(0).put("a", record(1))
    cache = FoundationCache(record(10).nbytes)
    assert not cache.put("big", record(11))
    assert len(cache) == 0
    with pytest.raises(ValueError, match="max_bytes"):
        FoundationCache(-1)


# --- reuse on the reference host ------------------------------------------------------------------------------


@pytest.fixture()
def unet():
    return tiny_sd1_unet(3)


def cure(unet, cache=None, key="k", sampler="euler_a", **settings):
    identity = LoraIdentity(unet)
    try:
        host = DiffusersHost(unet, family="sd1", steps=3, sampler=sampler, latent_hw=LATENT, seed=5,
                             set_identity=identity.set)
        options = Options(enabled=True, mask_source="attention", apg="off", **settings)
        return run_freecure(host, options, prompts=[PROMPT], negative_prompts=[""], cfg_scale=4.0, masks=[MASK],
                            foundation_cache=cache, foundation_key=key if cache is not None else None)
    finally:
        identity.remove()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"strength": 0.5}, {"strength": 2.0}),  # a strength sweep
        ({"strength": 1.0}, {"strength": 1.0, "step_start": 0.3}),  # the step window
        ({"method": "fasa"}, {"method": "blend", "blend_weight": 0.5}),  # a fasa record also has predictions
        ({"layers": "all"}, {"layers": "default"}),  # fewer layers than banked
    ],
)
def test_a_reused_foundation_gives_the_bit_identical_cure_without_sampling_again(unet, first, second):
    cache = FoundationCache(2**30)
    cure(unet, cache, **first)
    reused = cure(unet, cache, **second)
    fresh = cure(unet, **second)
    assert reused.calls["foundation"] == 0 < fresh.calls["foundation"]
    assert "foundation reused from an earlier job with the same inputs" in reused.notes
    assert torch.equal(reused.latents, fresh.latents)
    assert torch.equal(reused.foundation_images, fresh.foundation_images)
    assert reused.maps.keys() == fresh.maps.keys()
    assert all(torch.equal(reused.maps[name], fresh.maps[name]) for name in fresh.maps)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"method": "blend"}, {"method": "fasa"}),  # nothing banked
        ({"layers": "default"}, {"layers": "all"}),  # more layers than banked
    ],
)
def test_a_record_that_does_not_cover_the_cure_is_sampled_again(unet, first, second):
    cache = FoundationCache(2**30)
    cure(unet, cache, **first)
    again = cure(unet, cache, **second)
    assert again.calls["foundation"] > 0
    assert torch.equal(again.latents, cure(unet, **second).latents)


def test_another_key_misses(unet):
    cache = FoundationCache(2**30)
    cure(unet, cache, key="one")
    assert cure(unet, cache, key="two").calls["foundation"] > 0
    assert cure(unet, cache, key="one").calls["foundation"] == 0


def test_a_foundation_too_large_to_keep_says_so(unet):
    result = cure(unet, FoundationCache(1))
    assert any("foundation not kept for reuse" in note for note in result.notes)
