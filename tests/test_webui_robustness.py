"""Faults, interruptions and other extensions around a cure, on both stand-in hosts: every fault ends with
the uncured image (or the WebUI's own interrupted result), the reason in the infotext, and the host exactly
as before; a plain generation afterwards is bit-identical to one before FreeCure ever ran."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from webui_checks import CURE, image_tensor, module_state, run
from webui_host import WebUIHost

from freecure import sampling
from freecure.attention import AttentionEngine
from freecure.masks import AttributeMasks
from freecure.pipeline import session as session_module


def failing_after(calls: int, error: Exception) -> Callable[..., Any]:
    """A replacement that raises ``error`` from its ``calls``-th call on."""
    count = 0

    def fail(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        if count >= calls:
            raise error
        return None

    return fail


def out_of_memory() -> Exception:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def empty_masks(attributes: Any, parts_of: Any, image_hw: tuple[int, int], **_kwargs: Any) -> AttributeMasks:
    empty = np.zeros(image_hw, dtype=bool)
    return AttributeMasks({name: empty for name in attributes}, empty, dict.fromkeys(attributes, "none"), [])


# fault name -> (how to plant it, settings, what the infotext says, the image is the plain one)
FAULTS: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], dict, str]] = {
    "out of memory in the foundation's attention": (
        lambda mp: mp.setattr(AttentionEngine, "observe_self", failing_after(3, out_of_memory())),
        {}, "attention failed in the foundation pass (OutOfMemoryError"),
    "exception in FASA during the main pass": (
        lambda mp: mp.setattr(AttentionEngine, "fasa_rows", failing_after(5, RuntimeError("planted"))),
        {}, "attention failed in the cure pass (RuntimeError: planted); the image was generated again, uncured"),
    "out of memory in FASA during the main pass": (
        lambda mp: mp.setattr(AttentionEngine, "fasa_rows", failing_after(1, out_of_memory())),
        {}, "generated again, uncured"),
    "every mask empty": (
        lambda mp: mp.setattr(session_module, "build_masks", empty_masks),
        {}, "every mask is empty"),
    "blend mask empty": (
        lambda mp: mp.setattr(session_module, "build_masks", empty_masks),
        {"method": "blend"}, "every mask is empty"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_gives_the_uncured_image_and_leaves_nothing(webui: WebUIHost, monkeypatch: pytest.MonkeyPatch,
                                                          fault: str) -> None:
    plant, settings, reason = FAULTS[fault]
    plain = image_tensor(run(webui, None).images[0])
    before = module_state(webui)
    with monkeypatch.context() as patched:
        plant(patched)
        result = run(webui, {**CURE, **settings})
    assert reason in result.infotexts[0]
    assert torch.equal(image_tensor(result.images[0]), plain), "the uncured image, bit for bit"
    assert module_state(webui) == before
    assert torch.equal(image_tensor(run(webui, None).images[0]), plain), "no residue"
    assert webui.errors == []


def test_apg_failure_keeps_the_cured_image(webui: WebUIHost, monkeypatch: pytest.MonkeyPatch) -> None:
    prompt = "a photo of ohwx woman with red hair, smiling <lora:ohwx:1>"
    cured = image_tensor(run(webui, {**CURE, "apg": "off"}, prompt=prompt).images[0])
    monkeypatch.setattr(sampling, "invert", failing_after(1, out_of_memory()))
    result = run(webui, {**CURE, "apg": "on"}, prompt=prompt)
    assert "APG failed (OutOfMemoryError" in result.infotexts[0]
    assert torch.equal(image_tensor(result.images[0]), cured)


@pytest.mark.parametrize("flag", ["interrupted", "skipped"])
@pytest.mark.parametrize(("stage", "at_call"), [("foundation", 2), ("main pass", 6), ("APG", 10)])
def test_interrupt_or_skip_at_every_stage(webui: WebUIHost, flag: str, stage: str, at_call: int) -> None:
    """4 steps: calls 1-4 are the foundation, 5-8 the main (cure) pass, 9+ APG."""
    state = webui.shared.state
    calls = 0

    def stop(params: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == at_call:
            setattr(state, flag, True)

    prompt = "a photo of ohwx woman with red hair, smiling <lora:ohwx:1>"
    run(webui, None, prompt=prompt)  # the host's own first LoRA load happens here, not in the snapshot
    before = module_state(webui)
    webui.script_callbacks.on_cfg_denoiser(stop)
    try:
        result = run(webui, {**CURE, "apg": "on"}, prompt=prompt)
    finally:
        webui.script_callbacks.remove_callbacks_for_function(stop)
        setattr(state, flag, False)
    assert module_state(webui) == before
    if stage == "foundation":
        assert f"cure stopped: {flag}" in result.infotexts[0]
    if stage == "APG" and flag == "interrupted":
        assert "APG stopped: interrupted" in result.infotexts[0]
    assert calls == at_call, "nothing samples after the user stopped"


def test_ancestral_noise_of_the_main_pass_is_untouched(webui: WebUIHost) -> None:
    """The foundation pass draws ancestral noise from a fresh copy of the job's RNG; with a cure that changes
    nothing (blend from the very end), the main pass must come out exactly as without FreeCure."""
    plain = image_tensor(run(webui, None, sampler_name="Euler a").images[0])
    result = run(webui, {**CURE, "method": "blend", "blend_start": 1.0, "debug_images": True},
                 sampler_name="Euler a")
    assert result.infotexts[1].startswith("FreeCure foundation"), "the foundation pass ran"
    assert torch.equal(image_tensor(result.images[0]), plain)


@pytest.mark.parametrize(("option", "value", "reason"), [
    ("token_merging_ratio", 0.5, "token merging is on"),
    ("hypertile_enable_unet", True, "HyperTile is on"),
])
def test_attention_layouts_we_cannot_cure_are_skipped(webui: WebUIHost, option: str, value: Any,
                                                      reason: str) -> None:
    plain = image_tensor(run(webui, None).images[0])
    webui.shared.opts.data[option] = value
    try:
        result = run(webui, CURE)
    finally:
        webui.shared.opts.data.pop(option, None)
    assert reason in result.infotexts[0]
    if option == "hypertile_enable_unet":  # the stand-in records the ToMe ratio without merging tokens
        assert torch.equal(image_tensor(result.images[0]), plain)


# -- face parser faults: the cure goes on with attention masks --------------------------------------------------

@pytest.fixture
def models_dir(webui: WebUIHost, tmp_path: Path) -> Path:
    webui.shared.cmd_opts.freecure_models_dir = str(tmp_path)
    return tmp_path


def test_missing_parser_weights_fall_back_to_attention(webui: WebUIHost, models_dir: Path) -> None:
    plain = image_tensor(run(webui, None).images[0])
    result = run(webui, {**CURE, "mask_source": "both"})
    assert "parsing_bisenet.pth" in result.infotexts[0] and str(models_dir) in result.infotexts[0]
    assert "cure failed" not in result.infotexts[0]
    assert not torch.equal(image_tensor(result.images[0]), plain), "cured with attention masks"


def test_corrupt_parser_weights_fall_back_to_attention(webui: WebUIHost, models_dir: Path) -> None:
    (models_dir / "parsing_bisenet.pth").write_bytes(b"not a checkpoint" * 64)
    (models_dir / "detection_mobilenet0.25_Final.pth").write_bytes(b"\x80\x04junk")
    result = run(webui, {**CURE, "mask_source": "both"})
    assert "cure failed" not in result.infotexts[0]
    assert "FreeCure notes" in result.infotexts[0]


def test_parser_exception_falls_back_to_attention(webui: WebUIHost, models_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "parse_faces", failing_after(1, ValueError("planted parser bug")))
    result = run(webui, {**CURE, "mask_source": "both"})
    assert "face parser failed (ValueError: planted parser bug): attention masks only" in result.infotexts[0]
    assert "cure failed" not in result.infotexts[0]


# -- other extensions -------------------------------------------------------------------------------------------

def test_other_callbacks_fire_and_ours_exist_only_during_our_runs(webui: WebUIHost) -> None:
    registered: list[list[str]] = []
    callbacks = webui.script_callbacks

    def other_extension(params: Any) -> None:
        registered.append([c.name or "" for c in callbacks.callback_map["callbacks_cfg_denoiser"]])

    callbacks.on_cfg_denoiser(other_extension, name="other extension")
    try:
        run(webui, CURE)
        cured_calls = len(registered)
        run(webui, None)
    finally:
        callbacks.remove_callbacks_for_function(other_extension)
    assert cured_calls == 8, "the other extension sees the foundation and the main pass"
    assert all("freecure" in names for names in registered[:cured_calls])
    assert all("freecure" not in names for names in registered[cured_calls:]), "inert outside our runs"


def test_a_model_without_unet_attention_layers_is_skipped(webui: WebUIHost, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DiT other than FLUX (SD3, Qwen-Image) has none of the blocks FreeCure patches."""
    from freecure.webui import hosts

    monkeypatch.setattr(hosts, "attention_modules", lambda unet: {})
    plain = image_tensor(run(webui, None).images[0])
    result = run(webui, CURE)
    assert "neither SD1.x/SD2.x/SDXL UNet attention layers nor FLUX joint-attention blocks" in result.infotexts[0]
    assert torch.equal(image_tensor(result.images[0]), plain)
