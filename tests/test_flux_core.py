"""FLUX (joint attention) on diffusers' ``FluxTransformer2DModel`` with random weights: properties that hold
exactly on any weights.

- An empty mask or w = 0 installs nothing that changes a bit: the cure is the plain pass, bit for bit.
- Identity alignment: when switching identity off changes nothing, the foundation pass is the plain pass,
  so the cure must equal a test-side FASA written from the formula (a processor that records the plain
  pass's post-RoPE image keys/values, then lets the conditional rows' image queries attend to
  [own text and image keys; foundation image keys inside the mask] with bias w, text queries plain).
  Joint attention has no "full mask = plain" shortcut: the text keys are not duplicated.
- RoPE: the same reference with keys banked *before* RoPE is far off, so the choice is pinned.
- Bank alignment across the schedule: one entry per call, hooked layer and image; no miss; a bank from
  another trajectory is far off.
"""

from __future__ import annotations

import pytest
import torch
from identity_sim import RolesHooks, block_mask, tokens_in_block_mask
from tiny_models import tiny_flux_transformer

from freecure import sampling
from freecure.attention import joint_blocks, patch_grid, preset_layers
from freecure.options import Options
from freecure.pipeline import Branch, CureSession, run_freecure
from freecure.pipeline.flux_host import DiffusersFluxHost, flow_sigmas
from freecure.pipeline.session import PlainHooks

LATENT = (8, 12)  # non-square: a 4x6 token grid
PROMPTS = ("a photo of a woman with red hair", "a photo of a man with long hair")
NEGATIVES = ("blurry", "blurry")
STEPS = 2
ATOL = 1e-4


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=ATOL)


def masks_per_image(latent_hw=LATENT) -> list[torch.Tensor]:
    """Grid-aligned blocks (even latent coordinates), different per image."""
    return [
        block_mask(latent_hw, slice(None), slice(0, 6)),  # image 0: left half
        block_mask(latent_hw, slice(0, 4), slice(4, 10)),  # image 1: a top-middle block
    ]


def rope(t: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """FLUX's RoPE on (B, L, H, D), pairs (2i, 2i + 1) rotated, written from the formula."""
    cos, sin = (r[None, :, None, :].to(t.dtype) for r in rotary)
    pairs = t.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return t * cos + rotated * sin


class ReferenceJointAttention:
    """Test-side FLUX attention from the formula; ``masks`` None = record mode (bank the conditional rows'
    image keys, after RoPE when ``rope_found``, and values), else cure mode."""

    def __init__(self, hooks, layer, bank, masks, weight, latent_hw, rope_found=True) -> None:
        self.hooks, self.layer, self.bank, self.masks, self.weight = hooks, layer, bank, masks, weight
        self.grid = patch_grid(latent_hw)
        self.rope_found = rope_found
        self.seen = (-1, 0)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):
        def split(t):
            return t.unflatten(-1, (-1, attn.head_dim))

        q, k, v = attn.norm_q(split(attn.to_q(hidden_states))), attn.norm_k(split(attn.to_k(hidden_states))), \
            split(attn.to_v(hidden_states))
        if encoder_hidden_states is not None:
            e = encoder_hidden_states
            q = torch.cat([attn.norm_added_q(split(attn.add_q_proj(e))), q], dim=1)
            k = torch.cat([attn.norm_added_k(split(attn.add_k_proj(e))), k], dim=1)
            v = torch.cat([split(attn.add_v_proj(e)), v], dim=1)
        q_r, k_r = rope(q, image_rotary_emb), rope(k, image_rotary_emb)
        length, n_image = q.shape[1], self.grid[0] * self.grid[1]
        n_text = length - n_image
        call = self.hooks.calls - 1
        offset = self.seen[1] if self.seen[0] == call else 0
        self.seen = (call, offset + len(q))
        rows = []
        for row, role in enumerate(self.hooks.roles[offset : offset + len(q)]):
            heads_q, keys, values = q_r[row].transpose(0, 1), k_r[row].transpose(0, 1), v[row].transpose(0, 1)
            logits = heads_q @ keys.transpose(-1, -2) * attn.head_dim**-0.5  # (H, L, L)
            out = logits.softmax(-1) @ values
            if role.cond and self.masks is None:
                banked = (k_r if self.rope_found else k)[row, n_text:]
                self.bank[(call, self.layer, role.image)] = (banked.clone(), v[row, n_text:].clone())
            elif role.cond:
                inside = tokens_in_block_mask(self.masks[role.image], self.grid)
                k_found, v_found = (t[inside].transpose(0, 1) for t in self.bank[(call, self.layer, role.image)])
                found_logits = heads_q[:, n_text:] @ k_found.transpose(-1, -2) * attn.head_dim**-0.5 + self.weight
                probs = torch.cat([logits[:, n_text:], found_logits], dim=-1).softmax(-1)
                out[:, n_text:] = probs @ torch.cat([values, v_found], dim=1)
            rows.append(out.transpose(0, 1).flatten(1))
        out = torch.stack(rows)
        if encoder_hidden_states is None:
            return out
        return attn.to_out[0](out[:, n_text:]), attn.to_add_out(out[:, :n_text])


def make_host(transformer, sampler="euler", seed=5, latent_hw=LATENT) -> DiffusersFluxHost:
    return DiffusersFluxHost(transformer, steps=STEPS, sampler=sampler, batch_size=2, latent_hw=latent_hw,
                             seed=seed)


def branch(cfg: float) -> Branch:
    return Branch(True, PROMPTS, NEGATIVES, cfg)


def reference_generation(host, layers, masks, weight, cfg, rope_found=True) -> torch.Tensor:
    transformer = host.unet
    previous = dict(transformer.attn_processors)
    names = {module: name for name, module in transformer.named_modules()}
    hooked = {f"{names[block.attn]}.processor": key for key, block in joint_blocks(transformer).items()
              if key in layers}
    bank: dict = {}
    try:
        for mode_masks in (None, masks):
            hooks = RolesHooks()
            processors = dict(previous)
            for name, key in hooked.items():
                processors[name] = ReferenceJointAttention(hooks, key, bank, mode_masks, weight, host.latent_hw,
                                                           rope_found)
            transformer.set_attn_processor(processors)
            result = host.sample(branch(cfg), hooks)
    finally:
        transformer.set_attn_processor(previous)
    return result


def session(host, weight, cfg, layers="default", method="fasa") -> CureSession:
    options = Options(enabled=True, method=method, strength=weight, blend_weight=min(weight, 1.0),
                      blend_start=0.0, attributes=("hair",), mask_source="attention", apg="off", layers=layers)
    cure = CureSession(host, options, prompts=PROMPTS, negative_prompts=NEGATIVES, cfg_scale=cfg)
    cure.foundation()
    return cure


def cured(cure: CureSession, masks) -> torch.Tensor:
    with cure.curing(masks) as hooks:
        return cure.host.sample(cure.personalized, hooks)


@pytest.fixture(scope="module")
def dev():
    return tiny_flux_transformer(1, guidance_embeds=True)


@pytest.fixture(scope="module")
def schnell():
    return tiny_flux_transformer(2, guidance_embeds=False)


def test_default_preset_is_the_later_single_stream_blocks(dev):
    keys = make_host(dev).layer_keys()
    assert keys[:2] == [("double", 0, 0), ("double", 1, 0)] and len(keys) == 6
    assert preset_layers("default", keys, "flux") == {("single", 2, 0), ("single", 3, 0)}
    assert preset_layers("decoder", keys, "flux") == {("single", i, 0) for i in range(4)}
    assert preset_layers("all", keys, "flux") == frozenset(keys)


@pytest.mark.parametrize(("cfg", "layers"), [(1.0, "all"), (3.0, "default")])
def test_empty_mask_or_zero_weight_is_plain_bit_for_bit(dev, cfg, layers):
    host = make_host(dev)
    plain = host.sample(branch(cfg), PlainHooks())
    empty = [torch.zeros(LATENT, dtype=torch.bool)] * 2
    assert torch.equal(cured(session(host, 1.5, cfg, layers), empty), plain)
    assert torch.equal(cured(session(host, 0.0, cfg, layers), masks_per_image()), plain)


@pytest.mark.parametrize(
    ("model", "sampler", "cfg", "weight", "layers"),
    [
        ("dev", "euler", 1.0, 1.5, "all"),  # distilled guidance: one conditional row per image
        ("dev", "heun", 1.0, 0.5, "default"),
        ("schnell", "euler", 3.0, 3.0, "all"),  # real CFG: unconditional rows stay plain
    ],
)
def test_identity_alignment_equals_the_reference(request, model, sampler, cfg, weight, layers):
    host = make_host(request.getfixturevalue(model), sampler)
    plain = host.sample(branch(cfg), PlainHooks())
    cure = session(host, weight, cfg, layers)
    masks = masks_per_image()
    result = cured(cure, masks)
    assert_same(result, reference_generation(host, cure.layers, masks, weight, cfg))
    assert (result - plain).abs().max() > 100 * ATOL  # the foundation tokens really changed something

    calls = sampling.model_calls(sampler, STEPS)
    assert cure.calls == {"foundation": calls, "cure": calls}
    assert cure.bank.misses == 0
    assert len(cure.bank) == calls * len(cure.layers) * 2  # every call, hooked layer and image


def test_banked_keys_carry_the_foundations_rope(dev):
    """Keys banked before RoPE would put every foundation key at position 0: far from the cure."""
    host = make_host(dev)
    cure = session(host, 1.5, 1.0, "all")
    masks = masks_per_image()
    result = cured(cure, masks)
    assert_same(result, reference_generation(host, cure.layers, masks, 1.5, 1.0, rope_found=True))
    unrotated = reference_generation(host, cure.layers, masks, 1.5, 1.0, rope_found=False)
    assert (result - unrotated).abs().max() > 100 * ATOL


def test_a_misaligned_bank_shows_up(dev):
    host = make_host(dev)
    masks = masks_per_image()
    aligned = session(host, 1.5, 1.0, "all")
    misaligned = session(make_host(dev, seed=6), 1.5, 1.0, "all")
    with misaligned.curing(masks) as hooks:
        off = host.sample(branch(1.0), hooks)
    assert (off - cured(aligned, masks)).abs().max() > 100 * ATOL


def test_odd_latent_sizes_pad_like_flux(dev):
    """A 7x10 latent is padded to 8x10 (a 4x5 grid); the bank and masks follow the token grid."""
    latent = (7, 10)
    host = make_host(dev, latent_hw=latent)
    cure = session(host, 1.5, 1.0, "all")
    masks = [block_mask(latent, slice(0, 4), slice(0, 6)), block_mask(latent, slice(4, 6), slice(2, 10))]
    grid_masks = [torch.nn.functional.pad(m, (0, 0, 0, 1)) for m in masks]  # the reference's 8x10 view
    result = cured(cure, masks)
    expected = reference_generation(host, cure.layers, grid_masks, 1.5, 1.0)
    assert_same(result, expected)
    assert cure.bank.misses == 0


def test_blend_of_velocities_reduces_to_plain_for_any_mask(dev):
    host = make_host(dev, "heun")
    plain = host.sample(branch(1.0), PlainHooks())
    cure = session(host, 0.9, 1.0, method="blend")
    assert_same(cured(cure, masks_per_image()), plain)


def test_attention_masks_from_text_to_image_attention(dev):
    """The attribute words' columns are found and mapped at latent resolution: a normalised map per image."""
    host = make_host(dev)
    options = Options(enabled=True, attributes=("hair",), mask_source="attention", apg="off")
    result = run_freecure(host, options, prompts=PROMPTS, negative_prompts=NEGATIVES, cfg_scale=1.0)
    hair = result.maps["hair"]
    assert hair.shape == (2, *LATENT)
    assert bool((hair > 0).all()) and bool((hair <= 1).all())
    assert result.bank_misses == 0 and result.bank_bytes > 0


def test_flow_schedule():
    sigmas = flow_sigmas(4, shift=3.0)
    assert sigmas[0] == 1 and sigmas[-1] == 0 and bool((sigmas[1:] < sigmas[:-1]).all())
    with pytest.raises(ValueError, match="karras"):
        DiffusersFluxHost(tiny_flux_transformer(0), steps=2, karras=True)
