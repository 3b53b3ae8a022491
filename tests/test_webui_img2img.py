"""FreeCure in the img2img tab, on both stand-ins: img2img and inpaint ("Only masked" crops included) as
``StableDiffusionProcessingImg2Img`` samples them (tests/webui_stub/modules/processing.py, mirroring A1111
1.10.1 82a973c0 and Forge 2 dfdcbab6). Properties that hold exactly on random weights: the foundation pass is
the plain identity-free img2img pass bit for bit, a cure whose foundation equals the personalized pass changes
nothing, the inpaint mask bounds the cure, and nothing is left behind."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from webui_checks import (
    CURE,
    EXTENSION_DIR,
    PROMPT,
    box_mask,
    freecure,
    image_tensor,
    img2img_job,
    init_image,
    keep_samples,
    module_state,
    run,
    run_img2img,
)
from webui_host import WebUIHost, installed_host

from freecure.masks import region_on_image
from freecure.options import Options
from freecure.webui import api
from freecure.webui.controller import STATE_ATTR
from freecure.webui.controls import options_from_script_args

INIT = init_image()
MASK = box_mask(INIT.size, (8, 16, 56, 56))  # most of the image: the attention masks reach into it
# Inpaint fields: the original image under the mask ("Masked content: original"), a sharp mask edge, so that
# the pixels outside it are exactly the ones the overlay keeps.
INPAINT = {"mask": MASK, "inpainting_fill": 1, "inpaint_full_res": False, "mask_blur": 0}
ONLY_MASKED = {**INPAINT, "inpaint_full_res": True, "inpaint_full_res_padding": 4}
LAYOUTS = {"img2img": {}, "inpaint": INPAINT, "only masked": ONLY_MASKED}
# A soft latent mask: the sampler's last step and the blend after sampling no longer agree outside it.
UNROUNDED = {**INPAINT, "mask_blur": 4, "mask_round": False}
PLAIN_PROMPT = "a photo of a woman with red hair"  # nothing for the identity switch to switch off
# Noise blending toward a foundation that equals the personalized pass changes nothing, bit for bit.
NO_OP_BLEND = {"enabled": True, "method": "blend", "blend_weight": 0.9, "blend_start": 0.0, "attributes": "hair",
               "mask_source": "attention", "mask_dilation": 24}


def session_of(p: Any) -> Any:
    return getattr(p, STATE_ATTR).session


# -- UI, X/Y/Z, infotext ------------------------------------------------------------------------------------

def test_controls_axes_and_paste_in_the_img2img_tab(webui: WebUIHost) -> None:
    txt2img, img2img = freecure(webui), freecure(webui, "img2img")
    assert img2img in webui.scripts.scripts_img2img.alwayson_scripts
    assert img2img.show(True) is webui.scripts.AlwaysVisible
    ids = {tab: [c.elem_id for c in script.controls] for tab, script in (("txt2img", txt2img), ("img2img", img2img))}
    assert all(i.startswith("script_img2img_freecure_") for i in ids["img2img"]), ids["img2img"]
    assert all(i.startswith("script_txt2img_freecure_") for i in ids["txt2img"]), ids["txt2img"]
    assert len(set(ids["img2img"])) == len(ids["img2img"])

    xyz = next(s for s in webui.scripts.scripts_img2img.alwayson_scripts + webui.scripts.scripts_img2img.scripts
               if s.title() == "X/Y/Z plot")
    assert "[FreeCure] Strength" in [option.label for option in xyz.current_axis_options]

    settings = {**CURE, "method": "blend", "blend_weight": 0.6, "apg": "off"}
    result = run_img2img(webui, settings, INIT, **INPAINT)
    params = webui.infotext_utils.parse_generation_parameters(result.infotexts[0])
    pasted = [reader(params) for _component, reader in img2img.infotext_fields]
    assert options_from_script_args(tuple(pasted)) == Options.from_dict(settings)


# -- the foundation pass ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", [*LAYOUTS, "unrounded mask"])
def test_foundation_is_the_plain_img2img_without_identity(webui: WebUIHost, layout: str) -> None:
    """Same init latent, noise, strength, sampler, schedule and inpaint mask handling, LoRA and trigger word
    off: the foundation latents are those of the plain img2img job with the foundation prompt."""
    fields = LAYOUTS.get(layout, UNROUNDED)
    p = img2img_job(webui, CURE, INIT, **fields)
    webui.process(p)
    session = session_of(p)
    assert session.foundation_latents is not None
    foundation_prompt = session.foundation_branch.prompts[0]
    assert "ohwx" not in foundation_prompt and "<lora" not in foundation_prompt

    plain = img2img_job(webui, None, INIT, prompt=foundation_prompt, **fields)
    samples = keep_samples(plain)
    webui.process(plain)
    assert torch.equal(session.foundation_latents, samples[0])
    if layout != "img2img":
        # Outside the inpaint mask the foundation is the init latent, as in the plain job.
        outside = plain.mask == 1
        assert torch.equal(session.foundation_latents[0][outside], plain.init_latent[0][outside])


def test_foundation_gets_the_image_conditioning_of_the_init_images(webui: WebUIHost) -> None:
    """What an inpainting model reads besides the prompt (``p.image_conditioning``: the masked init image and
    the mask) reaches every call of the foundation pass as it reaches the main pass. The stand-in models have
    no inpainting variant, so the job's conditioning is made distinguishable from txt2img's dummy here."""
    p = img2img_job(webui, CURE, INIT, **INPAINT)
    marked = torch.randn(1, 5, 1, 1, generator=torch.Generator().manual_seed(3))
    p.img2img_image_conditioning = lambda *_args, **_kwargs: marked.clone()
    seen: list[torch.Tensor] = []

    def record(params: Any) -> None:
        seen.append(params.image_cond.clone())

    webui.script_callbacks.on_cfg_denoiser(record)
    try:
        webui.process(p)
    finally:
        webui.script_callbacks.remove_callbacks_for_function(record)
    assert len(seen) == 2 * 3  # foundation and main pass, int(0.6 * 4) + 1 steps each
    for image_cond in seen:
        assert torch.equal(image_cond[-1:], marked), "the init images' conditioning in every call"


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_an_identity_switch_that_changes_nothing_gives_the_plain_image(webui: WebUIHost, layout: str,
                                                                       strength: float) -> None:
    fields = {**LAYOUTS[layout], "denoising_strength": strength, "prompt": PLAIN_PROMPT}
    if layout == "inpaint":
        fields["batch_size"] = 2
    if layout == "img2img":
        fields["n_iter"] = 2  # batch count: a foundation per batch
    plain = run_img2img(webui, None, INIT, **fields)
    p = img2img_job(webui, NO_OP_BLEND, INIT, **fields)
    cured = webui.process(p)
    session = session_of(p)  # the last batch's
    assert session.foundation_latents is not None and all(m.union.any() for m in session.masks), \
        "the foundation ran and every image has a mask to blend in"
    assert len(cured.images) == len(plain.images) == fields.get("batch_size", 1) * fields.get("n_iter", 1)
    for cured_image, plain_image in zip(cured.images, plain.images, strict=True):
        assert torch.equal(image_tensor(cured_image), image_tensor(plain_image))
    assert webui.errors == []


# -- the inpaint mask ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["inpaint", "only masked"])
def test_inpaint_cure_stays_inside_the_inpaint_mask(webui: WebUIHost, layout: str) -> None:
    fields = {**LAYOUTS[layout], "mask": box_mask(INIT.size, (16, 8, 48, 40))}
    plain_p = img2img_job(webui, None, INIT, **fields)
    plain = webui.process(plain_p)
    p = img2img_job(webui, {**CURE, "mask_dilation": 24}, INIT, **fields)
    cured_samples = keep_samples(p)
    cured = webui.process(p)
    session = session_of(p)
    region = region_on_image(p.nmask[0], (p.height, p.width))
    union = session.masks[0].union
    assert union.any() and not union[~region].any(), "cure masks are cut to the inpaint mask"
    assert not torch.equal(image_tensor(cured.images[0]), image_tensor(plain.images[0])), "the cure acted"
    outside = np.asarray(plain_p.mask_for_overlay.convert("L")) == 0
    assert outside.any()
    assert np.array_equal(np.asarray(cured.images[0])[outside], np.asarray(plain.images[0])[outside])
    kept = p.mask.bool()
    assert torch.equal(cured_samples[0][0][kept], p.init_latent[0][kept]), "the init latent outside the mask"


def test_only_masked_crop_masks_and_token_grids_follow_the_crop(webui: WebUIHost) -> None:
    """A 96x96 image inpainted "Only masked" at 64x64: the foundation, its attention maps and the masks are on
    the crop, and only the crop comes back changed."""
    image = init_image(96, 96, seed=1)
    mask = box_mask(image.size, (52, 40, 84, 72))
    fields = {**ONLY_MASKED, "mask": mask, "width": 64, "height": 64, "inpaint_full_res_padding": 8}
    p = img2img_job(webui, {**CURE, "mask_dilation": 24, "debug_images": True}, image, **fields)
    result = webui.process(p)
    x, y, w, h = p.paste_to
    assert (x, y, w, h) != (0, 0, 96, 96) and w == h, "an aspect-preserving crop around the mask"
    session = session_of(p)
    assert tuple(session.foundation_images.shape[-2:]) == (64, 64), "the foundation samples the crop"
    assert {tuple(m.shape[-2:]) for m in session.maps.values()} <= {(8, 8), (4, 4), (2, 2)}, "crop token grids"
    union = session.masks[0].union
    assert union.shape == (64, 64) and union.any()
    assert not union[~region_on_image(p.nmask[0], (64, 64))].any()
    assert result.images[0].size == image.size
    outside = np.ones((96, 96), dtype=bool)
    outside[y:y + h, x:x + w] = False
    assert np.array_equal(np.asarray(result.images[0])[outside], np.asarray(image)[outside])


def test_an_empty_inpaint_mask_gives_the_plain_image(webui: WebUIHost) -> None:
    """Nothing to inpaint, nothing to cure: the personalized img2img image as without FreeCure."""
    fields = {**INPAINT, "mask": box_mask(INIT.size, (0, 0, 0, 0))}
    plain = run_img2img(webui, None, INIT, **fields)
    cured = run_img2img(webui, {**CURE, "mask_dilation": 24}, INIT, **fields)
    assert torch.equal(image_tensor(cured.images[0]), image_tensor(plain.images[0]))
    assert "every mask is empty" in cured.infotexts[0]


@pytest.mark.parametrize("hires", ["hi-res", "both"])
def test_the_one_img2img_pass_is_cured_whatever_the_hires_setting(webui: WebUIHost, hires: str) -> None:
    p = img2img_job(webui, {**CURE, "hires": hires}, INIT)
    result = webui.process(p)
    assert session_of(p).foundation_latents is not None
    assert "img2img has no hires pass" in result.infotexts[0]


def test_soft_inpainting_is_refused_with_a_note() -> None:
    from pathlib import Path

    soft = Path(__file__).resolve().parent / "fake_extensions" / "soft_inpainting"
    with installed_host("a1111") as webui:
        webui.load_scripts(soft, EXTENSION_DIR)
        runner = webui.scripts.scripts_img2img
        soft_script = runner.title_map["soft inpainting"]

        def soft_job(settings: dict | None) -> Any:
            p = img2img_job(webui, settings, INIT, **{**INPAINT, "mask_blur": 4})
            webui.set_script_args(p, soft_script, [True])
            return webui.process(p)

        plain, cured = soft_job(None), soft_job(CURE)
        assert "soft inpainting is on" in cured.infotexts[0]
        assert torch.equal(image_tensor(cured.images[0]), image_tensor(plain.images[0]))


# -- APG ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["img2img", "inpaint"])
def test_apg_inverts_within_the_img2img_schedule(webui: WebUIHost, layout: str) -> None:
    """img2img samples the last t_enc steps of the schedule; APG (g = 1) inverts and regenerates over those
    and no higher noise level, so it never undoes more than the denoising strength allowed."""
    sigmas: list[float] = []

    def record(params: Any) -> None:
        sigmas.append(round(float(params.sigma.flatten()[-1]), 5))

    webui.script_callbacks.on_cfg_denoiser(record)
    try:
        settings = {"enabled": True, "apg": "on", "apg_strength": 1.0}
        result = run_img2img(webui, settings, INIT, prompt="a photo of a woman, smiling", denoising_strength=0.5,
                             **LAYOUTS[layout])
    finally:
        webui.script_callbacks.remove_callbacks_for_function(record)
    assert "APG failed" not in result.infotexts[0]
    main = sigmas[:3]  # int(0.5 * 4) + 1 steps, no foundation (no regional attribute)
    apg = sigmas[3:]
    assert len(apg) > 0 and set(apg) == set(main), (main, apg)


# -- residue and the API -------------------------------------------------------------------------------------

def test_nothing_is_left_after_img2img_and_inpaint_cures(webui: WebUIHost) -> None:
    def plain_jobs() -> list[torch.Tensor]:
        return [image_tensor(run(webui, None).images[0]),
                image_tensor(run_img2img(webui, None, INIT).images[0]),
                image_tensor(run_img2img(webui, None, INIT, **INPAINT).images[0])]

    before, state = plain_jobs(), module_state(webui)
    run_img2img(webui, {**CURE, "debug_images": True}, INIT)
    run_img2img(webui, {**CURE, "method": "blend"}, INIT, **ONLY_MASKED)
    assert module_state(webui) == state
    for image, again in zip(before, plain_jobs(), strict=True):
        assert torch.equal(image, again)
    assert webui.errors == []


@pytest.fixture
def img2img_api(webui: WebUIHost) -> TestClient:
    """``/sdapi/v1/img2img`` as the WebUI's API runs it: ``alwayson_scripts`` args into the img2img runner's
    script args, one job per request (the init image and mask as objects here, not base64)."""
    app = FastAPI()
    app.state.infotexts = []

    @app.post("/sdapi/v1/img2img")
    async def img2img(request: Request) -> dict:
        payload = json.loads(await request.body())
        args = payload.get("alwayson_scripts", {}).get("FreeCure", {}).get("args", [])
        fields = {**INPAINT, "prompt": payload["prompt"], "denoising_strength": payload["denoising_strength"]}
        p = img2img_job(webui, None, INIT, **fields)
        script = freecure(webui, "img2img")
        webui.set_script_args(p, script, list(args) + list(p.script_args[script.args_from + len(args):script.args_to]))
        result = webui.process(p)
        app.state.infotexts.append(result.infotexts[0])
        return {"info": result.infotexts[0]}

    api.install(app)
    return TestClient(app)


@pytest.mark.parametrize(("args", "field"), [([{"enabled": True, "strength": "strong"}], "strength"),
                                             ([True, "paint"], "method"),
                                             ([{"enabled": True, "mask_dilation": -3}], "mask_dilation")])
def test_bad_settings_are_refused_through_the_img2img_api(img2img_api: TestClient, args: list, field: str) -> None:
    payload = {"prompt": PROMPT, "denoising_strength": 0.6, "alwayson_scripts": {"FreeCure": {"args": args}}}
    response = img2img_api.post("/sdapi/v1/img2img", content=json.dumps(payload))
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert img2img_api.app.state.infotexts == [], "the WebUI never ran the job"
    good = {**payload, "alwayson_scripts": {"FreeCure": {"args": [CURE]}}}
    response = img2img_api.post("/sdapi/v1/img2img", content=json.dumps(good))
    assert response.status_code == 200
    assert "FreeCure identity off" in response.json()["info"]
