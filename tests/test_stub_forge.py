"""Fidelity of the Forge 2 stand-in (tests/forge_stub), and both stand-ins in one process."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch
from webui_host import HOST_PACKAGES, installed_host

PROBE = '''
import modules.scripts as scripts
from modules.ui_components import InputAccordion

events = []

class Probe(scripts.Script):
    def title(self):
        return "Probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with InputAccordion(False, label="Probe") as enabled:
            pass
        return [enabled]

    def process_before_every_sampling(self, p, *args, **kwargs):
        model = p.sd_model
        fresh = model.forge_objects.unet is model.forge_objects_after_applying_lora.unet
        events.append(("pbes", fresh, tuple(sorted(kwargs))))
        model.forge_objects.unet = model.forge_objects.unet.clone()  # a patched clone, as extensions do

    def before_hr(self, p, *args):
        events.append(("before_hr",))

    def postprocess(self, p, processed, *args):
        p.extra_result_images.append("debug")
'''


@pytest.fixture
def forge_host():
    with installed_host("forge") as host:
        yield host


def test_process_before_every_sampling_and_forge_objects_reset(forge_host, tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "probe.py").write_text(textwrap.dedent(PROBE))
    forge_host.load_scripts(tmp_path)
    module = next(d.module for d in forge_host.scripts.scripts_data if d.script_class.__name__ == "Probe")
    res = forge_host.process(forge_host.txt2img(enable_hr=True, hr_scale=1.5, hr_cfg=5.0))
    assert [e[:2] for e in module.events] == [("pbes", True), ("before_hr",), ("pbes", False), ("pbes", True)]
    assert module.events[0][2] == ("c", "noise", "uc", "x")
    assert res.extra_images == ["debug"] and len(res.images) == 1
    assert forge_host.errors == []


def test_input_accordion_is_a_function_returning_a_checkbox(forge_host):
    import gradio as gr

    ui_components = forge_host.ui_components
    assert not isinstance(ui_components.InputAccordion, type)
    with gr.Blocks(), ui_components.InputAccordion(True, label="FreeCure") as enabled:
        slider = gr.Slider(0, 1, value=0.5)
    assert isinstance(enabled, gr.Checkbox) and enabled.value is True and slider.parent is enabled.accordion


@pytest.mark.parametrize(("family", "count"), [("sd1", 16), ("sdxl", 70)])
def test_replace_patches_see_every_block_and_plain_attention_is_bit_identical(family, count):
    with installed_host("forge", family) as host:
        attention_function = host.module("backend.attention").attention_function
        plain = host.process(host.txt2img(batch_size=2, steps=2)).images
        seen = []

        def patch(q, k, v, extra_options):
            seen.append(((*extra_options["block"], extra_options["block_index"]), extra_options))
            return attention_function(q, k, v, extra_options["n_heads"])

        # what sampling starts from (processing resets forge_objects to it) gets the patched clone
        objects = host.shared.sd_model.forge_objects_after_applying_lora
        unet = objects.unet.clone()
        unet.set_model_replace_all(patch, "attn1")
        objects.unet = unet
        patched = host.process(host.txt2img(batch_size=2, steps=2)).images
        assert len({key for key, _ in seen}) == count
        assert len(seen) == 2 * count  # 2 steps, one batched [uncond, cond] call each
        options = seen[0][1]
        assert options["cond_or_uncond"] == [1, 0]
        assert (options["uncond_indices"], options["cond_indices"]) == ([0, 1], [2, 3])
        assert options["original_shape"] == [4, 4, 8, 8]
        assert {"n_heads", "dim_head", "sigmas", "cond_mark", "transformer_index"} <= set(options)
        assert [a.tobytes() for a in plain] == [b.tobytes() for b in patched]


def test_block_level_replace_key_and_pre_patches(forge_host):
    unet = forge_host.shared.sd_model.forge_objects.unet.clone()
    attention_function = forge_host.module("backend.attention").attention_function
    calls = []

    def replace(q, k, v, extra_options):
        calls.append(("replace", extra_options["block"], extra_options["block_index"]))
        return attention_function(q, k, v, extra_options["n_heads"])

    def pre(n, context, value, extra_options):
        calls.append(("attn2_patch", extra_options["block"], extra_options["block_index"]))
        return n, context, value

    unet.set_model_attn1_replace(replace, "output", 3)  # (block_name, number): every transformer there
    unet.set_model_attn2_patch(pre)
    x = torch.randn(1, 4, 8, 8)
    context = torch.randn(1, 77, 32)
    sigma = torch.tensor([1.0])
    options = {**unet.model_options["transformer_options"], "cond_or_uncond": [0]}
    unet.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options)
    assert calls.count(("replace", ("output", 3), 0)) == 1
    assert sum(c[0] == "attn2_patch" for c in calls) == 16


def test_cfg1_skips_uncond_and_callbacks_follow_forge(forge_host):
    host = forge_host
    denoiser, denoised, calls = [], [], []
    host.script_callbacks.on_cfg_denoiser(denoiser.append)
    host.script_callbacks.on_cfg_denoised(denoised.append)
    original = host.shared.sd_model.forge_objects.unet.model.apply_model

    def spy(x, t, **kwargs):
        calls.append((x.shape[0], kwargs["transformer_options"]["cond_or_uncond"]))
        return original(x, t, **kwargs)

    host.shared.sd_model.forge_objects.unet.model.apply_model = spy
    p = host.txt2img(cfg_scale=1.0, batch_size=2, steps=1)
    host.process(p)
    assert p.uc is None and calls == [(2, [0])]
    assert denoiser[0].x.shape[0] == 2  # unbatched: one row per image
    assert denoised == []  # Forge never calls on_cfg_denoised


def test_lora_through_the_patcher_leaves_the_original_untouched(forge_host):
    host = forge_host
    model = host.shared.sd_model
    plain = host.process(host.txt2img(prompt="portrait")).images[0]
    with_lora = host.process(host.txt2img(prompt="portrait <lora:alice:0.8>")).images[0]
    assert model.forge_objects_after_applying_lora.unet.lora_patches
    assert not model.forge_objects_original.unet.lora_patches
    again = host.process(host.txt2img(prompt="portrait")).images[0]
    assert with_lora.tobytes() != plain.tobytes() and again.tobytes() == plain.tobytes()


def test_both_stand_ins_in_one_process_leave_no_trace():
    before = {n for n in sys.modules if n.split(".")[0] in HOST_PACKAGES}
    for kind in ("a1111", "forge", "a1111"):
        with installed_host(kind) as host:
            processing = host.processing
            assert processing.__file__.startswith(str(host.root))
            if kind == "forge":
                with pytest.raises(ImportError):
                    importlib.import_module("ldm.modules.attention")
                assert hasattr(host.shared.sd_model, "forge_objects")
            else:
                assert host.module("ldm.modules.attention").CrossAttention is not None
            host.process(host.txt2img(steps=1))
        assert {n for n in sys.modules if n.split(".")[0] in HOST_PACKAGES} == before
        assert not any("webui_stub" in p or "forge_stub" in p for p in sys.path)


def test_weighted_conditions_zip_the_images_sub_prompts(forge_host):
    """Expected values from running Forge 2's ``backend/sampling/condition.py`` (dfdcbab6)."""
    from backend.sampling.condition import compile_weighted_conditions

    cond = torch.arange(5.0).view(5, 1, 1).repeat(1, 2, 3)
    entries = compile_weighted_conditions(cond, [[(0, 1.0), (1, 0.5)], [(2, 0.8)], [(3, 1.0), (4, 0.3)]])
    assert [(e["cross_attn"][:, 0, 0].tolist(), e["strength"]) for e in entries] == [([0.0, 2.0, 3.0], 1.0)]
    entries = compile_weighted_conditions(cond, [[(0, 1.0), (1, 0.5)], [(2, 0.8), (3, 0.6)]])
    assert [(e["cross_attn"][:, 0, 0].tolist(), e["strength"]) for e in entries] == \
        [([0.0, 2.0], 0.8), ([1.0, 3.0], 0.6)]
