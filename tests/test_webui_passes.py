"""Each pass of a job as the WebUI runs it: FASA step windows in the WebUI's own call count, the uncured
rerun and APG of a hires job with that pass's hires state and host, and conditioning reused only when every
part of it matches."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from webui_checks import CURE, EXTENSION_DIR, image_tensor, run
from webui_host import WebUIHost, installed_host

from freecure.attention import AttentionEngine

HIRES = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6,
         "hr_scheduler": "Karras"}


def hires_fields(webui: WebUIHost) -> dict:
    """Hires settings that differ from the first pass's (Forge also has its own hires CFG scale)."""
    return {**HIRES, **({"hr_cfg": 3.0} if webui.kind == "forge" else {})}


def test_fasa_step_window_follows_the_denoiser_calls(webui: WebUIHost, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, float]] = []
    begin_call = AttentionEngine.begin_call

    def recording(engine: AttentionEngine, roles: Any, latent_hw: Any, progress: float) -> None:
        begin_call(engine, roles, latent_hw, progress)
        seen.append((engine.mode, progress))

    monkeypatch.setattr(AttentionEngine, "begin_call", recording)
    run(webui, CURE)  # Euler, 4 steps: call i is at i/4 of the schedule
    assert [progress for mode, progress in seen if mode == "curing"] == [0.0, 0.25, 0.5, 0.75]
    assert [progress for mode, progress in seen if mode == "recording"] == [0.0, 0.25, 0.5, 0.75]


def test_uncured_rerun_of_the_hires_pass_is_the_plain_hires_image(webui: WebUIHost,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fields = hires_fields(webui)
    plain = image_tensor(run(webui, None, **fields).images[0])

    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("planted")

    monkeypatch.setattr(AttentionEngine, "fasa_rows", fail)
    result = run(webui, {**CURE, "hires": "hi-res"}, **fields)
    assert "the image was generated again, uncured" in result.infotexts[0]
    assert torch.equal(image_tensor(result.images[0]), plain), "hires scheduler and CFG scale of that pass"


@pytest.mark.parametrize("hires", ["low-res", "hi-res"])
def test_apg_runs_with_the_pass_that_made_the_final_samples(webui: WebUIHost, hires: str) -> None:
    seen: list[tuple[bool, tuple[int, ...]]] = []

    def record(params: Any) -> None:
        seen.append((bool(params.denoiser.p.is_hr_pass), tuple(params.x.shape[-2:])))

    webui.script_callbacks.on_cfg_denoiser(record)
    try:
        result = run(webui, {**CURE, "hires": hires, "apg": "on"}, prompt="a photo of a woman with red hair, smiling",
                     **hires_fields(webui))
    finally:
        webui.script_callbacks.remove_callbacks_for_function(record)
    assert "APG failed" not in result.infotexts[0]
    low_res = seen[0][1]
    assert all(is_hires for is_hires, shape in seen if shape != low_res), "hi-res samples, hires pass state"
    assert all(not is_hires for is_hires, shape in seen if shape == low_res)


def test_conditioning_is_reused_only_for_the_same_prompts_and_negatives(webui: WebUIHost) -> None:
    """APG's regeneration has the main prompt as its target; with asymmetric guidance its baseline is the
    source prompt, not the negative prompt the main pass was conditioned on."""
    prompt = "a photo of a woman with red hair, smiling"
    settings = {**CURE, "apg": "on", "apg_target": prompt}
    standard = run(webui, {**settings, "apg_guidance": "standard"}, prompt=prompt)
    asymmetric = run(webui, {**settings, "apg_guidance": "asymmetric"}, prompt=prompt)
    assert "APG failed" not in asymmetric.infotexts[0]
    assert not torch.equal(image_tensor(asymmetric.images[0]), image_tensor(standard.images[0]))


class ZeroHypernetwork:
    """A hypernetwork whose k and v layers map every context to zero: every key and value A1111's attention
    projects is then exactly zero (``to_k``/``to_v`` have no bias), whatever the weights."""

    def __init__(self, dims: set[int]) -> None:
        self.layers = {dim: (torch.zeros_like, torch.zeros_like) for dim in dims}


def test_fasa_keys_and_values_pass_through_the_hypernetworks(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor] = []
    for name in ("observe_self", "fasa_rows"):
        original = getattr(AttentionEngine, name)

        def spy(engine: AttentionEngine, layer: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            tensors = [a for a in args[:3] if isinstance(a, torch.Tensor)]
            seen.extend(tensors[-2:])  # k, v
            return _original(engine, layer, *args, **kwargs)

        monkeypatch.setattr(AttentionEngine, name, spy)
    with installed_host("a1111") as webui:
        webui.load_scripts(EXTENSION_DIR)
        unet = webui.shared.sd_model.model.diffusion_model
        dims = {m.to_k.in_features for name, m in unet.named_modules() if name.endswith(("attn1", "attn2"))}
        webui.shared.loaded_hypernetworks = [ZeroHypernetwork(dims)]
        result = run(webui, {**CURE, "identity_off": "lora"})  # the hypernetwork stays on in both passes
    assert "cure failed" not in result.infotexts[0] and "bank misses" not in result.infotexts[0]
    assert seen and all(not t.any() for t in seen), "our keys and values are the host's: through the hypernetwork"
