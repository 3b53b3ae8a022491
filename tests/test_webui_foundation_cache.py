"""Reused foundations in WebUI jobs (both stand-ins): an X/Y/Z strength sweep samples the foundation once and
gives the images a fresh foundation gives; every input of the foundation pass is in its key."""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from webui_checks import CURE, freecure, image_tensor, run
from webui_host import WebUIHost, installed_host

from freecure.options import Options
from freecure.webui.foundation_key import CURE_ONLY_OPTIONS, SAMPLING_FIELDS, foundation_key

STEPS = 4
REUSED = "foundation reused from an earlier job with the same inputs"


def counted_run(host: WebUIHost, settings: dict | None, **fields: Any) -> tuple[Any, int]:
    """A job and the number of denoiser calls it made."""
    calls = []
    host.script_callbacks.on_cfg_denoiser(calls.append)
    try:
        result = run(host, settings, **fields)
    finally:
        host.script_callbacks.remove_callbacks_for_function(calls.append)
    return result, len(calls)


def cache_size(host: WebUIHost, megabytes: int) -> None:
    host.shared.opts.data["freecure_foundation_cache_mb"] = megabytes


def test_a_strength_sweep_samples_the_foundation_once_and_matches_fresh_foundations(webui: WebUIHost) -> None:
    first, first_calls = counted_run(webui, {**CURE, "strength": 0.5})
    assert first_calls == 2 * STEPS and REUSED not in first.infotexts[0]
    xyz = next(d.module for d in webui.scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py")
    strength = next(o for o in xyz.axis_options if o.label == "[FreeCure] Strength")
    p = webui.txt2img(prompt=first.prompt, steps=STEPS, seed=7)
    webui.set_script_args(p, freecure(webui), [{**CURE, "strength": 1.5}])
    strength.apply(p, 1.5, None)
    calls: list[Any] = []
    webui.script_callbacks.on_cfg_denoiser(calls.append)
    try:
        reused = webui.process(p)
    finally:
        webui.script_callbacks.remove_callbacks_for_function(calls.append)
    assert len(calls) == STEPS, "only the cure pass is sampled"
    assert REUSED in reused.infotexts[0]

    cache_size(webui, 0)
    fresh, fresh_calls = counted_run(webui, {**CURE, "strength": 1.5})
    assert fresh_calls == 2 * STEPS and REUSED not in fresh.infotexts[0]
    assert torch.equal(image_tensor(reused.images[0]), image_tensor(fresh.images[0]))
    assert not torch.equal(image_tensor(reused.images[0]), image_tensor(first.images[0]))


@pytest.mark.parametrize(
    ("settings", "fields"),
    [
        ({}, {"seed": 8}),
        ({}, {"negative_prompt": "blurry"}),
        ({}, {"cfg_scale": 6.0}),
        ({}, {"sampler_name": "Euler a"}),
        ({"class_word": "girl"}, {}),
    ],
    ids=["seed", "negative", "cfg", "sampler", "class-word"],
)
def test_a_changed_foundation_input_samples_the_foundation_again(webui: WebUIHost, settings: dict,
                                                                 fields: dict) -> None:
    counted_run(webui, CURE)
    result, calls = counted_run(webui, {**CURE, **settings}, **fields)
    assert calls == 2 * STEPS and REUSED not in result.infotexts[0]


def test_the_cache_at_zero_is_off(webui: WebUIHost) -> None:
    cache_size(webui, 0)
    counted_run(webui, CURE)
    assert counted_run(webui, CURE)[1] == 2 * STEPS


# -- every input in the key ---------------------------------------------------------------------------------

def changed(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if math.isfinite(value) else 1.0  # s_tmax defaults to inf
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, (list, tuple)):
        return [*value, 1]
    if isinstance(value, dict):
        return {**value, "added": 1}
    raise TypeError(type(value))


class KeyInputs:
    """One pass's key inputs on the A1111 stand-in, any of them replaceable."""

    def __init__(self, host: WebUIHost) -> None:
        self.host = host
        self.p = host.txt2img(prompt="a photo of a woman with red hair", seed=3)
        self.p.extra_network_data = {"lora": []}
        self.p.override_settings = {}
        # A runner with FreeCure and one other AlwaysOn script (ControlNet's units are its arguments).
        self.p.scripts = types.SimpleNamespace(setup_scrips=lambda p, is_ui: None, alwayson_scripts=[
            types.SimpleNamespace(title=lambda: "FreeCure", args_from=0, args_to=1),
            types.SimpleNamespace(title=lambda: "ControlNet", args_from=1, args_to=2),
        ])
        self.p.script_args = ({"enabled": True}, {"image": torch.zeros(8, 8)})
        self.kwargs = dict(x=torch.zeros(1, 4, 8, 8), noise=torch.zeros(1, 4, 8, 8), is_hires=False,
                           foundation_prompts=["a photo of a woman with red hair"], negative_prompts=[""],
                           cfg_scale=5.0, phrases={"hair": ("red hair",)}, embeddings=())
        self.options = Options(enabled=True)

    def key(self, **kwargs: Any) -> str:
        return foundation_key(self.p, kwargs.pop("options", self.options), **{**self.kwargs, **kwargs})


@pytest.fixture()
def inputs() -> Iterator[KeyInputs]:
    with installed_host("a1111") as host:
        yield KeyInputs(host)


@pytest.mark.parametrize("name", SAMPLING_FIELDS)
def test_every_sampling_field_is_in_the_key(inputs: KeyInputs, name: str) -> None:
    before = inputs.key()
    setattr(inputs.p, name, changed(getattr(inputs.p, name, None)))
    assert inputs.key() != before


@pytest.mark.parametrize(
    "change",
    [
        {"x": torch.ones(1, 4, 8, 8)},
        {"noise": torch.ones(1, 4, 8, 8)},
        {"is_hires": True},
        {"cfg_scale": 6.0},
        {"foundation_prompts": ["a photo of a man with red hair"]},
        {"negative_prompts": ["blurry"]},
        {"phrases": {"hair": ("red",)}},
        {"embeddings": ("ohwx",)},
    ],
    ids=lambda change: next(iter(change)),
)
def test_every_pass_input_is_in_the_key(inputs: KeyInputs, change: dict) -> None:
    assert inputs.key(**change) != inputs.key()


def test_subseeds_count_only_when_their_strength_is_not_zero(inputs: KeyInputs) -> None:
    inputs.p.subseeds, inputs.p.subseed_strength = [11], 0.0
    before = inputs.key()
    inputs.p.subseeds = [12]  # the WebUI's random subseed of a new job
    assert inputs.key() == before
    inputs.p.subseed_strength = 0.3
    with_strength = inputs.key()
    inputs.p.subseeds = [11]
    assert len({before, with_strength, inputs.key()}) == 3


def test_model_vae_settings_and_other_scripts_are_in_the_key(inputs: KeyInputs) -> None:
    host = inputs.host
    before = inputs.key()
    keys = set()
    inputs.p.script_args = ({"enabled": True, "strength": 3.0}, inputs.p.script_args[1])
    assert inputs.key() == before, "FreeCure's own arguments are not a foundation input"
    inputs.p.script_args = (inputs.p.script_args[0], {"image": torch.eye(8)})
    keys.add(inputs.key())
    inputs.p.script_args = (inputs.p.script_args[0], {"image": torch.zeros(8, 8)})
    saved_settings = dict(host.shared.opts.data)
    host.shared.opts.data["CLIP_stop_at_last_layers"] = 7
    keys.add(inputs.key())
    host.shared.opts.data.clear()
    host.shared.opts.data.update(saved_settings)
    host.shared.opts.data["freecure_foundation_cache_mb"] = 1  # our own settings are not
    assert inputs.key() == before
    model = inputs.p.sd_model
    saved_info = getattr(model, "sd_checkpoint_info", None)
    model.sd_checkpoint_info = types.SimpleNamespace(filename="other.safetensors", sha256="0" * 64)
    keys.add(inputs.key())
    model.sd_checkpoint_info = saved_info
    assert inputs.key() == before
    host.module("modules.sd_vae").loaded_vae_file = "other.vae.pt"
    keys.add(inputs.key())
    assert before not in keys and len(keys) == 4


def test_options_other_than_the_cure_stage_are_in_the_key_and_cure_options_are_not(inputs: KeyInputs) -> None:
    names = {f.name for f in dataclasses.fields(Options)}
    assert names >= CURE_ONLY_OPTIONS
    before = inputs.key()
    foundation_inputs = {"attributes": ("hair",), "identity_off": ("lora",), "trigger_words": ("ohwx",),
                         "class_word": "girl", "keep_networks": ("style",), "foundation_prompt": "[PROMPT], photo"}
    assert set(foundation_inputs) == names - CURE_ONLY_OPTIONS
    for name, value in foundation_inputs.items():
        assert inputs.key(options=dataclasses.replace(inputs.options, **{name: value})) != before, name
    cure_changes = {"strength": 2.0, "method": "blend", "layers": "all", "mask_dilation": 4, "step_start": 0.2,
                    "apg": "on", "hires": "both", "debug_images": True, "offload_bank": True,
                    "attribute_strength": (("hair", 1.2),), "attribute_dilation": (("hair", 3),)}
    for name, value in cure_changes.items():
        assert inputs.key(options=dataclasses.replace(inputs.options, **{name: value})) == before, name
