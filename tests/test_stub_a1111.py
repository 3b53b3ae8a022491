"""Fidelity of the A1111 1.10 stand-in (tests/webui_stub): what the extension's WebUI layer relies on."""

from __future__ import annotations

import textwrap

import pytest
import torch
from webui_host import installed_host


@pytest.fixture
def a1111_host():
    with installed_host("a1111") as host:
        yield host


PROBE = '''
import modules.scripts as scripts
import gradio as gr

calls = []
fail_in = set()

class Probe(scripts.Script):
    def title(self):
        return "Probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.Checkbox(True, label="on"), gr.Slider(0, 1, value=0.5, label="w"), gr.Textbox("t")]

    def _record(self, name, args, kwargs):
        calls.append((name, args, tuple(sorted(kwargs))))
        if name in fail_in:
            raise RuntimeError("probe failure in " + name)

    def setup(self, p, *args):
        self._record("setup", args, {})

    def before_process(self, p, *args):
        self._record("before_process", args, {})

    def process(self, p, *args):
        self._record("process", args, {})

    def before_process_batch(self, p, *args, **kwargs):
        self._record("before_process_batch", args, kwargs)

    def after_extra_networks_activate(self, p, *args, **kwargs):
        self._record("after_extra_networks_activate", args, kwargs)

    def process_batch(self, p, *args, **kwargs):
        self._record("process_batch", args, kwargs)

    def process_before_every_sampling(self, p, *args, **kwargs):
        self._record("process_before_every_sampling", args, kwargs)

    def before_hr(self, p, *args):
        self._record("before_hr", args, {})

    def post_sample(self, p, ps, *args):
        self._record("post_sample", args, {})

    def postprocess_batch(self, p, *args, **kwargs):
        self._record("postprocess_batch", args, kwargs)

    def postprocess_image(self, p, pp, *args):
        self._record("postprocess_image", args, {})

    def postprocess(self, p, processed, *args):
        self._record("postprocess", args, {})


class Second(scripts.Script):
    def title(self):
        return "Second"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.Number(3)]

    def process(self, p, *args):
        calls.append(("second.process", args, ()))
'''


@pytest.fixture
def probe_host(a1111_host, tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "probe.py").write_text(textwrap.dedent(PROBE))
    a1111_host.load_scripts(tmp_path)
    module = next(d.module for d in a1111_host.scripts.scripts_data if d.script_class.__name__ == "Probe")
    return a1111_host, module


def hook_names(module):
    return [name for name, _, _ in module.calls if not name.startswith("second")]


BATCH_HOOKS = ["before_process_batch", "after_extra_networks_activate", "process_batch",
               "process_before_every_sampling", "post_sample", "postprocess_batch"]


def test_hook_order_of_process_images(probe_host):
    host, module = probe_host
    p = host.txt2img(n_iter=2, batch_size=2)
    host.process(p)
    expected = ["setup", "before_process", "process"]
    for _ in range(2):
        expected += [*BATCH_HOOKS, "postprocess_image", "postprocess_image"]
    assert hook_names(module) == [*expected, "postprocess"]


def test_hires_fires_before_hr_and_a_second_process_before_every_sampling(probe_host):
    host, module = probe_host
    p = host.txt2img(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2)
    res = host.process(p)
    assert hook_names(module) == ["setup", "before_process", "process", "before_process_batch",
                                  "after_extra_networks_activate", "process_batch",
                                  "process_before_every_sampling", "after_extra_networks_activate", "before_hr",
                                  "process_before_every_sampling",
                                  "post_sample", "postprocess_batch", "postprocess_image", "postprocess"]
    assert res.images[0].size == (96, 96)


def test_hooks_get_their_slice_and_the_real_keywords(probe_host):
    host, module = probe_host
    runner = host.runner
    probe, second = host.script("Probe"), host.script("Second")
    xyz = host.script("X/Y/Z plot")
    assert runner.inputs[0].type == "index"  # selectable-script dropdown at index 0
    assert (probe.args_to - probe.args_from, second.args_to - second.args_from) == (3, 1)
    assert xyz.args_from >= max(probe.args_to, second.args_to)  # always-on controls come first
    p = host.txt2img()
    host.set_script_args(p, probe, [False, 0.25, "x"])
    host.set_script_args(p, second, [7])
    host.process(p)
    by_name = {name: (args, kwargs) for name, args, kwargs in module.calls}
    assert by_name["process"][0] == (False, 0.25, "x")
    assert by_name["second.process"][0] == (7,)
    assert by_name["process_batch"][1] == ("batch_number", "prompts", "seeds", "subseeds")
    assert by_name["after_extra_networks_activate"][1] == ("batch_number", "extra_network_data", "prompts",
                                                            "seeds", "subseeds")
    assert by_name["process_before_every_sampling"][1] == ("c", "noise", "uc", "x")
    assert by_name["postprocess_batch"][1] == ("batch_number", "images")


def test_default_script_args_are_the_components_values(probe_host):
    host, _ = probe_host
    probe = host.script("Probe")
    args = host.runner.default_script_args()
    assert args[0] == 0
    assert args[probe.args_from:probe.args_to] == [True, 0.5, "t"]


def test_hook_exceptions_are_reported_and_the_generation_goes_on(probe_host):
    host, module = probe_host
    module.fail_in.update({"process_batch", "process_before_every_sampling", "post_sample"})
    res = host.process(host.txt2img())
    assert len(res.images) == 1
    messages = [m for m, e in host.errors if isinstance(e, RuntimeError)]
    assert [m.split(":")[0] for m in messages] == ["Error running process_batch",
                                                   "Error running process_before_every_sampling",
                                                   "Error running post_sample"]
    assert "postprocess" in hook_names(module)


def test_xyz_grid_is_registered_under_its_file_name_and_runs_cells_on_copies(probe_host):
    host, module = probe_host
    xyz = next(d.module for d in host.scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py")
    seen = []
    option = xyz.AxisOptionTxt2Img("[Test] w", float, lambda p, x, xs: seen.append((p, x, xs)))
    xyz.axis_options.append(option)
    p = host.txt2img()
    results = xyz.run_cells(p, [[(option, "0.5", ["0.5", "1"])], [(option, "1", ["0.5", "1"])]])
    assert [(x, xs) for _, x, xs in seen] == [(0.5, [0.5, 1.0]), (1.0, [0.5, 1.0])]
    assert all(cell_p is not p for cell_p, _, _ in seen)
    assert len(results) == 2 and hook_names(module).count("process") == 2


def record_unet_calls(host):
    """Capture (x, context) of every UNet call and the CFG callbacks' params."""
    calls, denoiser, after = [], [], []
    unet = host.shared.sd_model.model.diffusion_model
    handle = unet.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((args[0].clone(), kwargs["context"].clone())), with_kwargs=True)
    host.script_callbacks.on_cfg_denoiser(denoiser.append)
    host.script_callbacks.on_cfg_after_cfg(lambda prm: after.append(prm.x.clone()))
    return calls, denoiser, after, handle


@pytest.mark.parametrize("mode", ["batched", "chunked", "separate_uncond"])
def test_cfg_row_layout_cond_rows_first_then_uncond(a1111_host, mode):
    host = a1111_host
    host.shared.opts.batch_cond_uncond = mode != "chunked"
    long_prompt = " ".join(["word"] * 80)  # 2 chunks (154 tokens) against a 77-token negative prompt
    prompts = [f"{long_prompt} AND other", "b"] if mode == "separate_uncond" else ["a AND other", "b"]
    calls, denoiser, _, handle = record_unet_calls(host)
    p = host.txt2img(prompt=prompts, negative_prompt=["n1", "n2"], batch_size=2, steps=1)
    host.process(p)
    handle.remove()
    params = denoiser[0]
    # 3 cond rows (image 0 has two AND parts), then 2 uncond rows
    assert params.x.shape[0] == 5
    assert torch.equal(params.x[0], params.x[1]) and torch.equal(params.x[0], params.x[3])
    assert torch.equal(params.x[2], params.x[4])
    sizes = [x.shape[0] for x, _ in calls]
    assert sizes == {"batched": [5], "chunked": [2, 2, 1], "separate_uncond": [3, 2]}[mode]
    c_in = (params.sigma**2 + 1).rsqrt().view(-1, 1, 1, 1)  # the k-diffusion input scaling
    assert torch.allclose(torch.cat([x for x, _ in calls]), params.x * c_in, atol=1e-6)
    if mode == "separate_uncond":  # contexts of different lengths cannot share a call
        assert torch.equal(calls[0][1], params.text_cond) and torch.equal(calls[1][1], params.text_uncond)
    else:
        assert torch.equal(torch.cat([c for _, c in calls]), torch.cat([params.text_cond, params.text_uncond]))


def test_cfg_combine_matches_an_independent_reference(a1111_host):
    host = a1111_host
    outputs = []
    unet = host.shared.sd_model.model.diffusion_model
    handle = unet.register_forward_hook(lambda m, a, out: outputs.append(out.double()))
    _, denoiser, after, handle2 = record_unet_calls(host)
    host.process(host.txt2img(prompt=["a AND b:0.5", "c"], batch_size=2, steps=1, cfg_scale=4.0))
    handle.remove()
    handle2.remove()
    params, eps = denoiser[0], outputs[0]
    x, sigma = params.x.double(), params.sigma.double().view(-1, 1, 1, 1)
    x0 = x - eps * sigma  # eps model: x0 = x + eps * (-sigma)
    cond, uncond = x0[:3], x0[3:]
    reference = torch.stack([uncond[0] + (cond[0] - uncond[0]) * 4.0 + (cond[1] - uncond[0]) * 0.5 * 4.0,
                             uncond[1] + (cond[2] - uncond[1]) * 4.0])
    assert torch.allclose(after[0].double(), reference, atol=1e-5)


def test_interrupt_inside_sampling_returns_last_latent_and_stops(a1111_host):
    host = a1111_host
    steps_seen = []

    def interrupt_after_first(params):
        steps_seen.append(params.denoiser.step)
        host.shared.state.interrupted = True

    host.script_callbacks.on_cfg_denoiser(interrupt_after_first)
    p = host.txt2img(steps=4, n_iter=2)
    res = host.process(p)
    assert steps_seen == [0]  # the second denoiser call raised InterruptedException
    assert len(res.images) == 1  # the second batch was not started
    assert issubclass(host.sd_samplers_common.InterruptedException, BaseException)
    assert not issubclass(host.sd_samplers_common.InterruptedException, Exception)


def test_interrupted_sample_returns_the_preview_latent(a1111_host):
    host = a1111_host
    p = host.txt2img(steps=4)
    p.setup_prompts()
    p.prompts, p.negative_prompts, p.seeds, p.subseeds = p.all_prompts, p.all_negative_prompts, [1], [1]
    p.setup_conds()
    sampler = host.sd_samplers.create_sampler("Euler", p.sd_model)
    host.script_callbacks.on_cfg_after_cfg(lambda prm: setattr(host.shared.state, "interrupted", True))
    x = torch.randn(1, 4, 8, 8)
    out = sampler.sample(p, x, p.c, p.uc, image_conditioning=p.txt2img_image_conditioning(x))
    assert sampler.model_wrap_cfg.step == 1
    assert out is sampler.last_latent


def test_image_rng_first_and_next_follow_each_seed(a1111_host):
    rng, shape = a1111_host.rng, (4, 3, 5)
    gen = [torch.Generator().manual_seed(s) for s in (3, 9)]
    reference = [torch.stack([torch.randn(shape, generator=g) for g in gen]) for _ in range(2)]
    image_rng = rng.ImageRNG(shape, [3, 9])
    assert torch.equal(image_rng.next(), reference[0])
    assert torch.equal(image_rng.next(), reference[1])
    # variation seed at strength 1 is the subseed's noise; ENSD re-seeds the later draws
    a1111_host.shared.opts.eta_noise_seed_delta = 31337
    image_rng = rng.ImageRNG(shape, [3], subseeds=[9], subseed_strength=1.0)
    first = image_rng.next()
    assert torch.allclose(first[0], torch.randn(shape, generator=torch.Generator().manual_seed(9)), atol=1e-6)
    assert torch.equal(image_rng.next()[0], torch.randn(shape, generator=torch.Generator().manual_seed(31340)))


def test_ancestral_noise_comes_from_p_rng(a1111_host):
    host = a1111_host
    draws = []

    class CountingRNG(host.rng.ImageRNG):
        def next(self):
            draws.append(1)
            return super().next()

    p = host.txt2img(sampler_name="Euler a", steps=4)
    results = []
    for _ in range(2):
        p.setup_prompts()
        p.prompts, p.negative_prompts, p.seeds, p.subseeds = p.all_prompts, p.all_negative_prompts, [1], [1]
        p.setup_conds()
        p.rng = CountingRNG((4, 8, 8), [1])
        x = p.rng.next()
        sampler = host.sd_samplers.create_sampler("Euler a", p.sd_model)
        results.append(sampler.sample(p, x, p.c, p.uc, image_conditioning=p.txt2img_image_conditioning(x)))
    assert len(draws) == 2 * 4  # initial noise + one draw per step except the last
    assert torch.equal(results[0], results[1])


def test_heun_calls_the_denoiser_twice_per_step_but_the_last(a1111_host):
    host = a1111_host
    steps = []
    host.script_callbacks.on_cfg_denoiser(lambda prm: steps.append(prm.denoiser.step))
    host.process(host.txt2img(sampler_name="Heun", steps=3))
    assert steps == [0, 1, 2, 3, 4]
    assert host.sd_samplers.find_sampler_config("Heun").total_steps(3) == 6


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lora_changes_unet_and_text_encoder_and_restores_bit_exactly(a1111_host):
    host = a1111_host
    model = host.shared.sd_model
    before = weights(model)
    plain = host.process(host.txt2img(prompt="portrait")).images[0]
    p = host.txt2img(prompt="portrait <lora:alice:0.8>")
    p.setup_prompts()
    p.prompts = p.all_prompts
    p.iteration = 0
    p.seeds = p.subseeds = [1]
    p.parse_extra_network_prompts()
    host.extra_networks.activate(p, p.extra_network_data)
    changed = {k for k, v in weights(model).items() if not torch.equal(v, before[k])}
    assert any(".attn1.to_q." in k for k in changed) and any(".attn2.to_k." in k for k in changed)
    assert "cond_stage_model.wrapped.proj.weight" in changed
    host.extra_networks.activate(p, {})  # what the next generation without LoRA does
    assert all(torch.equal(v, before[k]) for k, v in weights(model).items())
    with_lora = host.process(host.txt2img(prompt="portrait <lora:alice:0.8>")).images[0]
    assert all(torch.equal(v, before[k]) for k, v in weights(model).items())  # deactivate restored
    again = host.process(host.txt2img(prompt="portrait")).images[0]
    assert with_lora.tobytes() != plain.tobytes()
    assert again.tobytes() == plain.tobytes()


@pytest.mark.parametrize(("family", "count", "module"), [("sd1", 16, "ldm"), ("sdxl", 70, "sgm")])
def test_attention_modules_sit_at_ldm_names_and_see_every_call(family, count, module):
    import re

    with installed_host("a1111", family) as host:
        unet = host.shared.sd_model.model.diffusion_model
        cross_attention = host.module(f"{module}.modules.attention").CrossAttention
        pattern = re.compile(r"^(input_blocks\.\d+\.1|middle_block\.1|output_blocks\.\d+\.1)"
                             r"\.transformer_blocks\.\d+\.attn([12])$")
        named = {n: m for n, m in unet.named_modules() if isinstance(m, cross_attention)}
        assert all(pattern.match(n) for n in named)
        assert sum(n.endswith("attn1") for n in named) == count
        assert sum(n.endswith("attn2") for n in named) == count
        seen = []
        def counting(original, name):
            return lambda *args, **kwargs: seen.append(name) or original(*args, **kwargs)

        for name, attn in named.items():
            attn.forward = counting(attn.forward, name)  # a per-instance override, as extensions do
        host.process(host.txt2img(steps=1))
        assert sorted(set(seen)) == sorted(named)
        assert len(seen) == 2 * count  # one batched CFG call


def test_sd1_layout_keys():
    with installed_host("a1111") as host:
        unet = host.shared.sd_model.model.diffusion_model
        keys = {n.rsplit(".transformer_blocks", 1)[0] for n, _ in unet.named_modules() if n.endswith("attn1")}
        assert keys == {f"input_blocks.{i}.1" for i in (1, 2, 4, 5, 7, 8)} | {"middle_block.1"} | {
            f"output_blocks.{i}.1" for i in range(3, 12)}


def test_ldm_attention_computes_what_diffusers_computes():
    from tiny_models import tiny_sd1_unet

    with installed_host("a1111") as host:
        unet = host.shared.sd_model.model.diffusion_model
        reference = tiny_sd1_unet(0)
        x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 500.0]), torch.randn(2, 77, 32)
        with torch.no_grad():
            assert torch.allclose(unet(x, t, context=context),
                                  reference(x, t, encoder_hidden_states=context).sample, atol=1e-5)


def test_job_count_and_hires_doubling(a1111_host):
    host = a1111_host
    state = host.shared.state
    seen = []
    host.script_callbacks.on_cfg_denoiser(lambda prm: seen.append(state.job_count))
    host.process(host.txt2img(n_iter=2, steps=1))
    host.process(host.txt2img(n_iter=2, steps=1, enable_hr=True, hr_second_pass_steps=1))
    assert seen[:2] == [2, 2] and seen[2:] == [4, 4, 4, 4]


def test_prompt_tools(a1111_host):
    host = a1111_host
    stripped, data = host.extra_networks.parse_prompts(["a <lora:bob:0.5> b", "c"])
    assert stripped == ["a  b", "c"] and data["lora"][0].items == ["bob", "0.5"]
    schedules = host.prompt_parser.get_learned_conditioning_prompt_schedules(["a [cat:dog:2] x"], 4)
    assert schedules == [[[2, "a cat x"], [4, "a dog x"]]]  # the real parser (v1.10.1) gives step 2
    chunks, count = host.shared.sd_model.cond_stage_model.tokenize_line("red (hair:1.2) BREAK hat")
    assert [len(c.tokens) for c in chunks] == [77, 77] and count == 76
    hair = host.shared.sd_model.cond_stage_model.tokenize(["hair"])[0]
    assert chunks[0].tokens[2] == hair[0] and chunks[0].multipliers[2] == pytest.approx(1.2)


def test_infotext_quotes_and_parses_back(a1111_host):
    host = a1111_host
    p = host.txt2img(prompt="a, b")
    p.extra_generation_params.update({"FreeCure": "hair, hat: 1", "Plain": 3, "Skipped": None})
    res = host.process(p)
    line = res.infotexts[0].splitlines()[-1]
    assert 'FreeCure: "hair, hat: 1"' in line and "Skipped" not in line
    params = host.infotext_utils.parse_generation_parameters(res.infotexts[0])
    assert params["FreeCure"] == "hair, hat: 1" and params["Plain"] == "3" and params["Size-1"] == "64"
    assert host.module("modules.generation_parameters_copypaste") is host.infotext_utils


def test_gradio_and_input_accordion(a1111_host):
    import gradio as gr

    accordion_cls = a1111_host.ui_components.InputAccordion
    with gr.Blocks(), accordion_cls(False, label="FreeCure") as enabled:
        slider = gr.Slider(0, 2, value=0.5, step=0.1, label="w")
    assert enabled.value is False and slider.parent is enabled.accordion
    assert gr.Dropdown(["a", "b"], value=["a"], multiselect=True).value == ["a"]
    assert gr.update(visible=False) == {"__type__": "update", "visible": False}
    with pytest.raises(TypeError, match="_js"):
        gr.Checkbox(False, _js="x")
