"""One-pass mode: the foundation rows run in the personalized pass's model calls.

On any weights, one-pass mode must give what the exact mode gives with the same masks: its foundation rows
follow the foundation pass's trajectory (same noise, conditioning, identity off) and FASA reads their K/V of
the same call, which is what the bank holds for that call. With an identity switch that changes nothing this
is the alignment property of the exact mode (a full mask or any blend gives the plain generation). Tolerances,
not bit-identity: the batch is twice as large, and batched kernels may round differently.
"""

from __future__ import annotations

import pytest
import torch
from identity_sim import AdapterIdentity, LoraIdentity, RolesHooks, block_mask, installed_state
from tiny_models import tiny_flux_transformer, tiny_sd1_unet, tiny_sdxl_unet

from freecure import sampling
from freecure.attention import AttentionEngine, CrossAttentionRecorder, preset_layers
from freecure.options import Options
from freecure.pipeline import Branch, CureSession, run_freecure
from freecure.pipeline.diffusers_host import DiffusersHost
from freecure.pipeline.flux_host import DiffusersFluxHost
from freecure.pipeline.session import EngineHooks

torch.set_num_threads(1)

LATENT = (8, 16)
PROMPTS = ("a photo of a woman with red hair", "a photo of a man with long hair")
FOUNDATION = ("a photo of a person with red hair", "a photo of a person with long hair")
NEGATIVES = ("blurry", "blurry")
CFG = 4.0
ATOL = 1e-3


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=ATOL)


def masks_per_image() -> list[torch.Tensor]:
    return [block_mask(LATENT, slice(None), slice(0, 8)), block_mask(LATENT, slice(0, 4), slice(4, 12))]


def make_host(unet, sampler: str = "euler", steps: int = 3, family: str = "sd1", **kwargs) -> DiffusersHost:
    return DiffusersHost(unet, family=family, steps=steps, sampler=sampler, batch_size=2, latent_hw=LATENT,
                         seed=5, **kwargs)


def options(method: str, **overrides) -> Options:
    weight = overrides.pop("weight", 1.5)
    return Options(enabled=True, method=method, strength=weight, blend_weight=min(weight, 1.0), blend_start=0.0,
                   attributes=("hair",), mask_source="attention", apg="off", **overrides)


def cure(host, method: str, passes: str, masks=None, foundation_prompts=FOUNDATION, **overrides):
    return run_freecure(host, options(method, passes=passes, **overrides), prompts=PROMPTS,
                        negative_prompts=NEGATIVES, cfg_scale=CFG, foundation_prompts=foundation_prompts,
                        masks=masks)


def plain(host: DiffusersHost) -> torch.Tensor:
    return host.sample(Branch(True, PROMPTS, NEGATIVES, CFG), RolesHooks())


@pytest.fixture(scope="module")
def sd1_unet():
    return tiny_sd1_unet(1)


@pytest.mark.parametrize(
    ("sampler", "batch_cond_uncond"), [("euler", True), ("euler_a", False), ("heun", True)]
)
def test_with_an_identity_switch_that_changes_nothing_one_pass_is_the_plain_generation(
    sd1_unet, sampler, batch_cond_uncond
):
    host = make_host(sd1_unet, sampler, batch_cond_uncond=batch_cond_uncond)
    expected = plain(host)
    full = [torch.ones(LATENT, dtype=torch.bool)] * 2
    for method, masks in (("fasa", full), ("blend", masks_per_image())):
        result = cure(host, method, "one-pass", masks=masks, foundation_prompts=None)
        assert "one-pass" in result.calls
        assert_same(result.latents, expected)
        # the foundation rows are the plain generation too
        assert_same(host.decode(result.latents), result.foundation_images)


@pytest.mark.parametrize(("sampler", "batch_cond_uncond"), [("euler", True), ("euler_a", True), ("heun", False)])
def test_one_pass_equals_the_exact_cure_with_a_per_row_lora(sd1_unet, sampler, batch_cond_uncond):
    lora = LoraIdentity(sd1_unet)
    try:
        host = make_host(sd1_unet, sampler, set_identity=lora.set, identity_rows=lora.set_rows,
                         batch_cond_uncond=batch_cond_uncond)
        masks = masks_per_image()
        for method in ("fasa", "blend"):
            exact = cure(host, method, "exact", masks=masks)
            one_pass = cure(host, method, "one-pass", masks=masks)
            assert one_pass.calls == {"one-pass": sampling.model_calls(sampler, 3)}
            assert_same(one_pass.latents, exact.latents)
            assert_same(one_pass.foundation_images, exact.foundation_images)
            # the cure did something: the comparison is not between two plain generations
            assert (exact.latents - plain(host)).abs().max() > 10 * ATOL
    finally:
        lora.remove()
    assert lora.rows is None  # the host put the identity back on every row


def test_one_pass_equals_the_exact_cure_with_an_identity_adapter(sd1_unet):
    adapter = AdapterIdentity(sd1_unet)
    try:
        host = make_host(sd1_unet, set_identity=adapter.set, identity_rows=adapter.set_rows)
        masks = masks_per_image()
        exact = cure(host, "fasa", "exact", masks=masks, weight=3.0)
        one_pass = cure(host, "fasa", "one-pass", masks=masks, weight=3.0)
        assert_same(one_pass.latents, exact.latents)
        assert (exact.latents - plain(host)).abs().max() > 10 * ATOL
    finally:
        adapter.remove()


def test_sdxl_layout_one_pass_equals_exact():
    host = make_host(tiny_sdxl_unet(2), family="sdxl", steps=2)
    masks = masks_per_image()
    exact = cure(host, "fasa", "exact", masks=masks)
    one_pass = cure(host, "fasa", "one-pass", masks=masks)
    assert_same(one_pass.latents, exact.latents)
    assert (exact.latents - plain(host)).abs().max() > 10 * ATOL


def test_online_masks_come_from_the_foundation_rows_over_the_first_part_of_the_schedule(sd1_unet):
    """The maps one-pass mode builds its masks from are those a recorder on the separate foundation pass gets
    over the same calls; the masks then follow from them as in the exact mode."""
    lora = LoraIdentity(sd1_unet)
    try:
        host = make_host(sd1_unet, steps=4, set_identity=lora.set, identity_rows=lora.set_rows)
        session = CureSession(host, options("fasa", passes="one-pass", one_pass_masks_at=0.5), prompts=PROMPTS,
                              negative_prompts=NEGATIVES, cfg_scale=CFG, foundation_prompts=FOUNDATION)
        session.one_pass()
        engine = AttentionEngine()
        columns = host.prompt_columns(FOUNDATION, session.plan.phrases)
        recorder = CrossAttentionRecorder(columns, layers=preset_layers("default", host.layer_keys(), "sd1"),
                                          progress_range=(0.0, 0.5))
        with host.attach(engine), engine.recording(None, (), recorder):
            host.sample(session.foundation_branch, EngineHooks(engine))
        assert set(session.maps) == {"hair"}
        torch.testing.assert_close(session.maps["hair"], recorder.maps()["hair"], rtol=1e-3, atol=1e-4)
        assert recorder.observations > 0
        assert any(m.union.any() for m in session.masks)
        assert any("first 0.5 of the schedule" in note for note in session.notes)
    finally:
        lora.remove()


def test_the_cure_starts_at_masks_at(sd1_unet):
    """Masks halfway leave the later calls to cure; masks past the last call (progress 0.75 of 4 steps) cure
    nothing and say so."""
    host = make_host(sd1_unet, steps=4)
    expected = plain(host)
    late = cure(host, "fasa", "one-pass", one_pass_masks_at=0.5)
    assert any(m.union.any() for m in late.masks)
    assert (late.latents - expected).abs().max() > 10 * ATOL
    too_late = cure(host, "fasa", "one-pass", one_pass_masks_at=0.8)
    assert any("no call at or after 0.8 of the schedule: nothing was cured" in note for note in too_late.notes)
    assert too_late.masks == []
    assert_same(too_late.latents, expected)


def test_a_host_that_cannot_switch_identity_per_row_runs_the_exact_passes(sd1_unet):
    lora = LoraIdentity(sd1_unet)
    try:
        host = make_host(sd1_unet, set_identity=lora.set)
        masks = masks_per_image()
        fallback = cure(host, "fasa", "one-pass", masks=masks)
        exact = cure(host, "fasa", "exact", masks=masks)
        assert torch.equal(fallback.latents, exact.latents)
        assert any("one-pass mode unavailable (this identity is switched for the whole batch" in note
                   for note in fallback.notes)
        assert "foundation" in fallback.calls
    finally:
        lora.remove()


def test_nothing_stays_installed_after_one_pass_even_when_it_fails(sd1_unet, monkeypatch):
    lora = LoraIdentity(sd1_unet)
    try:
        host = make_host(sd1_unet, set_identity=lora.set, identity_rows=lora.set_rows)
        before = installed_state(sd1_unet)
        cure(host, "fasa", "one-pass")
        assert installed_state(sd1_unet) == before

        def broken(*args, **kwargs):
            raise RuntimeError("decoder out of memory")

        monkeypatch.setattr(host, "decode", broken)
        with pytest.raises(Exception, match="decoder out of memory"):
            cure(host, "fasa", "one-pass")
        assert installed_state(sd1_unet) == before
        assert lora.rows is None
    finally:
        lora.remove()


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_flux_one_pass_equals_exact(cfg):
    """Joint attention: the foundation rows' text-to-image maps and FASA on their image K/V in the same call."""
    host = DiffusersFluxHost(tiny_flux_transformer(1, guidance_embeds=True), steps=3, batch_size=2,
                             latent_hw=LATENT, seed=5)
    common = {"prompts": PROMPTS, "negative_prompts": NEGATIVES, "cfg_scale": cfg, "foundation_prompts": FOUNDATION}
    masks = masks_per_image()
    exact = run_freecure(host, options("fasa", passes="exact"), masks=masks, **common)
    one_pass = run_freecure(host, options("fasa", passes="one-pass"), masks=masks, **common)
    assert_same(one_pass.latents, exact.latents)
    online = run_freecure(host, options("fasa", passes="one-pass", one_pass_masks_at=0.3), **common)
    assert set(online.maps) == {"hair"} and online.maps["hair"].shape == (2, *LATENT)
    assert any(m.union.any() for m in online.masks)
