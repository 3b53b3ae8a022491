"""Identity adapters as the real extensions build them (tests/fake_extensions: sd-webui-controlnet on A1111,
Forge's built-in IP-Adapter on Forge): each identity kind is off in the foundation pass and on in the cure
pass, the infotext names it, and a style IP-Adapter unit beside it runs in both passes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from webui_checks import CURE, CallProbe, image_tensor, run
from webui_host import WebUIHost

STEPS = 4  # run() samples 4 Euler steps: calls [0, 4) are the foundation pass, [4, 8) the cure pass

# What the infotext names per unit kind, per host; Forge has no PuLID, and its IP-Adapter does not store v2.
NAMED = {
    "a1111": {"faceid": ["IP-Adapter FaceID"], "faceid_plus_v2": ["IP-Adapter FaceID Plus v2"],
              "instantid": ["InstantID", "InstantID ControlNet"], "pulid": ["PuLID"]},
    "forge": {"faceid": ["IP-Adapter FaceID"], "faceid_plus_v2": ["IP-Adapter FaceID Plus"],
              "instantid": ["InstantID"]},
}


def switched_off(webui: WebUIHost, result: Any) -> list[str]:
    params = webui.infotext_utils.parse_generation_parameters(result.infotexts[0])
    return params.get("FreeCure identity off", "").split(", ")


@pytest.mark.parametrize("kind", ["faceid", "faceid_plus_v2", "instantid", "pulid"])
def test_identity_adapter_is_off_in_the_foundation_only_and_style_stays_on(webui: WebUIHost, kind: str) -> None:
    if kind not in NAMED[webui.kind]:
        pytest.skip(f"{webui.kind} has no {kind} adapter")
    probe = CallProbe(webui, units=(kind, "style"))
    with probe.installed():
        result = run(webui, CURE, prompt="a photo of a woman with red hair")  # no LoRA: the adapter alone
    assert len(probe.calls) == 2 * STEPS
    after_foundation, after_cure = probe.calls[STEPS]["adapter_calls"], probe.adapter_calls
    assert after_foundation[kind] == 0, "the identity adapter is silent in the foundation pass"
    assert after_cure[kind] > 0, "and runs in the cure pass"
    assert after_foundation["style"] > 0, "the style IP-Adapter runs in the foundation pass"
    assert after_cure["style"] > after_foundation["style"], "and in the cure pass"
    assert [f"adapter:{name}" for name in NAMED[webui.kind][kind]] == \
        [source for source in switched_off(webui, result) if source.startswith("adapter:")]
    if kind == "instantid" and webui.kind == "a1111":
        assert after_foundation["instantid controlnet"] == 0, "InstantID's ControlNet is off in the foundation"
        assert after_cure["instantid controlnet"] > 0, "and on in the cure pass"
    if kind == "instantid" and webui.kind == "forge":
        assert [call["controlnet_modifiers"] for call in probe.calls] == [0] * STEPS + [1] * STEPS, \
            "the face embedding reaches the ControlNets in the cure pass only"


def test_style_adapter_alone_is_no_identity(webui: WebUIHost) -> None:
    """On Forge also when the LoRA is switched off through the model objects from before LoRA."""
    probe = CallProbe(webui, units=("style",))
    with probe.installed():
        result = run(webui, CURE)
    assert not any(call["lora"] for call in probe.calls[:STEPS]), "the LoRA identity is off"
    assert probe.calls[STEPS]["adapter_calls"]["style"] > 0, "the style adapter ran in the foundation pass"
    assert not any(source.startswith("adapter") for source in switched_off(webui, result))


def test_adapters_left_in_identity_off_kinds_stay_on(webui: WebUIHost) -> None:
    probe = CallProbe(webui, units=("faceid",))
    with probe.installed():
        result = run(webui, {**CURE, "identity_off": "lora"})
    assert probe.calls[STEPS]["adapter_calls"]["faceid"] > 0, "FaceID kept on when 'adapter' is not chosen"
    assert not any(source.startswith("adapter") for source in switched_off(webui, result))


def foundation_image(webui: WebUIHost, units: tuple[str, ...]) -> Any:
    probe = CallProbe(webui, units=units)
    with probe.installed():
        result = run(webui, {**CURE, "debug_images": True})
    index = next(i for i, caption in enumerate(result.infotexts) if caption.startswith("FreeCure foundation"))
    return image_tensor(result.images[index])


def foundation_denoised(webui: WebUIHost, units: tuple[str, ...]) -> list[torch.Tensor]:
    """The denoised latents after CFG of each foundation call: a difference in the last bit shows here, where
    the 8-bit image would round it away."""
    denoised: list[torch.Tensor] = []

    def on_cfg_after_cfg(params: Any) -> None:
        denoised.append(params.x.clone())

    webui.script_callbacks.on_cfg_after_cfg(on_cfg_after_cfg)
    try:
        with CallProbe(webui, units=units).installed():
            run(webui, CURE)
    finally:
        webui.script_callbacks.remove_callbacks_for_function(on_cfg_after_cfg)
    return denoised[:STEPS]


@pytest.mark.parametrize("kind", ["faceid", "instantid", "pulid"])
def test_foundation_with_an_identity_adapter_runs_the_host_attention(webui: WebUIHost, kind: str) -> None:
    """With every unit of a module switched off, the module runs the WebUI's own attention again (its
    optimization), not ControlNet's hacked forward with nothing to add: bit for bit the job without the unit."""
    if kind not in NAMED[webui.kind]:
        pytest.skip(f"{webui.kind} has no {kind} adapter")
    webui.shared.opts.data["freecure_foundation_cache_mb"] = 0  # both jobs sample their foundation
    with_unit, without = foundation_denoised(webui, (kind,)), foundation_denoised(webui, ())
    assert len(with_unit) == STEPS
    assert all(torch.equal(a, b) for a, b in zip(with_unit, without, strict=True))


@pytest.mark.parametrize("kind", ["faceid", "faceid_plus_v2", "instantid", "pulid"])
def test_foundation_with_an_identity_adapter_is_the_foundation_without_it(webui: WebUIHost, kind: str) -> None:
    """Switched off means gone: the foundation image is bit-identical to that of the same job without the unit
    (on A1111 with InstantID also without its ControlNet unit)."""
    if kind not in NAMED[webui.kind]:
        pytest.skip(f"{webui.kind} has no {kind} adapter")
    assert torch.equal(foundation_image(webui, (kind,)), foundation_image(webui, ()))


@pytest.mark.parametrize("kind", ["faceid", "instantid"])
def test_identity_adapter_is_off_on_sdxl(webui: WebUIHost, kind: str) -> None:
    """SDXL layout: Forge's IP-Adapter patches per (block, id, index), so only what it stores tells FaceID."""
    webui.load_model("sdxl")
    probe = CallProbe(webui, units=(kind, "style"))
    with probe.installed():
        result = run(webui, CURE, prompt="a photo of a woman with red hair")
    assert probe.calls[STEPS]["adapter_calls"][kind] == 0, "the identity adapter is silent in the foundation pass"
    assert probe.adapter_calls[kind] > 0 and probe.calls[STEPS]["adapter_calls"]["style"] > 0
    assert f"adapter:{NAMED[webui.kind][kind][0]}" in switched_off(webui, result)
