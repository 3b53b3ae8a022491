"""Networks that are not identity (``keep_networks``) stay on in the foundation pass, on both stand-ins: the
foundation samples with exactly the kept networks at their multipliers, on the UNet and on the text encoder
(its conditioning), and with none of the identity networks: bit for bit what a plain job whose prompt has only
the kept networks samples. On Forge the kept networks go through the host's own LoRA loading
(``networks.load_networks``, tests/forge_stub/extensions-builtin/sd_forge_lora, Forge 2 dfdcbab6)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from webui_checks import CURE, EXTENSION_DIR, freecure, image_tensor, keep_samples, module_state, run
from webui_host import WebUIHost
from webui_host import forge_host as forge_host  # the fixture

from freecure.webui.controller import STATE_ATTR

IDENTITY_PROMPT = "a photo of ohwx woman with red hair <lora:ohwx:1>"
KEEP = {**CURE, "keep_networks": "style"}
HIRES = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6}
# A style network on both sides, one with other multipliers for the text encoder and the UNet, one on the text
# encoder only (UNet multiplier 0: only the conditioning carries it), and one named by its te=/unet= arguments.
STYLE_TAGS = ["<lora:style:0.7>", "<lora:style:0.6:1.3>", "<lora:style:0.9:0>", "<lora:style:unet=0.4:te=1.1>"]


def plain_latents(webui: WebUIHost, prompt: str) -> torch.Tensor:
    p = webui.txt2img(prompt=prompt, steps=4, seed=7)
    samples = keep_samples(p)
    webui.process(p)
    return samples[0]


def cured_job(webui: WebUIHost, prompt: str, settings: dict, **fields: Any) -> tuple[Any, Any]:
    p = webui.txt2img(prompt=prompt, steps=4, seed=7, **fields)
    webui.set_script_args(p, freecure(webui), [settings])
    return p, webui.process(p)


def switched_off(webui: WebUIHost, result: Any) -> list[str]:
    params = webui.infotext_utils.parse_generation_parameters(result.infotexts[0])
    return params.get("FreeCure identity off", "").split(", ")


def merged_networks(webui: WebUIHost) -> tuple[tuple[str, float], ...]:
    """The networks (name, UNet multiplier) in the weights the UNet runs with now. On Forge: those of the
    patcher in place, which must be the ones its model's ``LoraLoader`` merged when it was loaded."""
    model = webui.shared.sd_model
    if webui.kind == "a1111":
        return tuple(model.lora_patcher.active)
    unet = model.forge_objects.unet
    assert unet.lora_loader.loaded_hash == str(list(unet.lora_patches)), "the sampled patcher's LoRA is merged"
    return tuple((os.path.splitext(os.path.basename(filename))[0], strength)
                 for filename, strength, _model, _online in unet.lora_patches)


@pytest.mark.parametrize("style", STYLE_TAGS)
def test_foundation_with_a_kept_network_is_the_job_with_only_that_network(webui: WebUIHost, style: str) -> None:
    p, _result = cured_job(webui, f"{IDENTITY_PROMPT} {style}", KEEP)
    session = getattr(p, STATE_ATTR).session
    # The WebUI takes the tags out of the prompts it conditions on (``p.prompts``): the foundation prompt has none.
    foundation_prompt = session.foundation_branch.prompts[0]
    assert "ohwx" not in foundation_prompt and "<" not in foundation_prompt, foundation_prompt

    with_style = plain_latents(webui, style + foundation_prompt)
    assert torch.equal(session.foundation_latents, with_style)
    assert not torch.equal(with_style, plain_latents(webui, foundation_prompt)), "the style network changes the image"


def test_the_infotext_names_the_identity_network_and_not_the_kept_one(webui: WebUIHost) -> None:
    _p, result = cured_job(webui, f"{IDENTITY_PROMPT} <lora:style:0.7>", KEEP)
    sources = switched_off(webui, result)
    assert "lora:ohwx" in sources and "trigger:ohwx" in sources
    assert not any("style" in source for source in sources), sources


def test_every_network_is_off_when_none_is_kept(webui: WebUIHost) -> None:
    p, result = cured_job(webui, f"{IDENTITY_PROMPT} <lora:style:0.7>", CURE)
    session = getattr(p, STATE_ATTR).session
    assert {"lora:ohwx", "lora:style"} <= set(switched_off(webui, result))
    assert torch.equal(session.foundation_latents, plain_latents(webui, session.foundation_branch.prompts[0]))


def test_the_hires_foundation_keeps_the_hires_prompts_networks(webui: WebUIHost) -> None:
    """The hires pass activates the networks of the hires prompt (``hr_extra_network_data``): its foundation keeps
    those, at the hires prompt's multipliers, and the pass's cure has them all back."""
    calls: list[tuple[bool, tuple[tuple[str, float], ...]]] = []

    def on_cfg_denoiser(params: Any) -> None:
        calls.append((bool(params.denoiser.p.is_hr_pass), merged_networks(webui)))

    webui.script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
    try:
        _p, result = cured_job(webui, f"{IDENTITY_PROMPT} <lora:style:0.9>", {**KEEP, "hires": "hi-res"},
                               hr_prompt=f"{IDENTITY_PROMPT} <lora:style:0.5>", **HIRES)
    finally:
        webui.script_callbacks.remove_callbacks_for_function(on_cfg_denoiser)
    assert "FreeCure notes" not in result.infotexts[0], result.infotexts[0]
    low_res = [networks for is_hires, networks in calls if not is_hires]
    hires = [networks for is_hires, networks in calls if is_hires]
    assert low_res and set(low_res) == {(("ohwx", 1.0), ("style", 0.9))}, "the uncured low-res pass"
    foundation, cure = hires[:len(hires) // 2], hires[len(hires) // 2:]
    assert foundation and set(foundation) == {(("style", 0.5),)}, "the hires foundation keeps the hires style"
    assert set(cure) == {(("ohwx", 1.0), ("style", 0.5))}, "the hires cure pass has the identity back"


def test_a_cure_with_a_kept_network_leaves_the_next_plain_jobs_as_before(webui: WebUIHost) -> None:
    prompt = f"{IDENTITY_PROMPT} <lora:style:0.7>"
    plain_before = image_tensor(run(webui, None, prompt=prompt).images[0])
    state_before = module_state(webui)
    cured = run(webui, KEEP, prompt=prompt)
    assert "FreeCure notes" not in cured.infotexts[0], cured.infotexts[0]
    assert module_state(webui) == state_before
    assert torch.equal(image_tensor(run(webui, None, prompt=prompt).images[0]), plain_before)


def test_forge_keeps_the_jobs_lora_state_while_building_the_kept_networks(forge_host: WebUIHost) -> None:
    """What the host's ``load_networks`` writes while FreeCure builds the kept networks (the loaded-network list
    the LoRA extension reports hashes from, the applied LoRA set and its hash) is the job's again right after: in
    both passes and after the job it is what a plain job with the same prompt leaves."""
    forge_host.load_scripts(EXTENSION_DIR)
    networks = forge_host.module("networks")
    model = forge_host.shared.sd_model
    prompt = f"{IDENTITY_PROMPT} <lora:style:0.7>"

    def lora_state() -> tuple[tuple[str | None, ...], str, int]:
        return (tuple(n.mentioned_name for n in networks.loaded_networks), model.current_lora_hash,
                id(model.forge_objects_after_applying_lora))

    run(forge_host, None, prompt=prompt)
    after_plain_job = lora_state()
    assert after_plain_job[0] == ("ohwx", "style")
    seen: list[tuple[tuple[str | None, ...], str, int]] = []
    forge_host.script_callbacks.on_cfg_denoiser(lambda params: seen.append(lora_state()))
    _p, result = cured_job(forge_host, prompt, KEEP)
    assert "FreeCure notes" not in result.infotexts[0], result.infotexts[0]
    assert len(seen) == 8 and set(seen) == {after_plain_job}, "the foundation and the cure pass"
    assert lora_state() == after_plain_job
    params = forge_host.infotext_utils.parse_generation_parameters(result.infotexts[0])
    assert set(params["Lora hashes"].split(", ")) == {f"{name}: {networks.available_networks[name].shorthash}"
                                                       for name in ("ohwx", "style")}
