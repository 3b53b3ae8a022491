"""Alignment: when switching identity off changes nothing, the foundation pass is the plain pass, so the
cure must reduce to known plain generations. This holds exactly on any weights and catches any bank
entry taken from the wrong call, layer, row or token order.

- blend: e_f == e_p at every call, so the blended output is the plain output, for any weight and mask.
- fasa, full mask: keys [K; K] with bias w on the copy give weights e^l (1 + e^w) / sum: plain attention.
- fasa, partial mask: the cure equals a test-side FASA written from the formula (a diffusers processor
  that records the plain pass's K/V and then attends to [K; K_f[mask]] with bias w), independent of
  the engine. (Plain attention with a log(1 + e^w) bias on in-mask own keys is the same only up to the
  first hooked layer: after it the cure's features leave the foundation's, so it is no reference.)
"""

from __future__ import annotations

import pytest
import torch
from identity_sim import RolesHooks, block_mask, tokens_in_block_mask
from tiny_models import tiny_sd1_unet, tiny_sdxl_unet

from freecure import sampling
from freecure.attention import diffusers_layer_keys
from freecure.options import Options
from freecure.pipeline import Branch, CureSession
from freecure.pipeline.diffusers_host import DiffusersHost

torch.set_num_threads(1)  # tiny models on a shared CPU: thread hand-offs cost more than they save

LATENT = (8, 16)  # non-square; multiples of the coarsest hooked grid (1/4 of the latent)
PROMPTS = ("a photo of a woman with red hair", "a photo of a man with long hair")
NEGATIVES = ("blurry", "blurry")
CFG = 4.0
STEPS = 2
ATOL = 1e-3  # fp32 rounding, amplified over a few steps of a random-weight UNet with CFG


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=ATOL)


def masks_per_image() -> list[torch.Tensor]:
    return [
        block_mask(LATENT, slice(None), slice(0, 8)),  # image 0: left half
        block_mask(LATENT, slice(0, 4), slice(4, 12)),  # image 1: a top-middle block
    ]


class ReferenceSelfAttention:
    """Test-side FASA, written from the formula: plain softmax attention, except that in ``cure`` mode
    the conditional row of image i also attends to the recorded foundation keys/values inside mask i,
    with logit bias ``weight``. In ``record`` mode it stores the conditional rows' keys/values per
    (call, layer, image). Roles and call index come from the host's before_call."""

    def __init__(self, hooks: RolesHooks, layer: str, bank: dict, masks: list | None, weight: float) -> None:
        self.hooks, self.layer, self.bank, self.masks, self.weight = hooks, layer, bank, masks, weight
        self.seen = (-1, 0)  # (call, rows seen in it): split cond/uncond UNet calls arrive in row order

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        n_tokens, heads = hidden_states.shape[1], attn.heads
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        grid = self.grid(n_tokens)
        call = self.hooks.calls - 1
        offset = self.seen[1] if self.seen[0] == call else 0
        self.seen = (call, offset + len(hidden_states))
        rows = []
        for row, role in enumerate(self.hooks.roles[offset : offset + len(hidden_states)]):
            keys, values, bias = k[row], v[row], torch.zeros(n_tokens)
            if role.cond and self.masks is None:
                self.bank[(call, self.layer, role.image)] = (k[row].clone(), v[row].clone())
            elif role.cond:
                inside = tokens_in_block_mask(self.masks[role.image], grid)
                k_found, v_found = self.bank[(call, self.layer, role.image)]
                keys, values = torch.cat([keys, k_found[inside]]), torch.cat([values, v_found[inside]])
                bias = torch.cat([bias, torch.full((len(inside),), self.weight)])
            q_h, k_h, v_h = (t.view(len(t), heads, -1).transpose(0, 1) for t in (q[row], keys, values))
            probs = ((q_h @ k_h.transpose(-1, -2)) * attn.scale + bias).softmax(dim=-1)
            rows.append((probs @ v_h).transpose(0, 1).reshape(n_tokens, -1))
        return attn.to_out[1](attn.to_out[0](torch.stack(rows)))

    @staticmethod
    def grid(n_tokens: int) -> tuple[int, int]:
        height, width = LATENT
        while height * width != n_tokens:
            height, width = height // 2, width // 2
        return height, width


def make_host(unet, sampler: str, family: str = "sd1", seed: int = 5, **kwargs) -> DiffusersHost:
    return DiffusersHost(
        unet, family=family, steps=STEPS, sampler=sampler, batch_size=2, latent_hw=LATENT, seed=seed, **kwargs
    )


def personalized() -> Branch:
    return Branch(True, PROMPTS, NEGATIVES, CFG)


def reference_generation(host: DiffusersHost, layers, masks, weight: float) -> torch.Tensor:
    """A plain pass that records the hooked layers' K/V, then a pass with the test-side FASA."""
    unet = host.unet
    previous = dict(unet.attn_processors)
    bank: dict = {}
    hooked = [name for name, (key, is_self) in diffusers_layer_keys(unet).items() if is_self and key in layers]
    try:
        for mode_masks in (None, masks):
            hooks = RolesHooks()
            processors = dict(previous)
            for name in hooked:
                processors[f"{name}.processor"] = ReferenceSelfAttention(hooks, name, bank, mode_masks, weight)
            unet.set_attn_processor(processors)
            result = host.sample(personalized(), hooks)
    finally:
        unet.set_attn_processor(previous)
    return result


def session(host: DiffusersHost, method: str, weight: float) -> CureSession:
    options = Options(
        enabled=True, method=method, strength=weight, blend_weight=min(weight, 1.0), blend_start=0.0,
        attributes=("hair",), mask_source="attention", apg="off",
    )  # fmt: skip
    cure = CureSession(host, options, prompts=PROMPTS, negative_prompts=NEGATIVES, cfg_scale=CFG)
    cure.foundation()
    return cure


def cured(cure: CureSession, masks) -> torch.Tensor:
    with cure.curing(masks) as hooks:
        return cure.host.sample(cure.personalized, hooks)


@pytest.fixture(scope="module")
def sd1_unet():
    return tiny_sd1_unet(1)


@pytest.mark.parametrize(
    ("sampler", "weight", "batch_cond_uncond"),
    [("euler", 0.5, True), ("euler_a", 1.5, False), ("heun", 3.0, True)],  # False: cond, uncond apart
)
def test_fasa_reduces_to_plain_or_reference(sd1_unet, sampler, weight, batch_cond_uncond):
    host = make_host(sd1_unet, sampler, batch_cond_uncond=batch_cond_uncond)
    plain = host.sample(personalized(), RolesHooks())
    cure = session(host, "fasa", weight)
    full = [torch.ones(LATENT, dtype=torch.bool)] * 2
    assert_same(cured(cure, full), plain)

    masks = masks_per_image()
    partial = cured(cure, masks)
    assert_same(partial, reference_generation(host, cure.layers, masks, weight))
    assert (partial - plain).abs().max() > 10 * ATOL  # the foundation tokens really changed something

    calls = sampling.model_calls(sampler, STEPS)
    assert cure.calls == {"foundation": calls, "cure": calls}
    assert cure.bank.misses == 0
    assert len(cure.bank) == calls * len(cure.layers) * 2  # every call, hooked layer and image


def test_a_misaligned_bank_shows_up(sd1_unet):
    """The comparison bites: the same cure with a bank from another trajectory (other noise) is far off."""
    host = make_host(sd1_unet, "euler")
    masks = masks_per_image()
    aligned = session(host, "fasa", 1.5)
    misaligned = session(make_host(sd1_unet, "euler", seed=6), "fasa", 1.5)
    with misaligned.curing(masks) as hooks:
        off = host.sample(personalized(), hooks)
    assert (off - cured(aligned, masks)).abs().max() > 10 * ATOL


def test_blend_reduces_to_plain_for_any_mask(sd1_unet):
    host = make_host(sd1_unet, "heun")
    plain = host.sample(personalized(), RolesHooks())
    cure = session(host, "blend", 0.9)
    assert_same(cured(cure, masks_per_image()), plain)
    assert cure.calls["cure"] == cure.calls["foundation"] == sampling.model_calls("heun", STEPS)


def test_sdxl_layout_fasa_alignment():
    host = make_host(tiny_sdxl_unet(2), "euler", family="sdxl")
    plain = host.sample(personalized(), RolesHooks())
    cure = session(host, "fasa", 1.5)
    assert_same(cured(cure, [torch.ones(LATENT, dtype=torch.bool)] * 2), plain)
    masks = masks_per_image()
    assert_same(cured(cure, masks), reference_generation(host, cure.layers, masks, 1.5))
    assert cure.bank.misses == 0
