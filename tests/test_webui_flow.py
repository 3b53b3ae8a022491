"""The real script class driven the way the WebUI drives it, on the stand-in host (tests/webui_stub):
UI, API args, the txt2img hook sequence, identity switching, infotext, X/Y/Z, progress, interruption,
failures and residue."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import pytest
import torch
from webui_checks import (
    CURE,
    EXTENSION_DIR,
    PROMPT,
    CallProbe,
    attention_hooked,
    freecure,
    image_tensor,
    lora_in_place,
    module_state,
    run,
)
from webui_host import WebUIHost

from freecure.options import UI_FIELDS, Options
from freecure.webui.controls import options_from_script_args, ui_defaults

# -- UI and args -----------------------------------------------------------------------------------------

def test_ui_is_reentrant_and_matches_the_options_order(webui: WebUIHost) -> None:
    import gradio as gr

    script = freecure(webui)
    with gr.Blocks():
        first = script.ui(False)
        second = script.ui(False)
    assert len(first) == len(second) == len(UI_FIELDS) == script.args_to - script.args_from
    describe = [(type(c).__name__, c.label, c.value) for c in first]
    assert describe == [(type(c).__name__, c.label, c.value) for c in second]
    assert [c.value for c in first] == ui_defaults()
    assert script.show(True) is script.show(False) is webui.scripts.AlwaysVisible  # txt2img and img2img


def test_ui_list_and_api_dict_give_the_same_options(webui: WebUIHost) -> None:
    ui_args = ui_defaults()
    ui_args[UI_FIELDS.index("enabled")] = True
    ui_args[UI_FIELDS.index("method")] = "blend"
    ui_args[UI_FIELDS.index("attributes")] = ["hair", "glasses"]
    ui_args[UI_FIELDS.index("strength")] = 0.8
    ui_args[UI_FIELDS.index("trigger_words")] = "ohwx, sks"
    from_ui = options_from_script_args(tuple(ui_args))
    from_dict = options_from_script_args(({"enabled": True, "method": "blend", "attributes": "hair+glasses",
                                           "strength": 0.8, "trigger_words": ["ohwx", "sks"]},))
    assert from_ui == from_dict
    assert options_from_script_args(tuple(ui_defaults())) == Options()  # -1 strength = model default


# -- the hook sequence and identity ------------------------------------------------------------------------

def test_foundation_pass_has_identity_off_and_cure_pass_on(webui: WebUIHost) -> None:
    probe = CallProbe(webui, units=("faceid",))
    recorded_prompts: list[list[str]] = []
    parser = webui.prompt_parser
    original = parser.get_multicond_learned_conditioning

    def recording(model: Any, prompts: Any, steps: int, *args: Any, **kwargs: Any) -> Any:
        recorded_prompts.append(list(prompts))
        return original(model, prompts, steps, *args, **kwargs)

    parser.get_multicond_learned_conditioning = recording
    try:
        with probe.installed():
            result = run(webui, CURE)
    finally:
        parser.get_multicond_learned_conditioning = original
    steps = 4
    foundation, cure = probe.calls[:steps], probe.calls[steps:]
    assert len(cure) == steps, "one foundation pass and the main (cure) pass, same number of calls"
    assert not any(call["lora"] for call in foundation), "LoRA off in the foundation pass"
    assert all(call["lora"] for call in cure), "LoRA back on for the cure pass"
    assert probe.calls[steps]["adapter_calls"]["faceid"] == 0, "the FaceID injection is silent in the foundation"
    assert probe.adapter_calls["faceid"] > 0, "and runs in the cure pass"
    assert any("ohwx" not in p[0] and "woman" in p[0] for p in recorded_prompts), recorded_prompts
    params = webui.infotext_utils.parse_generation_parameters(result.infotexts[0])
    switched_off = params["FreeCure identity off"].split(", ")
    assert "lora:ohwx" in switched_off and "trigger:ohwx" in switched_off
    assert "adapter:IP-Adapter FaceID" in switched_off


def test_foundation_conditioning_calls_fit_forge_neo_prompt_parser(webui: WebUIHost) -> None:
    """Forge Neo's modules/prompt_parser.py (Haoming02 `neo`, as vendored in exo101/sd-webui-forge-neo-v3
    de2193d, webui/modules/prompt_parser.py lines 163 and 252) dropped ``use_old_scheduling``:
    ``get_learned_conditioning(model, prompts, steps, hires_steps=None)``. Every call FreeCure makes must bind
    to that signature too (the real Neo raised TypeError and every cure there ended uncured)."""
    parser = webui.prompt_parser
    neo_signature = inspect.signature(lambda model, prompts, steps, hires_steps=None: None)
    originals = {name: getattr(parser, name) for name in ("get_learned_conditioning",
                                                          "get_multicond_learned_conditioning")}
    calls: list[str] = []

    def neo_form(name: str) -> Any:
        def checked(*args: Any, **kwargs: Any) -> Any:
            if sys._getframe(1).f_globals.get("__name__", "").startswith("freecure"):
                calls.append(name)
                neo_signature.bind(*args, **kwargs)  # TypeError, as Neo's function raises it
            return originals[name](*args, **kwargs)
        return checked

    for name in originals:
        setattr(parser, name, neo_form(name))
    try:
        result = run(webui, CURE)
    finally:
        for name, function in originals.items():
            setattr(parser, name, function)
    assert "get_multicond_learned_conditioning" in calls, "the foundation pass encodes its own prompts"
    assert "FreeCure notes" not in result.infotexts[0], result.infotexts[0]


def test_cure_changes_the_image_and_nothing_is_left_behind(webui: WebUIHost) -> None:
    plain_before = image_tensor(run(webui, None).images[0])
    before_state = module_state(webui)  # after the host's own first LoRA activation
    cured = run(webui, {**CURE, "debug_images": True})
    assert module_state(webui) == before_state
    plain_after = image_tensor(run(webui, None).images[0])
    assert torch.equal(plain_before, plain_after), "a plain generation after a cure is bit-identical"
    assert len(cured.images) > 1 and cured.infotexts[1].startswith("FreeCure foundation")
    assert not torch.equal(image_tensor(cured.images[0]), plain_before)
    assert webui.errors == []


def test_zero_strength_is_the_plain_generation(webui: WebUIHost) -> None:
    plain = image_tensor(run(webui, None).images[0])
    zero = run(webui, {**CURE, "strength": 0})
    assert torch.equal(image_tensor(zero.images[0]), plain)
    assert "FreeCure notes" in zero.infotexts[0] and "weight is 0" in zero.infotexts[0]


# -- infotext and X/Y/Z -------------------------------------------------------------------------------------

def test_infotext_restores_every_setting(webui: WebUIHost) -> None:
    settings = {**CURE, "method": "blend", "blend_weight": 0.6, "faces": "0,2", "apg": "off",
                "foundation_prompt": "portrait, [PROMPT], studio light"}
    result = run(webui, settings)
    params = webui.infotext_utils.parse_generation_parameters(result.infotexts[0])
    script = freecure(webui)
    pasted = [reader(params) for _component, reader in script.infotext_fields]
    assert options_from_script_args(tuple(pasted)) == Options.from_dict(settings)
    assert script.infotext_fields[0][1]({"Steps": "20"}) is False  # an image made without FreeCure turns it off


def test_malformed_infotext_is_ignored_on_paste(webui: WebUIHost, capsys: pytest.CaptureFixture) -> None:
    readers = [reader for _component, reader in freecure(webui).infotext_fields]
    assert [reader({"FreeCure": "method: paint"}) for reader in readers][1:] == [None] * (len(readers) - 1)
    assert "ignoring malformed infotext" in capsys.readouterr().out


def test_xyz_axes_are_registered_and_write_overrides(webui: WebUIHost) -> None:
    xyz = next(d.module for d in webui.scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py")
    labels = [option.label for option in xyz.axis_options if option.label.startswith("[FreeCure]")]
    assert "[FreeCure] Strength" in labels and "[FreeCure] Method" in labels and "[FreeCure] Attributes" in labels
    assert len(labels) == len(set(labels))
    webui.load_scripts(EXTENSION_DIR)  # a second load registers nothing twice
    assert [o.label for o in xyz.axis_options if o.label.startswith("[FreeCure]")] == labels
    strength = next(o for o in xyz.axis_options if o.label == "[FreeCure] Strength")
    with pytest.raises(ValueError, match="strength"):
        strength.confirm(None, [0.5, 42.0])
    p = webui.txt2img(prompt=PROMPT, steps=4, seed=7)
    webui.set_script_args(p, freecure(webui), [CURE])
    strength.apply(p, 1.25, None)
    result = webui.process(p)
    assert "strength: 1.25" in result.infotexts[0]


def test_a_strength_per_attribute_through_an_xyz_cell_and_back_from_the_infotext(webui: WebUIHost) -> None:
    xyz = next(d.module for d in webui.scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py")
    axis = next(o for o in xyz.axis_options if o.label == "[FreeCure] Attribute strength")
    with pytest.raises(ValueError, match="attribute_strength"):
        axis.confirm(None, ["hair:1.2+glasses:0.6", "wings:2"])
    p = webui.txt2img(prompt=PROMPT, steps=4, seed=7)
    webui.set_script_args(p, freecure(webui), [CURE])
    axis.apply(p, "hair:1.2+glasses:0.6", None)
    params = webui.infotext_utils.parse_generation_parameters(webui.process(p).infotexts[0])
    pasted = Options.from_infotext(params)
    assert pasted.attribute_strength == (("hair", 1.2), ("glasses", 0.6))


# -- progress, interruption and failures ----------------------------------------------------------------------

def test_job_count_counts_the_foundation_pass(webui: WebUIHost) -> None:
    seen: list[int] = []
    callbacks = webui.script_callbacks

    def record(params: Any) -> None:
        seen.append(webui.shared.state.job_count)

    callbacks.on_cfg_denoiser(record)
    try:
        run(webui, CURE, n_iter=2)
    finally:
        callbacks.remove_callbacks_for_function(record)
    assert max(seen) == 2 + 2  # two batches, one foundation pass each


def test_interrupt_during_the_foundation_keeps_the_webui_result(webui: WebUIHost) -> None:
    state = webui.shared.state
    calls = 0

    def interrupt(params: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            state.interrupted = True

    run(webui, None)
    before = module_state(webui)
    webui.script_callbacks.on_cfg_denoiser(interrupt)
    try:
        result = run(webui, CURE)
    finally:
        webui.script_callbacks.remove_callbacks_for_function(interrupt)
    assert "cure stopped: interrupted" in result.infotexts[0]
    assert module_state(webui) == before
    assert calls == 2, "the main pass stops at once too: the WebUI's own interrupted result"


def test_failure_right_after_identity_off_keeps_the_identity(webui: WebUIHost,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    plain = image_tensor(run(webui, None).images[0])
    samplers = webui.sd_samplers
    original = samplers.create_sampler
    failed = []

    def failing_once(name: str, model: Any) -> Any:
        if not lora_in_place(webui) and not failed:  # identity is off right now
            failed.append(name)
            raise RuntimeError("planted failure")
        return original(name, model)

    monkeypatch.setattr(samplers, "create_sampler", failing_once)
    before = module_state(webui)
    result = run(webui, CURE)
    assert torch.equal(image_tensor(result.images[0]), plain), "uncured, and with the LoRA identity"
    assert failed, "the failure was planted while the identity was off"
    assert "cure failed (RuntimeError: planted failure)" in result.infotexts[0]
    assert module_state(webui) == before


def test_invalid_settings_skip_the_cure_with_the_reason(webui: WebUIHost) -> None:
    plain = image_tensor(run(webui, None).images[0])
    result = run(webui, {"enabled": True, "strength": "strong"})
    assert torch.equal(image_tensor(result.images[0]), plain)
    assert "FreeCure error" in result.infotexts[0] and "strength" in result.infotexts[0]


# -- samplers, batches and hires fix --------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "Heun"])
def test_samplers_and_batches_line_up_call_by_call(webui: WebUIHost, sampler: str) -> None:
    fields = {"sampler_name": sampler, "batch_size": 2, "width": 96, "height": 64}
    plain = run(webui, None, **fields)
    cured = run(webui, CURE, **fields)
    again = run(webui, CURE, **fields)
    assert "bank misses" not in cured.infotexts[0]
    assert "cure failed" not in cured.infotexts[0]
    for index in range(2):
        assert not torch.equal(image_tensor(cured.images[index]), image_tensor(plain.images[index]))
        assert torch.equal(image_tensor(cured.images[index]), image_tensor(again.images[index])), "deterministic"


@pytest.mark.parametrize(("hires", "cured_passes"), [("low-res", [True, False]), ("hi-res", [False, True]),
                                                     ("both", [True, True])])
def test_hires_option_chooses_the_cured_passes(webui: WebUIHost, hires: str, cured_passes: list[bool]) -> None:
    seen: list[tuple[bool, bool]] = []

    def record(params: Any) -> None:
        seen.append((bool(getattr(params.denoiser.p, "is_hr_pass", False)), attention_hooked(webui)))

    webui.script_callbacks.on_cfg_denoiser(record)
    try:
        result = run(webui, {**CURE, "hires": hires}, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent",
                     denoising_strength=0.6)
    finally:
        webui.script_callbacks.remove_callbacks_for_function(record)
    assert "cure failed" not in result.infotexts[0]
    for is_hires, cured in zip((False, True), cured_passes, strict=True):
        hooked = [h for hr, h in seen if hr == is_hires]
        assert hooked and all(hooked) == cured and any(hooked) == cured, (is_hires, hooked)
    assert not attention_hooked(webui)


def test_apg_runs_on_hires_decoded_samples(webui: WebUIHost) -> None:
    fields = {"prompt": "a photo of a woman with red hair, smiling", "enable_hr": True, "hr_scale": 1.5,
              "hr_upscaler": "Latent", "denoising_strength": 0.6}
    without = run(webui, {**CURE, "apg": "off"}, **fields)
    with_apg = run(webui, {**CURE, "apg": "on", "apg_strength": 0.5}, **fields)
    assert "APG failed" not in with_apg.infotexts[0]
    assert with_apg.images[0].size == without.images[0].size
    assert not torch.equal(image_tensor(with_apg.images[0]), image_tensor(without.images[0]))


def test_blend_cures_through_the_cfg_callbacks(webui: WebUIHost) -> None:
    plain = image_tensor(run(webui, None).images[0])
    blended = run(webui, {**CURE, "method": "blend", "blend_start": 0.0})
    assert "cure failed" not in blended.infotexts[0] and "bank misses" not in blended.infotexts[0]
    assert not torch.equal(image_tensor(blended.images[0]), plain)


@pytest.mark.parametrize("sampler", ["DDIM", "UniPC"])
def test_blend_is_refused_with_timestep_samplers(webui: WebUIHost, sampler: str) -> None:
    p = webui.txt2img(prompt=PROMPT, sampler_name=sampler)
    script = freecure(webui)
    webui.set_script_args(p, script, [{**CURE, "method": "blend"}])
    script.process(p, *p.script_args[script.args_from:script.args_to])
    assert f"method blend needs a k-diffusion sampler, not {sampler}" in p.extra_generation_params["FreeCure notes"]
    assert p._freecure_job is None
    webui.set_script_args(p, script, [CURE])  # FASA works with every sampler
    script.process(p, *p.script_args[script.args_from:script.args_to])
    assert p._freecure_job is not None


def test_hires_debug_images_name_their_pass(webui: WebUIHost) -> None:
    result = run(webui, {**CURE, "hires": "both", "debug_images": True}, enable_hr=True, hr_scale=1.5,
                 hr_upscaler="Latent", denoising_strength=0.6)
    captions = [text for text in result.infotexts if text.startswith("FreeCure foundation")]
    assert captions == ["FreeCure foundation (identity off), image 0, low-res",
                        "FreeCure foundation (identity off), image 0, hi-res"]


def test_embeddings_become_the_class_word_and_sources_can_stay_on(webui: WebUIHost) -> None:
    from modules import sd_hijack, shared
    from modules.textual_inversion.textual_inversion import Embedding

    embedding = Embedding(None, "ohwx-face")
    embedding.vectors = 2
    if webui.kind == "forge":  # Forge 2 keeps them per text engine
        shared.sd_model.text_processing_engine.embeddings.register_embedding(embedding)
    else:
        sd_hijack.model_hijack.embedding_db.register_embedding(embedding, shared.sd_model)
    recorded: list[str] = []
    parser = webui.prompt_parser
    original = parser.get_multicond_learned_conditioning

    def recording(model: Any, prompts: Any, steps: int, *args: Any, **kwargs: Any) -> Any:
        recorded.extend(prompts)
        return original(model, prompts, steps, *args, **kwargs)

    parser.get_multicond_learned_conditioning = recording
    probe = CallProbe(webui)
    try:
        with probe.installed():
            result = run(webui, {**CURE, "trigger_words": "", "identity_off": "embedding+adapter"},
                         prompt="a photo of ohwx-face woman with red hair <lora:ohwx:1>")
    finally:
        parser.get_multicond_learned_conditioning = original
    assert "a photo of woman with red hair" in recorded, recorded  # "ohwx-face woman" -> "woman"
    params = webui.infotext_utils.parse_generation_parameters(result.infotexts[0])
    assert params["FreeCure identity off"] == "embedding:ohwx-face"
    assert all(call["lora"] for call in probe.calls), "LoRA left on when the user keeps it"


def test_cfg_scale_one_cures_too(webui: WebUIHost) -> None:
    """Forge skips the unconditional rows at CFG 1 and hands the hooks p.uc = None."""
    plain = image_tensor(run(webui, None, cfg_scale=1.0).images[0])
    cured = run(webui, CURE, cfg_scale=1.0)
    assert "cure failed" not in cured.infotexts[0] and "bank misses" not in cured.infotexts[0]
    assert not torch.equal(image_tensor(cured.images[0]), plain)
