"""Forge's hires fix with other extensions' patches: Forge 2 calls ``process_before_every_sampling`` twice in the
hires pass and resets ``forge_objects`` in between (tests/forge_stub/modules/processing.py); each pass must
sample with exactly the patches the other extensions made for it, with or without a cure."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from webui_checks import CURE, EXTENSION_DIR, run
from webui_host import WebUIHost, installed_host

HIRES_PATCHES = Path(__file__).resolve().parent / "fake_extensions" / "hires_patches"
HIRES = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6}


class PatchProbe:
    """Which of the other extension's patches ran in which pass: (pass, kind, the hook call it was made in);
    ``samplings``: per sampling run (a foundation, a cure or a plain pass), its pass and the patches it ran."""

    def __init__(self) -> None:
        self.calls = 0
        self.is_hires = False
        self.runs: set[tuple[str, str, int]] = set()
        self.samplings: list[tuple[str, set[tuple[str, int]]]] = []

    def on_cfg_denoiser(self, params: Any) -> None:
        self.is_hires = bool(params.denoiser.p.is_hr_pass)
        if params.denoiser.step == 0:  # each sampling run counts its denoiser calls from 0
            self.samplings.append(("hi-res" if self.is_hires else "low-res", set()))

    def seen(self, kind: str, tag: int) -> None:
        self.runs.add(("hi-res" if self.is_hires else "low-res", kind, tag))
        self.samplings[-1][1].add((kind, tag))


@pytest.fixture
def forge() -> Iterator[WebUIHost]:
    with installed_host("forge") as host:
        host.load_scripts(HIRES_PATCHES, EXTENSION_DIR)
        yield host


def patches_run(host: WebUIHost, settings: dict | None) -> tuple[set, Any]:
    probe = probed_run(host, settings)
    return probe.runs, probe.result


def probed_run(host: WebUIHost, settings: dict | None) -> PatchProbe:
    probe = PatchProbe()
    host.shared.fake_patches_probe = probe
    host.script_callbacks.on_cfg_denoiser(probe.on_cfg_denoiser)
    try:
        probe.result = run(host, settings, prompt="a photo of a woman with red hair", **HIRES)
    finally:
        host.script_callbacks.remove_callbacks_for_function(probe.on_cfg_denoiser)
        host.shared.fake_patches_probe = None
    return probe


@pytest.mark.parametrize("hires", ["low-res", "hi-res", "both"])
def test_other_extensions_hires_patches_survive_a_cure(forge: WebUIHost, hires: str) -> None:
    plain, _ = patches_run(forge, None)
    # Without FreeCure: the low-res pass runs the first call's patches, the hires pass the third call's (the
    # one after Forge's reset); the second call's patcher is thrown away by that reset.
    assert plain == {(p, kind, tag) for p, tag in (("low-res", 1), ("hi-res", 3))
                     for kind in ("controlnet", "ip-adapter", "freeu-like", "block-level")}
    cured, result = patches_run(forge, {**CURE, "hires": hires, "debug_images": True})
    assert "cure failed" not in result.infotexts[0] and "bank misses" not in result.infotexts[0]
    captions = [text for text in result.infotexts if text.startswith("FreeCure foundation")]
    assert len(captions) == (2 if hires == "both" else 1), "one foundation per cured pass"
    assert cured == plain, "the foundation and cure passes run the same patches as the plain passes"


@pytest.mark.parametrize("sorting_priority", [10, 20], ids=["before-freecure", "after-freecure"])
def test_the_foundation_runs_the_patches_of_extensions_sorted_before_and_after_freecure(
        tmp_path: Path, sorting_priority: int) -> None:
    """Forge's extensions patch in ``process_before_every_sampling``, each in its turn: one sorted after
    FreeCure (15) has patched only when the host's sampler starts, so the foundation may not sample earlier."""
    late = tmp_path / "zz-patches"
    shutil.copytree(HIRES_PATCHES, late)
    script = late / "scripts" / "fake_hires_patches.py"
    script.write_text(script.read_text().replace("sorting_priority = 10", f"sorting_priority = {sorting_priority}"))
    with installed_host("forge") as host:
        host.load_scripts(late, EXTENSION_DIR)
        plain = probed_run(host, None).samplings
        cured = probed_run(host, {**CURE, "hires": "both"}).samplings
    assert [name for name, _ in plain] == ["low-res", "hi-res"] and all(runs for _, runs in plain)
    foundations_and_cures = [(name, runs) for name, runs in plain for _ in range(2)]
    assert cured == foundations_and_cures, "each pass's foundation and cure run that pass's patches"


def test_the_foundation_conditions_its_prompts_with_the_jobs_distilled_cfg(forge: WebUIHost) -> None:
    """FLUX's guidance rides on the prompts (Forge's ``SdConditioning.distilled_cfg_scale``; the engine falls
    back to 3.5 without it): the foundation's own prompts (the trigger word replaced) must carry the job's
    scale, and the hires foundation the hires scale, as the host's prompts do."""
    model = forge.shared.sd_model
    encode = model.get_learned_conditioning
    seen: list[tuple[tuple[str, ...], Any, Any]] = []

    def recording(prompts: Any) -> Any:
        seen.append((tuple(prompts), getattr(prompts, "width", None), getattr(prompts, "distilled_cfg_scale", None)))
        return encode(prompts)

    model.get_learned_conditioning = recording
    try:
        result = run(forge, {**CURE, "hires": "both"}, prompt="a photo of ohwx woman with red hair",
                     distilled_cfg_scale=2.0, hr_distilled_cfg=5.0, **HIRES)  # fmt: skip
    finally:
        model.get_learned_conditioning = encode
    assert "cure failed" not in result.infotexts[0]
    foundation = {(width, scale) for prompts, width, scale in seen if all("ohwx" not in p for p in prompts)}
    assert foundation == {(64, 2.0), (96, 5.0)}, "a foundation in each pass, each with its pass's scale"
    assert {(width, scale) for _, width, scale in seen} == foundation, "as the host's own prompts"
