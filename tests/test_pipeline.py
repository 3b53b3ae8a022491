"""The pipeline on the reference diffusers host with simulated identities (tests/identity_sim.py):
pass-through, the mask at the attention level, the blend formula per call, inversion and APG,
samplers, identity hooks kept, nothing left installed after success or failure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from identity_sim import AdapterIdentity, LoraIdentity, RolesHooks, block_mask, installed_state
from tiny_models import tiny_sd1_unet

from freecure import sampling
from freecure.attention import diffusers_layer_keys, execution_order, preset_layers
from freecure.attributes import analyze_prompt
from freecure.options import Options
from freecure.pipeline import Branch, CureError, CureInterrupted, CureSession, plan_cure, run_freecure
from freecure.pipeline.diffusers_host import DiffusersHost
from freecure.tokens import phrase_columns, subsequence_columns

torch.set_num_threads(1)  # tiny models on a shared CPU: thread hand-offs cost more than they save

LATENT = (8, 8)
PROMPT = "a photo of a woman with red hair"
CFG = 4.0


@pytest.fixture()
def unet():
    return tiny_sd1_unet(3)


def make_host(unet, sampler="euler", steps=2, **kwargs) -> DiffusersHost:
    return DiffusersHost(unet, family="sd1", steps=steps, sampler=sampler, latent_hw=LATENT, seed=9, **kwargs)


def options(**overrides) -> Options:
    settings = {"enabled": True, "mask_source": "attention", "apg": "off", **overrides}
    return Options(**settings)


def plain(host: DiffusersHost, prompt: str = PROMPT) -> torch.Tensor:
    return host.sample(Branch(True, (prompt,), ("",), CFG), RolesHooks())


def new_session(host, prompt: str = PROMPT, **overrides) -> CureSession:
    return CureSession(host, options(**overrides), prompts=[prompt], negative_prompts=[""], cfg_scale=CFG)


# --- pass-through ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "overrides", "masks"),
    [
        (PROMPT, {}, [torch.zeros(LATENT, dtype=torch.bool)]),  # empty mask
        (PROMPT, {"strength": 0.0}, None),  # w = 0
        (PROMPT, {"method": "blend", "blend_weight": 0.0}, None),
        ("a photo of a woman", {}, None),  # no attribute in the prompt
    ],
)
def test_pass_through_is_bit_identical_to_the_plain_personalized_generation(unet, prompt, overrides, masks):
    lora = LoraIdentity(unet)
    host = make_host(unet, set_identity=lora.set)
    expected = plain(host, prompt)
    result = run_freecure(
        host, options(**overrides), prompts=[prompt], negative_prompts=[""], cfg_scale=CFG, masks=masks
    )
    assert torch.equal(result.latents, expected)
    assert result.notes  # says why nothing was cured


# --- the mask at the attention level ----------------------------------------------------------------------


class IndicatorValues(torch.nn.Module):
    """Stands in for to_v: per head, channel 0 = 1 outside the mask, channel 1 = 1 inside (foundation),
    or all zeros (cure pass), so the attention output reads off the mass on foundation tokens."""

    def __init__(self, inside: torch.Tensor | None, heads: int, inner: int) -> None:
        super().__init__()
        self.inside, self.heads, self.inner = inside, heads, inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(*x.shape[:2], self.heads, self.inner // self.heads)
        if self.inside is not None:
            out[:, :, :, 0] = (~self.inside).float()[None, :, None]
            out[:, :, :, 1] = self.inside.float()[None, :, None]
        return out.flatten(2)


def test_foundation_mass_is_zero_outside_the_mask_and_grows_with_w(unet):
    host = make_host(unet, set_identity=LoraIdentity(unet).set)
    mask = block_mask(LATENT, slice(None), slice(0, 4))
    cure = new_session(host, strength=0.5)
    # The first hooked layer: no hooked layer runs before it, so its inputs at call 0 do not depend on w.
    first = execution_order(preset_layers("default", host.layer_keys(), "sd1"))[0]
    name = next(n for n, (key, is_self) in diffusers_layer_keys(unet).items() if is_self and key == first)
    attn = unet.get_submodule(name)
    grid_h = LATENT[0] // 2  # output_blocks 6-8 run at half the latent size
    inside = mask[::2, ::2].flatten()
    assert inside.numel() == grid_h * LATENT[1] // 2
    original_v, original_out = attn.to_v, attn.to_out[0]
    heads, inner = attn.heads, attn.to_v.out_features
    masses = {}
    try:
        attn.to_v = IndicatorValues(inside, heads, inner)
        cure.foundation()
        attn.to_v, attn.to_out[0] = IndicatorValues(None, heads, inner), torch.nn.Identity()
        for weight in (0.5, 1.5, 3.0):
            cure.options = cure.options.with_overrides({"strength": weight})
            outputs = []
            handle = attn.register_forward_hook(lambda _m, _a, out, outputs=outputs: outputs.append(out[0]))
            with cure.curing([mask]) as hooks:
                host.sample(cure.personalized, hooks)
            handle.remove()
            per_head = torch.stack(outputs).view(len(outputs), -1, heads, inner // heads)
            assert torch.equal(per_head[..., 0], torch.zeros_like(per_head[..., 0]))  # exactly zero outside
            masses[weight] = per_head[0, :, :, 1]  # call 0, cond row: mass on in-mask foundation tokens
    finally:
        attn.to_v, attn.to_out[0] = original_v, original_out
    assert bool((masses[0.5] > 0).all())
    assert bool((masses[1.5] > masses[0.5]).all()) and bool((masses[3.0] > masses[1.5]).all())
    assert bool((masses[3.0] < 1).all())


def test_left_and_right_half_masks_give_different_outputs(unet):
    host = make_host(unet, set_identity=LoraIdentity(unet).set)
    cure = new_session(host, strength=1.5)
    cure.foundation()
    outputs = []
    for cols in (slice(0, 4), slice(4, 8)):
        with cure.curing([block_mask(LATENT, slice(None), cols)]) as hooks:
            outputs.append(host.sample(cure.personalized, hooks))
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3


# --- the blend formula at every call ----------------------------------------------------------------


def test_blend_formula_holds_at_every_call(unet):
    host = make_host(unet, sampler="heun", steps=3, set_identity=LoraIdentity(unet).set)
    cure = new_session(host, method="blend", blend_weight=0.6, blend_start=0.3)
    cure.foundation()
    mask = block_mask(LATENT, slice(2, 6), slice(0, 5))
    seen = []
    with cure.curing([mask]) as hooks:
        blend_after_cfg = hooks.after_cfg

        def recording_after_cfg(x_t, sigma, x0):
            out = blend_after_cfg(x_t, sigma, x0)
            seen.append((hooks._progress, x_t, sigma, x0, out))
            return out

        hooks.after_cfg = recording_after_cfg
        host.sample(cure.personalized, hooks)
    predictions = cure.foundation_predictions
    assert len(seen) == len(predictions) == sampling.model_calls("heun", 3)
    inside = mask.expand(1, 4, *LATENT)
    blended_calls = 0
    for (progress, x_t, sigma, x0, out), (x_f, x0_f) in zip(seen, predictions, strict=True):
        assert torch.equal(out[~inside], x0[~inside])  # outside: the personalized prediction, exactly
        if progress < 0.3:
            assert torch.equal(out, x0)
            continue
        blended_calls += 1
        s = float(sigma[0])
        e_p, e_f = (x_t.double() - x0.double()) / s, (x_f.double() - x0_f.double()) / s
        expected = x_t.double() - s * ((1 - 0.6) * e_p + 0.6 * e_f)
        torch.testing.assert_close(out.double()[inside], expected[inside], rtol=0, atol=1e-5)
        assert not torch.equal(out[inside], x0[inside])
    assert blended_calls >= 2


# --- inversion and APG ----------------------------------------------------------------------------------------


def test_inversion_then_regeneration_reconstructs_better_with_more_steps(unet):
    errors = []
    for steps in (4, 8, 16):
        host = make_host(unet, steps=steps)
        latent = plain(host)
        cure = new_session(host, apg="on", apg_strength=1.0, apg_source=PROMPT, apg_target=PROMPT)
        cure.personalized = Branch(True, (PROMPT,), ("",), 1.0)  # guidance 1 both ways: a pure round trip
        back = cure.apg(latent)
        errors.append(float((back - latent).abs().max() / latent.abs().max()))
    print("APG round trip (g = 1, same prompt) relative max error for 4, 8, 16 steps:", errors)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.1


def test_apg_with_no_step_returns_its_input_and_runs_with_identity_on(unet):
    adapter = AdapterIdentity(unet)
    host = make_host(unet, set_identity=adapter.set)
    latent = plain(host)
    assert new_session(host, apg="on", apg_strength=0.0).apg(latent) is latent
    assert new_session(host, apg="off").apg(latent) is latent
    before = adapter.active_calls
    cured = new_session(host, "a photo of a woman laughing", apg="auto", apg_strength=0.5).apg(latent)
    assert adapter.active_calls > before and not torch.equal(cured, latent)


def test_apg_prompts_and_asymmetric_baseline(unet):
    cure = new_session(make_host(unet), "a photo of a woman with red hair, laughing happily", apg="auto")
    assert cure.plan.apg
    sources, targets = cure.apg_prompts()
    assert sources == ("a woman",) and targets[0].startswith("a woman, ") and "laughing" in targets[0]
    runs = []
    cure.host.run = lambda fn, x, branch, hooks: runs.append(branch) or x  # records the branches only
    cure.options = cure.options.with_overrides({"apg_guidance": "asymmetric"})
    cure.apg(torch.zeros(1, 4, *LATENT))
    inversion, regeneration = runs
    assert inversion.cfg_scale == 1.0 and inversion.prompts == sources and inversion.identity
    assert regeneration.negative_prompts == sources and regeneration.cfg_scale == CFG


def test_plan_cure_decisions():
    analysis = analyze_prompt("a man with glasses, smiling")
    plan = plan_cure(options().resolved("sd1"), analysis)
    assert plan.attributes == ("glasses",) and plan.cure and not plan.apg
    assert plan_cure(options(apg="auto").resolved("sd1"), analysis).apg
    assert not plan_cure(options(apg="auto").resolved("sd1"), analyze_prompt("a man")).apg
    assert not plan_cure(options(strength=0.0).resolved("sdxl"), analysis).cure


def test_plan_cure_with_a_strength_per_attribute():
    analysis = analyze_prompt("a man with red hair and glasses")
    plan = plan_cure(options(attribute_strength="hair:0").resolved("sd1"), analysis)
    assert plan.attributes == ("glasses",) and plan.cure
    assert plan.notes == ["strength 0 for hair: not cured"]
    only_hair = plan_cure(options(strength=0.0, attribute_strength="hair:1.2").resolved("sd1"), analysis)
    assert only_hair.attributes == ("hair",) and only_hair.cure
    nothing = plan_cure(options(strength=0.0, attribute_strength="hair:0").resolved("sd1"), analysis)
    assert not nothing.cure
    blend = plan_cure(options(method="blend", attribute_strength="hair:0").resolved("sd1"), analysis)
    assert blend.attributes == ("hair", "glasses") and blend.notes == [
        "attribute_strength is for fasa; blend uses blend_weight in every mask"]


def test_strengths_per_attribute_act_in_the_cure_and_equal_ones_are_the_single_strength(unet):
    """hair and glasses at the global strength: bit-identical to no per-attribute strength; at other
    strengths the cure changes, and each attribute's strength changes it."""
    prompt = "a photo of a woman with red hair and glasses"
    hair = block_mask(LATENT, slice(0, 4), slice(None))
    glasses = block_mask(LATENT, slice(4, 6), slice(2, 6))
    host = make_host(unet, set_identity=LoraIdentity(unet).set)

    def cured(**overrides) -> torch.Tensor:
        session = new_session(host, prompt, strength=0.5, **overrides)
        session.foundation()
        session.build_masks()
        on_image = {name: np.kron(mask.numpy(), np.ones((8, 8), dtype=bool)) for name, mask in
                    (("hair", hair), ("glasses", glasses))}
        for masks in session.masks:  # fixed masks: random weights make arbitrary attention masks
            masks.per_attribute.update(on_image)
            masks.union[...] = on_image["hair"] | on_image["glasses"]
        with session.curing() as hooks:
            return host.sample(session.personalized, hooks)

    single = cured()
    assert torch.equal(cured(), single)
    assert torch.equal(cured(attribute_strength="hair:0.5, glasses:0.5"), single)
    stronger_hair = cured(attribute_strength="hair:2.0")
    stronger_glasses = cured(attribute_strength="glasses:2.0")
    assert not torch.equal(stronger_hair, single) and not torch.equal(stronger_glasses, single)
    assert not torch.equal(stronger_hair, stronger_glasses)


# --- samplers and call counts --------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["euler", "euler_a", "heun"])
def test_samplers_repeat_and_the_bank_sees_every_call(unet, sampler):
    host = make_host(unet, sampler=sampler, steps=3, set_identity=LoraIdentity(unet).set)
    first = plain(host)
    assert torch.equal(first, plain(host))
    result = run_freecure(
        host, options(), prompts=[PROMPT], negative_prompts=[""], cfg_scale=CFG,
        masks=[block_mask(LATENT, slice(0, 4), slice(None))],
    )  # fmt: skip
    calls = sampling.model_calls(sampler, 3)
    assert result.calls == {"foundation": calls, "cure": calls}
    assert result.bank_misses == 0 and result.bank_bytes > 0
    assert not torch.equal(result.latents, first)


# --- identity kept, nothing left ----------------------------------------------------------------------------------


def test_identity_hooks_run_in_the_cure_pass_only(unet):
    adapter = AdapterIdentity(unet)
    host = make_host(unet, set_identity=adapter.set)
    cure = new_session(host)
    cure.foundation()
    assert adapter.active_calls == 0 and adapter.on  # off for the foundation pass, back on after it
    with cure.curing([block_mask(LATENT, slice(None), slice(0, 4))]) as hooks:
        host.sample(cure.personalized, hooks)
    assert adapter.active_calls == 16 * sampling.model_calls("euler", 2)  # every attn2, every call


@pytest.mark.parametrize("failing_unet_call", [1, 3, 5])  # foundation, cure, APG (2 calls per pass)
def test_nothing_is_left_installed_after_a_failure(unet, failing_unet_call):
    adapter = AdapterIdentity(unet)
    host = make_host(unet, set_identity=adapter.set)
    expected_plain = plain(host)
    calls_before = host.unet_calls

    def planted(_module, _args):
        if host.unet_calls - calls_before == failing_unet_call:
            raise RuntimeError("planted failure")

    handle = unet.register_forward_pre_hook(planted)
    before = installed_state(unet)
    settings = options(apg="on", apg_strength=0.5)
    with pytest.raises(CureError, match="planted failure"):
        run_freecure(host, settings, prompts=[PROMPT], negative_prompts=[""], cfg_scale=CFG)
    assert installed_state(unet) == before
    handle.remove()
    assert adapter.on
    assert torch.equal(plain(host), expected_plain)


def test_nothing_is_left_installed_after_success_and_interrupt_is_typed(unet):
    host = make_host(unet)
    before = installed_state(unet)
    run_freecure(host, options(), prompts=[PROMPT], negative_prompts=[""], cfg_scale=CFG)
    assert installed_state(unet) == before
    host.interrupted = True
    with pytest.raises(CureInterrupted):
        run_freecure(host, options(), prompts=[PROMPT], negative_prompts=[""], cfg_scale=CFG)
    assert installed_state(unet) == before


# --- helpers and validation ---------------------------------------------------------------------------------------


def test_token_columns_are_exact_on_the_toy_encoder(unet):
    host = make_host(unet)
    phrases = {"hair": ("red curly hair",), "hat": ("hat",)}
    columns = host.token_columns("a woman with red curly hair and a hat", phrases)
    assert columns == {"hair": [4, 5, 6], "hat": [9]}
    assert subsequence_columns([[1, 7, 8, 2], [1, 8, 7, 8, 2]], [7, 8]) == [1, 2, 79, 80]
    assert subsequence_columns([[1, 5, 7, 2], [1, 8, 9, 2]], [7, 8]) == [2, 78], "on over the chunk boundary"
    ids = {"red": [9], "hair": [6], "red hair": [9, 6]}
    fallback = phrase_columns([[1, 5, 6, 2]], ids.__getitem__, {"hair": ("red hair",)})
    assert fallback == {"hair": [2]}


def test_bad_input_names_the_field(unet):
    with pytest.raises(ValueError, match="negative_prompts"):
        Branch(True, ("a",), (), 4.0)
    with pytest.raises(ValueError, match="cfg_scale"):
        Branch(True, ("a",), ("",), 0)
    with pytest.raises(ValueError, match="sampler"):
        make_host(unet, sampler="ddim")
    cure = new_session(make_host(unet))
    cure.foundation()
    with pytest.raises(ValueError, match="masks"), cure.curing([torch.ones(LATENT), torch.ones(LATENT)]):
        pass
