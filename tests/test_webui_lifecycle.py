"""A failure inside the WebUI's own sampling during a cured job (out of memory, NansException, another
extension's exception) skips ``post_sample`` and ``postprocess``: nothing of the cure may survive into the
next job of any kind, also a plain img2img job."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from webui_checks import CURE, EXTENSION_DIR, PROMPT, image_tensor, module_state, run
from webui_host import WebUIHost, installed_host

FAULT = Path(__file__).resolve().parent / "fake_extensions" / "fault"


class FaultProbe:
    """Counts the UNet forwards of a job and raises ``error`` from the ``raise_at``-th on, while armed."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.raise_at = 0
        self.unet_calls = 0
        self.cfg_calls = 0
        self.handle: Any = None

    def watch(self, unet: torch.nn.Module) -> None:
        if self.handle is None:
            self.handle = unet.register_forward_pre_hook(self.unet_call)

    def unet_call(self, module: Any, args: Any) -> None:
        self.unet_calls += 1
        if self.error is not None and self.unet_calls >= self.raise_at:
            raise self.error

    def on_cfg_denoiser(self, params: Any) -> None:
        self.cfg_calls += 1


@pytest.fixture(params=["a1111", "forge"])
def host(request: pytest.FixtureRequest) -> Iterator[tuple[WebUIHost, FaultProbe]]:
    with installed_host(request.param) as webui:
        webui.load_scripts(FAULT, EXTENSION_DIR)
        probe = FaultProbe()
        webui.shared.fake_fault_probe = probe
        try:
            yield webui, probe
        finally:
            webui.script_callbacks.remove_callbacks_for_function(probe.on_cfg_denoiser)
            if probe.handle is not None:
                probe.handle.remove()


def plain_jobs(webui: WebUIHost, probe: FaultProbe, init_image: Any) -> list[tuple[torch.Tensor, int, dict]]:
    """An img2img job, then a txt2img job, without FreeCure: each image, its CFG callback count and what is
    installed on the host after it."""
    results = []
    for make in (lambda: webui.img2img(init_image, prompt=PROMPT, steps=4, seed=3), lambda: None):
        probe.cfg_calls = 0
        p = make()
        image = webui.process(p).images[0] if p is not None else run(webui, None).images[0]
        results.append((image_tensor(image), probe.cfg_calls, module_state(webui)))
    return results


def assert_as_before(before: list[tuple[torch.Tensor, int, dict]], after: list[tuple[torch.Tensor, int, dict]]) -> None:
    for (image, calls, state), (image_after, calls_after, state_after) in zip(before, after, strict=True):
        assert torch.equal(image, image_after), "the next plain image is bit-identical"
        assert calls == calls_after, "every other extension's CFG callback still runs in every call"
        assert state_after == state, "nothing of the cure is left after the next job"


def test_a_cured_job_leaves_the_next_plain_jobs_as_before(host: tuple[WebUIHost, FaultProbe]) -> None:
    """The plain jobs keep their identity LoRA: on Forge the cure's foundation loads the LoRA-free patcher, and
    the next job's patcher must merge its LoRA again although the host reloads no network."""
    webui, probe = host
    init_image = run(webui, None).images[0]
    before = plain_jobs(webui, probe, init_image)
    result = run(webui, CURE)
    assert "FreeCure notes" not in result.infotexts[0]
    assert_as_before(before, plain_jobs(webui, probe, init_image))


ERRORS: dict[str, tuple[Callable[[WebUIHost], BaseException], int]] = {
    # name -> (the error, the UNet call it is raised from: 4 steps, calls 1-4 are the foundation pass)
    "out of memory in the main pass": (lambda _: torch.OutOfMemoryError("CUDA out of memory"), 6),
    "NaNs in the main pass": (lambda w: w.devices.NansException("A tensor with NaNs was produced in Unet."), 5),
    "another extension fails from the foundation on": (lambda _: RuntimeError("planted extension bug"), 2),
}


@pytest.mark.parametrize("fault", list(ERRORS))
def test_failure_inside_host_sampling_leaves_nothing_for_the_next_jobs(host: tuple[WebUIHost, FaultProbe],
                                                                        fault: str) -> None:
    webui, probe = host
    init_image = run(webui, None).images[0]
    before = plain_jobs(webui, probe, init_image)
    make_error, probe.raise_at = ERRORS[fault]
    probe.error, probe.unet_calls = make_error(webui), 0
    with pytest.raises(type(probe.error)):
        run(webui, CURE)
    probe.error = None
    assert_as_before(before, plain_jobs(webui, probe, init_image))
