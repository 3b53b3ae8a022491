"""KVBank, RowTracker, the engine's modes and routing decisions, and input validation."""

from __future__ import annotations

import math

import pytest
import torch

from freecure.attention import (
    AttentionEngine,
    CrossAttentionRecorder,
    FasaSettings,
    KVBank,
    RowRole,
    RowTracker,
    in_progress_range,
)

LAYER = ("output", 9, 0)
OTHER = ("input", 1, 0)
ROLES = (RowRole(True, 0), RowRole(False, 0))


def test_bank_stores_float16_reports_nbytes_and_returns_the_requested_dtype():
    bank = KVBank()
    k, v = torch.randn(2, 10, 8, dtype=torch.float32)
    bank.put(LAYER, 0, 0, k, v)
    bank.put(LAYER, 1, 0, k, v)
    assert bank.nbytes == 2 * 2 * 10 * 8 * 2
    got_k, got_v = bank.get(LAYER, 0, 0, "cpu", torch.float32)
    assert got_k.dtype == torch.float32
    assert torch.equal(got_k, k.half().float()) and torch.equal(got_v, v.half().float())
    k.add_(1)  # the bank holds its own copy
    assert torch.equal(bank.get(LAYER, 0, 0, "cpu", torch.float32)[0], got_k)


def test_bank_counts_misses_and_clear_resets():
    bank = KVBank(dtype=torch.float32)
    bank.put(LAYER, 0, 0, torch.ones(4, 2), torch.ones(4, 2))
    assert bank.get(LAYER, 0, 1, "cpu", torch.float32) is None
    assert bank.get(LAYER, 1, 0, "cpu", torch.float32) is None
    assert bank.get(OTHER, 0, 0, "cpu", torch.float32) is None
    assert bank.misses == 3 and len(bank) == 1
    bank.clear()
    assert bank.misses == 0 and len(bank) == 0 and bank.nbytes == 0


def test_offloaded_bank_keeps_tensors_on_the_cpu():
    bank = KVBank(offload=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    k = torch.randn(6, 4, device=device)
    bank.put(LAYER, 0, 0, k, k)
    stored = bank._entries[(LAYER, 0, 0)]
    assert all(t.device.type == "cpu" and t.dtype == torch.float16 for t in stored)
    if torch.cuda.is_available():
        assert all(t.is_pinned() for t in stored)
    back, _ = bank.get(LAYER, 0, 0, device, torch.float32)
    assert back.device.type == device and torch.equal(back, k.half().float())


def test_bank_keeps_on_the_device_only_what_its_budget_allows():
    entry = 2 * 6 * 4 * 2  # K and V of (6, 4) in fp16
    bank = KVBank(device_budget=2 * entry + 10)
    k = torch.randn(6, 4)
    for call in range(4):
        bank.put(LAYER, call, 0, k + call, k - call)
    assert bank.device_bytes == 2 * entry, "two entries fit, the other two went to CPU memory"
    assert bank.nbytes == 4 * entry
    for call in range(4):
        got_k, got_v = bank.get(LAYER, call, 0, "cpu", torch.float32)
        assert torch.equal(got_k, (k + call).half().float()) and torch.equal(got_v, (k - call).half().float())
    bank.clear()
    assert bank.device_bytes == 0
    assert KVBank(device_budget=0).device_budget == 0
    with pytest.raises(ValueError, match="device_budget"):
        KVBank(device_budget=-1)


def test_the_bank_budget_is_a_share_of_the_model_on_cuda_only():
    from freecure.pipeline.session import bank_device_budget

    assert bank_device_budget(torch.device("cpu")) is None


def test_bank_refuses_bad_shapes_and_dtypes():
    with pytest.raises(ValueError, match="dtype"):
        KVBank(dtype=torch.int8)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        KVBank().put(LAYER, 0, 0, torch.ones(1, 4, 2), torch.ones(1, 4, 2))


def test_row_tracker_hands_out_rows_in_order_per_module_and_resets_on_begin_call():
    engine = AttentionEngine()
    tracker = RowTracker(engine)
    roles = (RowRole(True, 0), RowRole(True, 1), RowRole(False, 0), RowRole(False, 1))
    engine.begin_call(roles, (8, 8), 0.0)
    assert tracker.take("a", 2) == roles[:2]
    assert tracker.take("b", 4) == roles
    assert tracker.take("a", 2) == roles[2:]
    with pytest.raises(RuntimeError, match="begin_call announced 4"):
        tracker.take("a", 1)
    engine.begin_call(roles[:2], (8, 8), 0.1)  # e.g. an NGMS call with cond rows only
    assert tracker.take("a", 1) == roles[:1] and tracker.take("a", 1) == roles[1:2]


def test_engine_is_inert_outside_modes_and_after_them():
    engine = AttentionEngine()
    engine.begin_call(ROLES, (8, 8), 0.0)
    assert not engine.wants(LAYER, True) and not engine.wants(LAYER, False)
    bank = KVBank()
    with engine.recording(bank, {LAYER}, CrossAttentionRecorder({"a": [0]})):
        assert engine.call_index == -1 and not engine.wants(LAYER, True)  # nothing before begin_call
        engine.begin_call(ROLES, (8, 8), 0.0)
        assert engine.call_index == 0
        assert engine.wants(LAYER, True) and not engine.wants(OTHER, True)
        assert engine.wants(LAYER, False) and engine.wants(OTHER, False)  # recorder on every layer
    assert engine.mode is None and not engine.wants(LAYER, True) and not engine.wants(OTHER, False)


def test_modes_do_not_nest_and_reset_the_call_counter():
    engine = AttentionEngine()
    settings = FasaSettings(frozenset({LAYER}), 1.0, masks=[torch.ones(2, 2)])
    with engine.recording(None, (), None):
        engine.begin_call(ROLES, (8, 8), 0.0)
        engine.begin_call(ROLES, (8, 8), 0.5)
        assert engine.call_index == 1
        with pytest.raises(RuntimeError, match="already recording"), engine.curing(settings, KVBank()):
            pass
    with engine.curing(settings, KVBank()):
        assert engine.call_index == -1
        engine.begin_call(ROLES, (8, 8), 0.0)
        assert engine.call_index == 0 and engine.wants(LAYER, True) and not engine.wants(LAYER, False)


@pytest.mark.parametrize(
    "weight, masks, progress_range, progress, roles, expected",
    [
        (1.0, [torch.ones(2, 2)], (0.0, 1.0), 0.0, ROLES, True),
        (0.0, [torch.ones(2, 2)], (0.0, 1.0), 0.0, ROLES, False),
        (-1.0, [torch.ones(2, 2)], (0.0, 1.0), 0.0, ROLES, False),
        (1.0, [torch.zeros(2, 2)], (0.0, 1.0), 0.0, ROLES, False),
        (1.0, [], (0.0, 1.0), 0.0, ROLES, False),
        (1.0, [torch.ones(2, 2)], (0.2, 0.6), 0.1, ROLES, False),
        (1.0, [torch.ones(2, 2)], (0.2, 0.6), 0.6, ROLES, False),
        (1.0, [torch.ones(2, 2)], (0.2, 0.6), 0.2, ROLES, True),
        (1.0, [torch.ones(2, 2)], (0.0, 1.0), 0.0, (RowRole(False, 0),), False),
    ],
)
def test_curing_wants_only_calls_where_fasa_can_change_something(
    weight, masks, progress_range, progress, roles, expected
):
    engine = AttentionEngine()
    with engine.curing(FasaSettings(frozenset({LAYER}), weight, progress_range, masks), KVBank()):
        engine.begin_call(roles, (8, 8), progress)
        assert engine.wants(LAYER, True) is expected
        assert not engine.wants(OTHER, True)


def test_recorder_layers_and_window_limit_what_is_wanted():
    engine = AttentionEngine()
    recorder = CrossAttentionRecorder({"a": [0]}, layers={OTHER}, progress_range=(0.0, 0.5))
    with engine.recording(None, (), recorder):
        engine.begin_call(ROLES, (8, 8), 0.25)
        assert engine.wants(OTHER, False) and not engine.wants(LAYER, False) and not engine.wants(OTHER, True)
        engine.begin_call(ROLES, (8, 8), 0.5)
        assert not engine.wants(OTHER, False)


def test_progress_window_is_half_open_except_at_the_end():
    assert in_progress_range(0.0, (0.0, 0.5)) and not in_progress_range(0.5, (0.0, 0.5))
    assert in_progress_range(1.0, (0.5, 1.0)) and in_progress_range(0.95, (0.0, 1.0))


def test_observe_self_banks_the_first_cond_row_of_each_image_only():
    engine, bank = AttentionEngine(), KVBank(dtype=torch.float32)
    k = torch.arange(4.0).view(4, 1, 1).expand(4, 3, 2)
    roles = (RowRole(True, 0), RowRole(True, 0), RowRole(True, 1), RowRole(False, 1))  # AND prompt: 2 cond rows
    with engine.recording(bank, {LAYER}, None):
        engine.begin_call(roles, (8, 8), 0.0)
        engine.observe_self(LAYER, k, k, roles)
    assert len(bank) == 2
    assert bank.get(LAYER, 0, 0, "cpu", torch.float32)[0][0, 0] == 0
    assert bank.get(LAYER, 0, 1, "cpu", torch.float32)[0][0, 0] == 2


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"weight": math.nan}, "weight"),
        ({"weight": "1"}, "weight"),
        ({"progress_range": (0.5, 0.2)}, "progress_range"),
        ({"progress_range": (0.0, 1.5)}, "progress_range"),
        ({"masks": [torch.ones(1, 2, 2)]}, r"masks\[0\]"),
        ({"masks": [torch.full((2, 2), 0.5)]}, r"masks\[0\]"),
        ({"layers": frozenset({("decoder", 1, 0)})}, "layers"),
    ],
)
def test_fasa_settings_errors_name_the_field(kwargs, field):
    base = {"layers": frozenset({LAYER}), "weight": 1.0}
    with pytest.raises(ValueError, match=field):
        FasaSettings(**{**base, **kwargs})


@pytest.mark.parametrize(
    "roles, latent, progress, field",
    [
        ((), (8, 8), 0.0, "roles"),
        (("cond",), (8, 8), 0.0, "roles"),
        (ROLES, (8,), 0.0, "latent_hw"),
        (ROLES, (8, 0), 0.0, "latent_hw"),
        (ROLES, (8, 8), 1.5, "progress"),
    ],
)
def test_begin_call_errors_name_the_field(roles, latent, progress, field):
    with pytest.raises(ValueError, match=field):
        AttentionEngine().begin_call(roles, latent, progress)


def test_other_errors_name_the_field():
    with pytest.raises(ValueError, match="image"):
        RowRole(True, -1)
    with pytest.raises(ValueError, match="columns"):
        CrossAttentionRecorder({"a": []})
    with pytest.raises(ValueError, match="bank_layers"):
        AttentionEngine().recording(None, [("input", -1, 0)], None)
    with pytest.raises(TypeError, match="settings"):
        AttentionEngine().curing({"weight": 1.0}, KVBank())


def test_fasa_rows_refuses_an_image_without_a_mask():
    engine = AttentionEngine()
    with engine.curing(FasaSettings(frozenset({LAYER}), 1.0, masks=[torch.ones(2, 2)]), KVBank()):
        roles = (RowRole(True, 1),)
        engine.begin_call(roles, (2, 2), 0.0)
        q = torch.randn(1, 4, 4)
        with pytest.raises(ValueError, match="masks"):
            engine.fasa_rows(LAYER, q, q, q, 2, 0.5, roles, (2, 2))
