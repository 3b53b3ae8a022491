"""``intercept_modules`` on a small ldm/sgm-layout network built from the CrossAttention stand-ins:
exact pass-through, chaining to planted instance forwards, exact restore, chunked row roles."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freecure.attention import (
    AttentionEngine,
    CrossAttentionRecorder,
    FasaSettings,
    KVBank,
    RowRole,
    RowTracker,
    forward_beneath,
    intercept_modules,
    layer_key_from_ldm_name,
)

_STUB = str(Path(__file__).parent / "webui_stub")
sys.path.insert(0, _STUB)
try:
    from ldm.modules.attention import CrossAttention as LdmCrossAttention
    from sgm.modules.attention import CrossAttention as SgmCrossAttention
finally:
    sys.path.remove(_STUB)

DIM, CONTEXT_DIM = 16, 12
LATENT = (8, 6)
ROLES = (RowRole(True, 0), RowRole(True, 1), RowRole(False, 0), RowRole(False, 1))


class Block(nn.Module):
    """Calls attn1/attn2 the way ldm's and sgm's BasicTransformerBlock._forward do."""

    def __init__(self, cls):
        super().__init__()
        self.attn1 = cls(DIM, None, heads=2, dim_head=8)
        self.attn2 = cls(DIM, CONTEXT_DIM, heads=2, dim_head=8)
        self.is_sgm = cls is SgmCrossAttention

    def forward(self, x, context):
        if self.is_sgm:
            x = self.attn1(x, context=None, additional_tokens=None, n_times_crossframe_attn_in_self=0) + x
            return self.attn2(x, context=context, additional_tokens=None) + x
        x = self.attn1(x, context=None) + x
        return self.attn2(x, context=context) + x


class Spatial(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.transformer_blocks = nn.ModuleList([Block(cls)])

    def forward(self, x, context):
        for block in self.transformer_blocks:
            x = block(x, context)
        return x


class TinyLdm(nn.Module):
    """input_blocks.1 at the latent grid, middle_block at half size, output_blocks.0 back up."""

    def __init__(self, cls):
        super().__init__()
        self.input_blocks = nn.ModuleList([nn.Identity(), nn.ModuleList([nn.Identity(), Spatial(cls)])])
        self.middle_block = nn.ModuleList([nn.Identity(), Spatial(cls)])
        self.output_blocks = nn.ModuleList([nn.ModuleList([nn.Identity(), Spatial(cls)])])

    def forward(self, x, context):
        high = self.input_blocks[1][1](x, context)
        grid = high.transpose(1, 2).reshape(len(x), DIM, *LATENT)
        low = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)
        low = self.middle_block[1](low, context)
        up = F.interpolate(low.transpose(1, 2).reshape(len(x), DIM, 4, 3), size=LATENT).flatten(2).transpose(1, 2)
        return self.output_blocks[0][1](up + high, context)


class Wrapper(nn.Module):
    def __init__(self, cls):
        super().__init__()
        torch.manual_seed(0)
        self.diffusion_model = TinyLdm(cls).eval()

    def forward(self, x, context):
        with torch.no_grad():
            return self.diffusion_model(x, context)


def layer_modules(root):
    pairs = {}
    for name, module in root.named_modules():
        found = layer_key_from_ldm_name(name)
        if found is not None:
            key, is_self = found
            pairs.setdefault(key, [None, None])[0 if is_self else 1] = module
    return {key: tuple(pair) for key, pair in pairs.items()}


def inputs(seed, batch=4):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 48, DIM, generator=generator), torch.randn(batch, 5, CONTEXT_DIM, generator=generator)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a CPU shared with parallel jobs run far faster on one thread than on contended ones."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=[LdmCrossAttention, SgmCrossAttention], ids=["ldm", "sgm"])
def model(request):
    return Wrapper(request.param)


def test_keys_from_the_prefixed_names(model):
    assert set(layer_modules(model)) == {("input", 1, 0), ("middle", 0, 0), ("output", 0, 0)}


def two_passes(model, layers, settings_for, found_inputs, cure_inputs, roles=ROLES, recorder=None):
    engine, bank = AttentionEngine(), KVBank(dtype=torch.float32)  # exact foundation K/V
    with intercept_modules(engine, layer_modules(model), RowTracker(engine)):
        with engine.recording(bank, layers, recorder):
            engine.begin_call(roles, LATENT, 0.0)
            found = model(*found_inputs)
        with engine.curing(settings_for(layers), bank):
            engine.begin_call(roles, LATENT, 0.0)
            cured = model(*cure_inputs)
    return found, cured, bank


@pytest.mark.parametrize("weight, mask_value", [(2.0, 0.0), (0.0, 1.0)])
def test_recording_and_no_effect_curing_are_bit_identical(model, weight, mask_value):
    layers = frozenset(layer_modules(model))
    recorder = CrossAttentionRecorder({"w": [0, 1]})
    masks = [torch.full((8, 6), mask_value)] * 2
    found, cured, bank = two_passes(
        model, layers, lambda ls: FasaSettings(ls, weight, masks=masks), inputs(1), inputs(2), recorder=recorder
    )
    assert torch.equal(found, model(*inputs(1)))
    assert torch.equal(cured, model(*inputs(2)))
    assert recorder.observations == 2 * 3 and len(bank) == 2 * 3


def test_identity_alignment_through_module_wrappers(model):
    layers = frozenset(layer_modules(model))
    full = [torch.ones(2, 2)] * 2
    _, cured, _ = two_passes(model, layers, lambda ls: FasaSettings(ls, 3.0, masks=full), inputs(3), inputs(3))
    plain = model(*inputs(3))
    torch.testing.assert_close(cured, plain, rtol=1e-5, atol=1e-6)
    assert not torch.equal(cured[:2], plain[:2]) and torch.equal(cured[2:], plain[2:])


def test_roles_come_from_the_caller_not_the_batch_order(model):
    """Forge-style [uncond, cond] order: the same rows get the same result, permuted."""
    layers = frozenset(layer_modules(model))
    half = torch.zeros(8, 6)
    half[:4] = 1
    settings = lambda ls: FasaSettings(ls, 1.5, masks=[half, torch.ones(8, 6)])  # noqa: E731
    _, a1111, _ = two_passes(model, layers, settings, inputs(4), inputs(5))
    order = [2, 3, 0, 1]
    forge_roles = tuple(ROLES[i] for i in order)
    permuted = tuple(t[order] for t in inputs(4)), tuple(t[order] for t in inputs(5))
    _, forge, _ = two_passes(model, layers, settings, *permuted, roles=forge_roles)
    torch.testing.assert_close(forge, a1111[order], rtol=1e-5, atol=1e-6)


def test_chunked_calls_for_two_images(model):
    """cond rows and uncond rows in separate model calls within one denoiser call."""
    modules = layer_modules(model)
    layers = frozenset(modules)
    settings = FasaSettings(layers, 1.5, masks=[torch.ones(4, 3), torch.ones(4, 3)])
    x_found, c_found = inputs(6)
    x, c = inputs(7)
    engine, bank = AttentionEngine(), KVBank(dtype=torch.float32)
    tracker = RowTracker(engine)
    seen_roles = []
    take = tracker.take
    tracker.take = lambda key, batch: seen_roles.append(take(key, batch)) or seen_roles[-1]
    with intercept_modules(engine, modules, tracker):
        with engine.recording(bank, layers, None):
            engine.begin_call(ROLES, LATENT, 0.0)
            model(x_found[:2], c_found[:2])
            model(x_found[2:], c_found[2:])
        with engine.curing(settings, bank):
            engine.begin_call(ROLES, LATENT, 0.0)
            chunked = torch.cat([model(x[:2], c[:2]), model(x[2:], c[2:])])
    assert seen_roles[:3] == [ROLES[:2]] * 3 and seen_roles[3:6] == [ROLES[2:]] * 3
    assert bank.misses == 0 and len(bank) == 2 * 3
    _, batched, _ = two_passes(model, layers, lambda ls: settings, (x_found, c_found), (x, c))
    torch.testing.assert_close(chunked, batched, rtol=1e-5, atol=1e-6)


def test_planted_instance_forward_on_attn2_is_chained_and_restored(model):
    """ControlNet IP-Adapter style: an instance forward (x, context=None, **kwargs) on attn2."""
    modules = layer_modules(model)
    attn2 = modules[("output", 0, 0)][1]
    calls = []
    cls = type(attn2)

    def planted(x, context=None, **kwargs):
        calls.append(x.shape[0])
        return cls.forward(attn2, x, context=context) * 0.5

    attn2.forward = planted
    expected = model(*inputs(8))
    assert calls == [4]
    engine = AttentionEngine()
    layers = frozenset(modules)
    with intercept_modules(engine, modules, RowTracker(engine)):
        assert attn2.__dict__["forward"] is not planted
        with engine.recording(KVBank(), layers, CrossAttentionRecorder({"w": [0]})):
            engine.begin_call(ROLES, LATENT, 0.0)
            assert torch.equal(model(*inputs(8)), expected)
    assert calls == [4, 4]
    assert attn2.__dict__["forward"] is planted
    assert all("forward" not in m.__dict__ for pair in modules.values() for m in pair if m is not attn2)


def test_forward_beneath_replaces_the_chained_forward_and_keeps_ours(model):
    """The planted forward is out for the block, ours stays on top and records; both are back after."""
    modules = layer_modules(model)
    attn2 = modules[("output", 0, 0)][1]
    expected = model(*inputs(8))
    attn2.forward = planted = lambda x, context=None, **kwargs: torch.zeros_like(x)

    def class_forward(x, context=None, **kwargs):
        return type(attn2).forward(attn2, x, context=context, **kwargs)

    engine = AttentionEngine()
    bank = KVBank()
    with intercept_modules(engine, modules, RowTracker(engine)):
        ours = attn2.__dict__["forward"]
        with forward_beneath(attn2, class_forward):
            assert attn2.__dict__["forward"] is ours
            with engine.recording(bank, frozenset(modules), None):
                engine.begin_call(ROLES, LATENT, 0.0)
                assert torch.equal(model(*inputs(8)), expected), "the class forward ran beneath ours"
        assert attn2.__dict__["forward"] is ours
    assert attn2.__dict__["forward"] is planted
    assert len(bank) == 2 * len(modules), "ours banked each layer for both conditional rows meanwhile"
    with forward_beneath(attn2, class_forward):
        assert torch.equal(model(*inputs(8)), expected), "without ours, it is the instance forward"
    assert attn2.__dict__["forward"] is planted


def test_our_failure_is_recorded_and_the_call_takes_the_original_path(model):
    modules = layer_modules(model)
    expected = model(*inputs(9))
    engine = AttentionEngine()
    with intercept_modules(engine, modules, RowTracker(engine)), engine.recording(KVBank(), set(modules), None):
        engine.begin_call(ROLES[:1], LATENT, 0.0)  # 1 row announced, 4 arrive
        out = model(*inputs(9))
        assert isinstance(engine.failure, RuntimeError) and "rows arrived" in str(engine.failure)
        assert not engine.wants(("middle", 0, 0), True), "inert for the rest of the pass"
    assert torch.equal(out, expected), "the host's sampling went on, bit for bit"


def test_every_module_is_restored_after_an_exception_in_a_hooked_forward(model):
    modules = layer_modules(model)

    def broken(x, context=None, **kwargs):
        raise RuntimeError("the host's own forward failed")

    planted = modules[("middle", 0, 0)][1].forward = broken
    before = {id(m): m.__dict__.get("forward") for pair in modules.values() for m in pair}
    engine = AttentionEngine()
    hooks = intercept_modules(engine, modules, RowTracker(engine))
    with pytest.raises(RuntimeError, match="own forward failed"), hooks, \
            engine.recording(KVBank(), set(modules), None):
        engine.begin_call(ROLES, LATENT, 0.0)
        model(*inputs(9))
    assert {id(m): m.__dict__.get("forward") for pair in modules.values() for m in pair} == before
    assert modules[("middle", 0, 0)][1].__dict__["forward"] is planted
    assert engine.mode is None


def test_class_forward_is_looked_up_at_call_time(model, monkeypatch):
    """A1111 swaps CrossAttention.forward on the class when the optimizer changes."""
    modules = layer_modules(model)
    cls = type(modules[("input", 1, 0)][0])
    original = cls.forward
    calls = []

    def optimized(self, x, *args, **kwargs):
        calls.append(x.shape)
        return original(self, x, *args, **kwargs)

    engine = AttentionEngine()
    with intercept_modules(engine, modules, RowTracker(engine)):
        monkeypatch.setattr(cls, "forward", optimized)
        model(*inputs(10))
    assert len(calls) == 6


def test_sgm_extra_arguments_go_to_the_original_forward():
    model = Wrapper(SgmCrossAttention)
    modules = layer_modules(model)
    attn1 = modules[("input", 1, 0)][0]
    layers = frozenset(modules)
    x, _ = inputs(11)
    extra = torch.randn(4, 3, DIM, generator=torch.Generator().manual_seed(12))
    engine, bank = AttentionEngine(), KVBank()
    with intercept_modules(engine, modules, RowTracker(engine)), torch.no_grad():
        with engine.recording(bank, layers, None):
            engine.begin_call(ROLES, LATENT, 0.0)
            attn1(x)
        with engine.curing(FasaSettings(layers, 2.0, masks=[torch.ones(2, 2)] * 2), bank):
            engine.begin_call(ROLES, LATENT, 0.0)
            with_tokens = attn1(x, additional_tokens=extra)
            crossframe = attn1(x, None, None, None, 2)
    with torch.no_grad():
        assert torch.equal(with_tokens, SgmCrossAttention.forward(attn1, x, additional_tokens=extra))
        assert torch.equal(crossframe, SgmCrossAttention.forward(attn1, x, n_times_crossframe_attn_in_self=2))


def test_invalid_module_mapping_is_refused_and_nothing_is_left_installed(model):
    modules = layer_modules(model)
    engine = AttentionEngine()
    broken = {**modules, ("output", 1, 0): (nn.Linear(2, 2), nn.Linear(2, 2))}
    with pytest.raises(ValueError, match=r"modules\[\('output', 1, 0\)\] attn1"), intercept_modules(
        engine, broken, RowTracker(engine)
    ):
        pass
    assert all("forward" not in m.__dict__ for pair in modules.values() for m in pair)
