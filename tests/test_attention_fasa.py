"""FASA at the layer level, through the ldm/sgm CrossAttention stand-ins and ``intercept_modules``:
equality with float64 references, the identity-alignment property, exact pass-through."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freecure.attention import (
    AttentionEngine,
    FasaSettings,
    KVBank,
    RowRole,
    RowTracker,
    intercept_modules,
)

_STUB = str(Path(__file__).parent / "webui_stub")
sys.path.insert(0, _STUB)
try:
    from ldm.modules.attention import CrossAttention as LdmCrossAttention
    from sgm.modules.attention import CrossAttention as SgmCrossAttention
finally:
    sys.path.remove(_STUB)

LAYER = ("output", 9, 0)
GRID = (8, 6)
N = GRID[0] * GRID[1]
DIM, HEADS, HEAD_DIM, CONTEXT_DIM = 32, 4, 8, 24
# A1111 row layout for 2 images: cond rows first, then uncond.
ROLES = (RowRole(True, 0), RowRole(True, 1), RowRole(False, 0), RowRole(False, 1))


def make_layer(cls=LdmCrossAttention, seed=0):
    torch.manual_seed(seed)
    attn1 = cls(DIM, None, heads=HEADS, dim_head=HEAD_DIM).eval()
    attn2 = cls(DIM, CONTEXT_DIM, heads=HEADS, dim_head=HEAD_DIM).eval()
    return attn1, attn2


def token_mask(mask: torch.Tensor) -> torch.Tensor:
    """Independent area rule for a mask at twice the grid resolution: >= half of each 2x2 cell."""
    h, w = GRID
    return mask.float().view(h, 2, w, 2).mean(dim=(1, 3)).flatten() >= 0.5


def heads_of(t: torch.Tensor) -> torch.Tensor:
    return t.view(t.shape[0], HEADS, HEAD_DIM).transpose(0, 1)


@torch.no_grad()
def reference_attention(attn, x_row, source_row, extra_kv=None, extra_bias=None, own_bias=None):
    """float64 softmax attention of one row with optional extra keys/values and additive logit biases."""
    wq, wk, wv = (m.weight.double() for m in (attn.to_q, attn.to_k, attn.to_v))
    source = source_row.double()
    q, k, v = heads_of(x_row.double() @ wq.T), heads_of(source @ wk.T), heads_of(source @ wv.T)
    logits = q @ k.transpose(1, 2) * attn.scale
    if own_bias is not None:
        logits = logits + own_bias
    if extra_kv is not None:
        k_f, v_f = (heads_of(t.double()) for t in extra_kv)
        logits = torch.cat([logits, q @ k_f.transpose(1, 2) * attn.scale + extra_bias], dim=-1)
        v = torch.cat([v, v_f], dim=1)
    out = (torch.softmax(logits, dim=-1) @ v).transpose(0, 1).reshape(x_row.shape[0], -1)
    return out @ attn.to_out[0].weight.double().T + attn.to_out[0].bias.double()


def run_cure(attn1, attn2, x_found, x, masks, weight, context=None, bank_dtype=torch.float32, roles=ROLES,
             attribute_weights=()):
    """Foundation pass on ``x_found`` (banks K/V), then the cure pass on ``x``; returns (output, bank)."""
    engine = AttentionEngine()
    bank = KVBank(dtype=bank_dtype)
    with intercept_modules(engine, {LAYER: (attn1, attn2)}, RowTracker(engine)), torch.no_grad():
        with engine.recording(bank, {LAYER}, None):
            engine.begin_call(roles, GRID, 0.0)
            attn1(x_found)
        settings = FasaSettings(frozenset({LAYER}), weight, masks=masks, attribute_weights=attribute_weights)
        with engine.curing(settings, bank):
            engine.begin_call(roles, GRID, 0.0)
            out = attn1(x) if context is None else attn1(x, context=context)
    return out, bank


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm())


def random_mask(generator, density):
    return torch.rand(GRID[0] * 2, GRID[1] * 2, generator=generator) < density


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    weight=st.floats(0.05, 6.0),
    density=st.floats(0.1, 0.9),
    use_sgm=st.booleans(),
)
def test_fasa_equals_float64_reference_of_the_minus_inf_formulation(seed, weight, density, use_sgm):
    attn1, attn2 = make_layer(SgmCrossAttention if use_sgm else LdmCrossAttention, seed)
    generator = torch.Generator().manual_seed(seed)
    x_found, x = torch.randn(2, 4, N, DIM, generator=generator)
    masks = [random_mask(generator, density), random_mask(generator, density)]
    out, _ = run_cure(attn1, attn2, x_found, x, masks, weight)
    wk, wv = attn1.to_k.weight.double(), attn1.to_v.weight.double()
    for row in (0, 1):  # conditional rows of images 0 and 1
        inside = token_mask(masks[row])
        # Every foundation token is present; out-of-mask ones get a logit of -inf, in-mask ones +w.
        bias = torch.where(inside, torch.tensor(weight, dtype=torch.float64), torch.tensor(-math.inf))
        found = (x_found[row].double() @ wk.T, x_found[row].double() @ wv.T)
        ref = reference_attention(attn1, x[row], x[row], found, bias)
        assert relative_error(out[row], ref) < 1e-5


def test_identity_alignment_equals_bias_log1p_exp_on_own_in_mask_keys():
    """Foundation K/V == own K/V: duplicated keys merge, so FASA == plain attention with an additive
    bias log(1 + e^w) on the in-mask own keys."""
    attn1, attn2 = make_layer()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, N, DIM, generator=generator)
    masks = [random_mask(generator, 0.5), random_mask(generator, 0.3)]
    for weight in (0.5, 1.5, 4.0):
        out, _ = run_cure(attn1, attn2, x, x, masks, weight)
        for row in (0, 1):
            own_bias = torch.where(token_mask(masks[row]), math.log1p(math.exp(weight)), 0.0).double()
            ref = reference_attention(attn1, x[row], x[row], own_bias=own_bias)
            assert relative_error(out[row], ref) < 1e-5


@pytest.mark.parametrize("weight", [0.3, 1.5, 8.0])
def test_identity_alignment_with_a_full_mask_is_plain_attention_for_any_weight(weight):
    attn1, attn2 = make_layer()
    x = torch.randn(4, N, DIM, generator=torch.Generator().manual_seed(2))
    full = torch.ones(3, 5, dtype=torch.bool)  # any resolution: every token is inside
    out, _ = run_cure(attn1, attn2, x, x, [full, full], weight)
    for row in range(4):
        assert relative_error(out[row], reference_attention(attn1, x[row], x[row])) < 1e-5


def test_unconditional_rows_take_the_original_forward_on_their_own_rows():
    attn1, attn2 = make_layer()
    generator = torch.Generator().manual_seed(3)
    x_found, x = torch.randn(2, 4, N, DIM, generator=generator)
    masks = [random_mask(generator, 0.5), random_mask(generator, 0.5)]
    out, _ = run_cure(attn1, attn2, x_found, x, masks, 1.5)
    with torch.no_grad():
        assert torch.equal(out[2:], LdmCrossAttention.forward(attn1, x[2:]))
        assert not torch.allclose(out[:2], LdmCrossAttention.forward(attn1, x[:2]))


@pytest.mark.parametrize("weight, empty", [(0.0, False), (-1.0, False), (2.0, True)])
def test_no_effect_settings_are_bit_identical(weight, empty):
    attn1, attn2 = make_layer()
    generator = torch.Generator().manual_seed(4)
    x_found, x = torch.randn(2, 4, N, DIM, generator=generator)
    mask = torch.zeros(16, 12, dtype=torch.bool) if empty else torch.ones(16, 12, dtype=torch.bool)
    out, _ = run_cure(attn1, attn2, x_found, x, [mask, mask], weight)
    with torch.no_grad():
        assert torch.equal(out, LdmCrossAttention.forward(attn1, x))


def test_one_image_with_an_empty_mask_keeps_plain_attention_for_that_image():
    attn1, attn2 = make_layer()
    generator = torch.Generator().manual_seed(5)
    x_found, x = torch.randn(2, 4, N, DIM, generator=generator)
    masks = [torch.zeros(16, 12), torch.ones(16, 12)]  # float {0, 1} masks
    out, _ = run_cure(attn1, attn2, x_found, x, masks, 1.0)
    with torch.no_grad():
        plain = LdmCrossAttention.forward(attn1, x)
    assert torch.equal(out[0], plain[0]) and torch.equal(out[2:], plain[2:])
    assert not torch.allclose(out[1], plain[1])


def test_bank_miss_is_counted_and_that_row_falls_back_to_plain_attention():
    attn1, attn2 = make_layer()
    generator = torch.Generator().manual_seed(6)
    x_found, x = torch.randn(2, 2, N, DIM, generator=generator)
    roles_found = (RowRole(True, 0), RowRole(False, 0))
    engine, bank = AttentionEngine(), KVBank(dtype=torch.float32)
    full = torch.ones(4, 4)
    with intercept_modules(engine, {LAYER: (attn1, attn2)}, RowTracker(engine)), torch.no_grad():
        with engine.recording(bank, {LAYER}, None):
            engine.begin_call(roles_found, GRID, 0.0)
            attn1(x_found)
        with engine.curing(FasaSettings(frozenset({LAYER}), 1.0, masks=[full, full]), bank):
            engine.begin_call(ROLES, GRID, 0.0)  # image 1 was never banked; call 1 below neither
            out = attn1(torch.cat([x, x]))
            engine.begin_call(ROLES, GRID, 0.1)
            out_second_call = attn1(torch.cat([x, x]))
    assert bank.misses == 1 + 2
    plain = LdmCrossAttention.forward(attn1, torch.cat([x, x]))
    assert not torch.allclose(out[0], plain[0])
    assert torch.equal(out[1:], plain[1:])
    assert torch.equal(out_second_call, plain)


def test_context_on_attn1_gives_own_keys_from_the_context_and_foundation_from_the_bank():
    """ControlNet reference-only style: attn1(x, context=cat([x, reference])). Own K/V come from the
    context (as that extension intends); the foundation adds its in-mask spatial tokens."""
    attn1, attn2 = make_layer()
    generator = torch.Generator().manual_seed(7)
    x_found, x = torch.randn(2, 4, N, DIM, generator=generator)
    reference = torch.randn(4, 10, DIM, generator=generator)
    masks = [random_mask(generator, 0.5), random_mask(generator, 0.5)]
    weight = 1.2
    context = torch.cat([x, reference], dim=1)
    out, _ = run_cure(attn1, attn2, x_found, x, masks, weight, context=context)
    wk, wv = attn1.to_k.weight.double(), attn1.to_v.weight.double()
    for row in (0, 1):
        inside = token_mask(masks[row])
        found = ((x_found[row].double() @ wk.T)[inside], (x_found[row].double() @ wv.T)[inside])
        ref = reference_attention(attn1, x[row], context[row], found, torch.tensor(weight).double())
        assert relative_error(out[row], ref) < 1e-5
    with torch.no_grad():
        assert torch.equal(out[2:], LdmCrossAttention.forward(attn1, x[2:], context=context[2:]))


def test_fp16_bank_feeds_fasa_in_the_query_dtype():
    attn1, attn2 = make_layer()
    generator = torch.Generator().manual_seed(8)
    x_found, x = torch.randn(2, 4, N, DIM, generator=generator)
    masks = [random_mask(generator, 0.5), random_mask(generator, 0.5)]
    out, _ = run_cure(attn1, attn2, x_found, x, masks, 1.5, bank_dtype=torch.float16)
    assert out.dtype == torch.float32
    # The float16 bank rounds the foundation K/V: close to the exact float32 result, not equal.
    exact, _ = run_cure(attn1, attn2, x_found, x, masks, 1.5)
    assert relative_error(out[:2], exact[:2].double()) < 1e-2


def test_a_strength_per_attribute_biases_each_attributes_foundation_tokens_by_its_own_weight():
    """Hair tokens at w 2.5, glasses tokens at w 0.4; a token both touch takes the larger: float64 reference."""
    attn1, attn2 = make_layer(seed=3)
    generator = torch.Generator().manual_seed(3)
    x_found, x = torch.randn(2, 4, N, DIM, generator=generator)
    hair = torch.zeros(GRID[0] * 2, GRID[1] * 2, dtype=torch.bool)
    hair[:6] = True  # token rows 0-2
    glasses = torch.zeros_like(hair)
    glasses[5:9, 2:10] = True  # token rows 2-4 (row 2 shared with hair: half of its area is hair's)
    union = hair | glasses
    pairs = [(2.5, hair), (0.4, glasses)]
    out, _ = run_cure(attn1, attn2, x_found, x, [union, union], 1.0, attribute_weights=[pairs, pairs])
    wk, wv = attn1.to_k.weight.double(), attn1.to_v.weight.double()
    touched_hair = hair.float().view(GRID[0], 2, GRID[1], 2).amax(dim=(1, 3)).flatten() > 0
    touched_glasses = glasses.float().view(GRID[0], 2, GRID[1], 2).amax(dim=(1, 3)).flatten() > 0
    per_token = torch.where(touched_hair, 2.5, torch.where(touched_glasses, 0.4, 0.0)).double()
    bias = torch.where(token_mask(union), per_token, torch.tensor(-math.inf, dtype=torch.float64))
    for row in (0, 1):
        found = (x_found[row].double() @ wk.T, x_found[row].double() @ wv.T)
        ref = reference_attention(attn1, x[row], x[row], found, bias)
        assert relative_error(out[row], ref) < 1e-5
    # Not the single-weight result: the weights act.
    single, _ = run_cure(attn1, attn2, x_found, x, [union, union], 1.0)
    assert not torch.allclose(single[:2], out[:2], atol=1e-4)


def test_equal_attribute_weights_are_the_single_weight_bit_for_bit():
    attn1, attn2 = make_layer(seed=4)
    generator = torch.Generator().manual_seed(4)
    x_found, x = torch.randn(2, 4, N, DIM, generator=generator)
    a, b = random_mask(generator, 0.3), random_mask(generator, 0.3)
    masks = [a | b, a]
    out, _ = run_cure(attn1, attn2, x_found, x, masks, 1.25, attribute_weights=[[(1.25, a), (1.25, b)], [(1.25, a)]])
    single, _ = run_cure(attn1, attn2, x_found, x, masks, 1.25)
    assert torch.equal(out, single)


def test_attribute_weights_must_match_the_masks():
    mask = torch.ones(4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="attribute_weights: 1 image"):
        FasaSettings(frozenset({LAYER}), 1.0, masks=[mask, mask], attribute_weights=[[(1.0, mask)]])
