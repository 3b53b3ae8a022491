"""Smoke test of ``benchmarks/bench_cure.py``: its functions run end to end on a small UNet and give
the table it promises. No timing is asserted; what is asserted holds on any machine: the columns, one
row per cured method, the K/V bank size against the architecture, the device host generating exactly
what the reference host does, the memory meter seeing a known allocation, and a cure that did nothing
being refused rather than reported."""

from __future__ import annotations

import pytest
import torch

from benchmarks import bench_cure
from benchmarks.bench_cure import COLUMNS, PeakMemory, Row, build_unet, format_table, run_benchmark
from benchmarks.configs import PRESETS
from freecure.attention import diffusers_layer_keys, preset_layers

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared machine threads spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smoke_rows() -> list[Row]:
    log: list[str] = []
    rows = run_benchmark(PRESETS["smoke"], device=CPU, dtype=torch.float32, repeats=1, parser=False, log=log.append)
    assert any("round 1/1" in line for line in log)
    return rows


def test_table_has_the_promised_columns_and_one_row_per_cured_method(smoke_rows):
    (case,) = PRESETS["smoke"]
    assert [row.method for row in smoke_rows] == list(case.methods)
    lines = format_table(smoke_rows).splitlines()
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == list(COLUMNS)
    assert len(lines) == 2 + len(case.methods)
    for line, row in zip(lines[2:], smoke_rows, strict=True):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == len(COLUMNS)
        assert cells[:4] == [case.config, str(case.size), str(case.steps), row.method]
    for row in smoke_rows:
        assert row.time_ratio > 0 and row.plain_seconds > 0
        assert 0 <= row.mask_share < 1


def test_bank_column_is_the_default_layers_kv_of_every_call(smoke_rows):
    """FASA banks K and V (tokens x channels, float32) of the default layers, cond row, per call."""
    (case,) = PRESETS["smoke"]
    unet, family = build_unet(case.config, CPU, torch.float32)
    layers = preset_layers("default", [key for key, is_self in diffusers_layer_keys(unet).values() if is_self], family)
    latent = case.size // 8
    per_call = 0
    for name, (key, is_self) in diffusers_layer_keys(unet).items():
        if is_self and key in layers:
            attn = unet.get_submodule(name)
            level = name.split(".")[1]  # up_blocks.<level>: the token grid halves per level below the top
            side = latent // 2 ** (len(unet.up_blocks) - 1 - int(level))
            per_call += 2 * side * side * attn.to_k.out_features * 4
    by_method = {row.method: row.bank_bytes for row in smoke_rows}
    assert by_method["fasa"] == by_method["fasa+apg"] == case.steps * per_call
    assert by_method["blend"] == 0


def test_cpu_peak_memory_sees_a_freed_allocation():
    meter = PeakMemory(CPU)
    if not meter.available:
        pytest.skip("no /proc/self/clear_refs or glibc here")
    meter.start()
    before = meter.peak()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    del block
    meter.start()
    after_reset = meter.peak()
    block = torch.ones(64 * 2**20 // 4)
    del block
    assert meter.peak() - after_reset >= 60 * 2**20
    assert after_reset < before + 16 * 2**20, "the reset must forget the first allocation's peak"


def test_a_cure_that_did_nothing_is_refused(monkeypatch):
    """With an empty mask the session runs the plain personalized pass; the benchmark must not time it
    as a cure."""
    (case,) = PRESETS["smoke"]
    unet, family = build_unet(case.config, CPU, torch.float32)
    host = bench_cure.make_host(unet, family=family, steps=2, latent_side=case.size // 8)
    monkeypatch.setattr(bench_cure, "half_mask", lambda size: torch.zeros(size, size, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="did not run fully"):
        bench_cure.run_cured(host, "fasa", case.size, PeakMemory(CPU))


def test_parser_timing_with_the_trained_detector_parses_the_photos_face(tmp_path):
    """``--trained-detector`` times detection and parsing of a real face, not a search that finds none."""
    pytest.importorskip("retinaface")
    weights = bench_cure.write_parser_weights(tmp_path, trained_detector=True)
    log: list[str] = []
    seconds = bench_cure.time_parser(bench_cure.astronaut(512), weights.models_dir, CPU, 1, log.append)
    assert seconds > 0
    assert log == ["  face parser 512x512: 1 face(s) parsed"]
