"""Forge's hires fix with other extensions' patches: Forge 2 calls ``process_before_every_sampling`` twice in the
hires pass and resets ``forge_objects`` in between (tests/forge_stub/modules/processing.py); each pass must
sample with exactly the patches the other extensions made for it, with or without a cure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from webui_checks import CURE, EXTENSION_DIR, run
from webui_host import WebUIHost, installed_host

HIRES_PATCHES = Path(__file__).resolve().parent / "fake_extensions" / "hires_patches"
HIRES = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "denoising_strength": 0.6}


class PatchProbe:
    """Which of the other extension's patches ran in which pass: (pass, kind, the hook call it was made in)."""

    def __init__(self) -> None:
        self.calls = 0
        self.is_hires = False
        self.runs: set[tuple[str, str, int]] = set()

    def on_cfg_denoiser(self, params: Any) -> None:
        self.is_hires = bool(params.denoiser.p.is_hr_pass)

    def seen(self, kind: str, tag: int) -> None:
        self.runs.add(("hi-res" if self.is_hires else "low-res", kind, tag))


@pytest.fixture
def forge() -> Iterator[WebUIHost]:
    with installed_host("forge") as host:
        host.load_scripts(HIRES_PATCHES, EXTENSION_DIR)
        yield host


def patches_run(host: WebUIHost, settings: dict | None) -> tuple[set, Any]:
    probe = PatchProbe()
    host.shared.fake_patches_probe = probe
    host.script_callbacks.on_cfg_denoiser(probe.on_cfg_denoiser)
    try:
        result = run(host, settings, prompt="a photo of a woman with red hair", **HIRES)
    finally:
        host.script_callbacks.remove_callbacks_for_function(probe.on_cfg_denoiser)
        host.shared.fake_patches_probe = None
    return probe.runs, result


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
