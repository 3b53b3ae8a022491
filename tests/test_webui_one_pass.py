"""One-pass mode in WebUI jobs (both stand-ins): the foundation rows sample in the job's own sampler call, so a
job makes one sampling; where the rows cannot be switched per row (a LoRA, an adapter, a noise the host draws
per seed of the batch, hires and img2img passes) the job runs the exact passes and says why."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from webui_checks import CURE, CallProbe, image_tensor, module_state, run
from webui_host import WebUIHost

STEPS = 4
NO_IDENTITY = "a photo of a woman with red hair"  # nothing to switch off: the foundation is the plain generation
TRIGGER_ONLY = "a photo of ohwx woman with red hair"  # identity through the prompt only
ONE_PASS = {**CURE, "passes": "one-pass", "one_pass_masks_at": 0.25}
ONE_PASS_NOTE = "one pass: masks from the foundation rows over the first 0.25 of the schedule"


def counted(host: WebUIHost, settings: dict | None, **fields: Any) -> tuple[Any, list[int]]:
    """A job and the batch size of each of its denoiser calls."""
    rows: list[int] = []

    def count(params: Any) -> None:
        rows.append(params.x.shape[0])

    host.script_callbacks.on_cfg_denoiser(count)
    try:
        return run(host, settings, **fields), rows
    finally:
        host.script_callbacks.remove_callbacks_for_function(count)


def close_images(a: Any, b: Any) -> bool:
    """Equal up to one level of 8-bit rounding: the doubled batch may round its kernels differently."""
    return int((image_tensor(a).int() - image_tensor(b).int()).abs().max()) <= 1


@pytest.mark.parametrize(("sampler", "cfg"), [("Euler", 5.0), ("Euler a", 5.0), ("Euler", 1.0)])
def test_an_identity_switch_that_changes_nothing_gives_the_plain_image_in_one_sampling(
    webui: WebUIHost, sampler: str, cfg: float
) -> None:
    """CFG 1: Forge samples without unconditional conditioning (``p.uc`` is None), the batch too."""
    plain, plain_rows = counted(webui, None, prompt=NO_IDENTITY, sampler_name=sampler, cfg_scale=cfg)
    result, rows = counted(webui, {**ONE_PASS, "method": "blend", "trigger_words": ""}, prompt=NO_IDENTITY,
                           sampler_name=sampler, cfg_scale=cfg)
    assert ONE_PASS_NOTE in result.infotexts[0]
    assert len(rows) == len(plain_rows) == STEPS  # one sampling ...
    assert rows == [2 * r for r in plain_rows]  # ... of the personalized and the foundation rows together
    assert close_images(result.images[0], plain.images[0])


def test_a_trigger_word_identity_is_cured_in_one_pass(webui: WebUIHost) -> None:
    plain = run(webui, None, prompt=TRIGGER_ONLY)
    result, rows = counted(webui, {**ONE_PASS, "method": "fasa", "strength": 3.0}, prompt=TRIGGER_ONLY)
    assert ONE_PASS_NOTE in result.infotexts[0]
    assert len(rows) == STEPS
    assert not close_images(result.images[0], plain.images[0])
    assert "failed" not in result.infotexts[0]
    assert run(webui, None, prompt=TRIGGER_ONLY).images[0].tobytes() == plain.images[0].tobytes()


def test_a_lora_identity_runs_the_exact_passes_on_forge_and_says_why(webui: WebUIHost) -> None:
    if webui.kind == "a1111":
        pytest.skip("A1111: the LoRA is switched per row")
    fallback, rows = counted(webui, ONE_PASS)
    exact, exact_rows = counted(webui, {**CURE, "passes": "exact"})  # reuses the fallback's foundation
    assert len(rows) == 2 * STEPS and len(exact_rows) == STEPS
    assert "one-pass mode unavailable (lora:ohwx acts on the whole batch, not per row): exact passes" \
        in fallback.infotexts[0]
    assert torch.equal(image_tensor(fallback.images[0]), image_tensor(exact.images[0]))


def test_hires_passes_run_exact(webui: WebUIHost) -> None:
    result = run(webui, {**ONE_PASS, "hires": "hi-res", "trigger_words": ""}, prompt=NO_IDENTITY,
                 enable_hr=True, hr_scale=2, denoising_strength=0.5)
    assert "one-pass mode unavailable (it cures the first pass of txt2img only): exact passes" in result.infotexts[0]


def test_nothing_stays_behind_a_one_pass_job(webui: WebUIHost) -> None:
    before = module_state(webui)
    plain = run(webui, None, prompt=TRIGGER_ONLY)
    run(webui, ONE_PASS, prompt=TRIGGER_ONLY)
    assert module_state(webui) == before
    assert run(webui, None, prompt=TRIGGER_ONLY).images[0].tobytes() == plain.images[0].tobytes()


def test_a_one_pass_cure_that_fails_gives_the_uncured_image(webui: WebUIHost, monkeypatch) -> None:
    from freecure.pipeline import CureSession

    before = module_state(webui)
    plain = run(webui, None, prompt=TRIGGER_ONLY)

    def broken(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("parser out of memory")

    monkeypatch.setattr(CureSession, "build_masks", broken)
    result = run(webui, ONE_PASS, prompt=TRIGGER_ONLY)
    assert "cure failed (CureError: one-pass masks failed (RuntimeError: parser out of memory)); the image is" \
        " uncured" in result.infotexts[0]
    assert result.images[0].tobytes() == plain.images[0].tobytes()
    assert module_state(webui) == before


def test_a_style_adapter_unit_of_controlnet_runs_the_exact_passes_on_a1111(webui: WebUIHost) -> None:
    """sd-webui-controlnet sets its units up for the job's batch: not for the doubled one."""
    with CallProbe(webui, ("style",)).installed():
        result = run(webui, ONE_PASS, prompt=TRIGGER_ONLY)
    if webui.kind == "a1111":
        assert "one-pass mode unavailable (ControlNet's units are set up for the job's own batch): exact passes" \
            in result.infotexts[0]
    else:  # Forge's IP-Adapter patches the attention of every row alike, as in the exact passes
        assert ONE_PASS_NOTE in result.infotexts[0]


class _NoControl:
    """A ControlNet in Forge's linked list (``backend/patcher/controlnet.py``'s interface) that adds nothing."""

    previous_controlnet = None

    def set_previous_controlnet(self, previous: Any) -> None:
        self.previous_controlnet = previous

    def get_control(self, x: torch.Tensor, t: torch.Tensor, cond: dict, batched_number: int) -> None:
        return None

    def get_models(self) -> list:
        return []


def test_a_forge_controlnet_runs_the_exact_passes(webui: WebUIHost) -> None:
    if webui.kind != "forge":
        pytest.skip("Forge's ControlNet patches the UNet patcher")
    patcher = webui.shared.sd_model.forge_objects_original.unet
    patcher.add_patched_controlnet(_NoControl())
    try:
        result = run(webui, ONE_PASS, prompt=TRIGGER_ONLY)
    finally:
        patcher.controlnet_linked_list = None
    assert "one-pass mode unavailable (ControlNet's units are set up for the job's own batch): exact passes" \
        in result.infotexts[0]


def foundation_image(result: Any) -> Any:
    return next(image for image, caption in zip(result.images, result.infotexts, strict=True)
                if caption.startswith("FreeCure foundation (identity off), image 0"))


def forward_hooks(webui: WebUIHost) -> int:
    unet = webui.shared.sd_model.model.diffusion_model
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules())


def test_a1111_switches_the_lora_off_on_the_foundation_rows_only(webui: WebUIHost) -> None:
    """The Lora extension's networks stay merged; the foundation rows get each module's delta taken off (and
    their prompts are encoded without the LoRA), so they are the exact mode's foundation: the identity-off
    generation of the foundation prompt."""
    if webui.kind == "forge":
        pytest.skip("Forge merges its networks into the patcher for the whole batch")
    hooks_before = forward_hooks(webui)
    exact, exact_rows = counted(webui, {**CURE, "debug_images": True})
    one, rows = counted(webui, {**ONE_PASS, "debug_images": True, "strength": 3.0})
    assert ONE_PASS_NOTE in one.infotexts[0] and "unavailable" not in one.infotexts[0]
    assert len(rows) == STEPS and len(exact_rows) == 2 * STEPS
    assert close_images(foundation_image(one), foundation_image(exact))
    assert not close_images(foundation_image(one), one.images[0])  # the LoRA is on in the personalized rows
    assert forward_hooks(webui) == hooks_before
    # the personalized rows keep the LoRA: the cure of a prompt whose foundation is itself is the plain image
    plain = run(webui, None)
    null, _ = counted(webui, {**ONE_PASS, "method": "blend", "identity_off": "embedding", "trigger_words": ""})
    assert close_images(null.images[0], plain.images[0])
