"""FreeCure in ADetailer's face passes, against a stand-in of ADetailer's real flow
(``tests/fake_extensions/adetailer``: Bing-su/adetailer ``scripts/!adetailer.py``): listed in ADetailer's
"Script names to apply" (``ad_script_names``), FreeCure cures each face pass with the ADetailer prompt and the
job's X/Y/Z overrides, once; not listed, ADetailer's copies of the job (``postprocess`` with an empty result,
``process`` after the batch) start nothing and take nothing from the job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from webui_checks import CURE, EXTENSION_DIR, PROMPT, freecure, image_tensor
from webui_host import WebUIHost, installed_host

from freecure.webui.xyz import OVERRIDES_ATTR

ADETAILER = Path(__file__).resolve().parent / "fake_extensions" / "adetailer"
FACES = [(2, 2, 62, 44), (6, 20, 58, 62)]  # large: on random weights the attention masks fall anywhere


def unet_of(webui: WebUIHost) -> torch.nn.Module:
    model = webui.shared.sd_model
    return model.model.diffusion_model if webui.kind == "a1111" else model.forge_objects.unet.model.diffusion_model


@pytest.fixture(params=["a1111", "forge"])
def webui(request: pytest.FixtureRequest) -> Iterator[WebUIHost]:
    with installed_host(request.param) as host:
        host.load_scripts(ADETAILER, EXTENSION_DIR)
        host.shared.opts.data["freecure_foundation_cache_mb"] = 0  # every job samples its own foundations
        host.shared.fake_adetailer_faces = FACES
        yield host


class ForwardCount:
    def __init__(self, webui: WebUIHost) -> None:
        self.calls = 0
        self.handle = unet_of(webui).register_forward_pre_hook(self.count)

    def count(self, module: Any, args: Any) -> None:
        self.calls += 1


def job(webui: WebUIHost, *, cure: dict | None, adetailer: dict | None, listed: bool,
        overrides: dict | None = None, **fields: Any) -> tuple[Any, int]:
    """One txt2img job (``fields``: more of its settings); returns the result and how many UNet forwards it
    took."""
    webui.shared.opts.data["ad_script_names"] = "freecure" if listed else ""
    p = webui.txt2img(**{"prompt": PROMPT, "steps": 4, "seed": 7, **fields})
    if cure is not None:
        webui.set_script_args(p, freecure(webui), [cure])
    if adetailer is not None:
        webui.set_script_args(p, webui.script("ADetailer"), [True, False, adetailer])
    if overrides is not None:
        setattr(p, OVERRIDES_ATTR, overrides)
    counter = ForwardCount(webui)
    try:
        result = webui.process(p)
    finally:
        counter.handle.remove()
    assert not webui.errors, webui.errors
    return result, counter.calls


def test_each_face_pass_runs_one_foundation_when_freecure_is_listed(webui: WebUIHost) -> None:
    face = {"ad_prompt": ""}
    _, plain = job(webui, cure=None, adetailer=None, listed=False)
    _, cured = job(webui, cure=CURE, adetailer=None, listed=False)
    _, plain_faces = job(webui, cure=None, adetailer=face, listed=False)
    unlisted, cured_unlisted = job(webui, cure=CURE, adetailer=face, listed=False)
    listed, cured_listed = job(webui, cure=CURE, adetailer=face, listed=True)
    foundation = cured - plain
    face_passes = plain_faces - plain
    assert foundation > 0 and face_passes > 0
    assert cured_unlisted == plain_faces + foundation, "not listed: ADetailer's copies of the job sample nothing"
    assert cured_listed == cured_unlisted + face_passes, "listed: one foundation per face pass, no more"
    assert "FreeCure ADetailer: 2/2 face passes cured" in listed.infotexts[0]
    assert "FreeCure ADetailer" not in unlisted.infotexts[0]


def test_a_face_pass_uses_the_adetailer_prompt(webui: WebUIHost) -> None:
    """The job's prompt asks for red hair; the ADetailer prompt names no attribute: nothing to cure there."""
    result, _ = job(webui, cure={**CURE, "attributes": "auto"}, adetailer={"ad_prompt": "a close-up photo of a face"},
                    listed=True)
    info = result.infotexts[0]
    assert "FreeCure ADetailer: 0/2 face passes cured" in info
    assert "ADetailer face 1: " in info and "no regional attribute" in info.split("ADetailer face 1: ")[1]


def test_each_image_reports_its_own_face_passes(webui: WebUIHost) -> None:
    """Two images: the first one's prompt names no attribute (its face passes cure nothing, with a note), the
    second asks for red hair. The infotext is per image: the second must not carry the first one's face-pass
    notes (the job's own notes, from any image, are in every image's)."""
    result, _ = job(webui, cure={**CURE, "attributes": "auto"}, adetailer={"ad_prompt": ""}, listed=True,
                    prompt=["a close-up photo of ohwx woman", PROMPT], n_iter=2)
    first, second = result.infotexts[:2]
    assert "FreeCure ADetailer: 0/2 face passes cured" in first
    assert "ADetailer face 1: " in first and "ADetailer face 2: " in first and "no regional attribute" in first
    assert "/2 face passes cured" in second  # how many come out cured depends on the random weights' masks
    assert "ADetailer face 1: no regional attribute" not in second
    assert "ADetailer face 2: no regional attribute" not in second


def test_an_image_without_faces_reports_no_face_pass(webui: WebUIHost) -> None:
    """ADetailer finds faces in the first image only: the second image's infotext has no face-pass count and
    no face-pass notes of the first."""
    webui.shared.fake_adetailer_faces = lambda index: FACES if index == 0 else []
    result, _ = job(webui, cure={**CURE, "attributes": "auto"}, adetailer={"ad_prompt": ""}, listed=True,
                    prompt="a close-up photo of ohwx woman", n_iter=2)
    first, second = result.infotexts[:2]
    assert "FreeCure ADetailer: 0/2 face passes cured" in first and "ADetailer face 1: " in first
    assert "FreeCure ADetailer" not in second and "ADetailer face" not in second


def test_a_face_pass_takes_the_jobs_xyz_overrides(webui: WebUIHost) -> None:
    """Strength 0 from the job's X/Y/Z cell: the face passes come out as without FreeCure in them (the cured
    txt2img image is the same in both jobs)."""
    face = {"ad_prompt": ""}
    zero = {"strength": 0.0}
    unlisted, _ = job(webui, cure=CURE, adetailer=face, listed=False, overrides=zero)
    listed_zero, _ = job(webui, cure=CURE, adetailer=face, listed=True, overrides=zero)
    assert torch.equal(image_tensor(listed_zero.images[0]), image_tensor(unlisted.images[0]))
    unlisted, _ = job(webui, cure=CURE, adetailer=face, listed=False)
    listed, _ = job(webui, cure=CURE, adetailer=face, listed=True)
    assert not torch.equal(image_tensor(listed.images[0]), image_tensor(unlisted.images[0])), \
        "at the job's own strength the face passes are cured"


def test_debug_images_survive_adetailers_copy_of_the_job(webui: WebUIHost) -> None:
    debug = {**CURE, "debug_images": True}
    alone, _ = job(webui, cure=debug, adetailer=None, listed=False)
    with_adetailer, _ = job(webui, cure=debug, adetailer={"ad_prompt": ""}, listed=False)
    assert len(alone.images) > 1
    assert len(with_adetailer.images) == len(alone.images)
