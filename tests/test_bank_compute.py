"""The key/value bank follows the tensors attention computes with, not the UNet's stored weights: FP8 storage
(A1111 ``--fp8``, Forge ``fp8_e4m3fn`` with manual cast), NF4/GGUF (uint8 parameters on Forge) and weights
parked away from the compute device (``--medvram``/``--lowvram``, Forge's offload)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from webui_checks import CURE, freecure
from webui_host import WebUIHost

from freecure.attention import KVBank
from freecure.webui.controller import STATE_ATTR
from freecure.webui.hosts import diffusion_model

LAYER = ("output", 9, 0)


def test_a_bank_without_dtype_stores_what_it_is_given() -> None:
    bank = KVBank(dtype=None)
    k = torch.randn(6, 4, dtype=torch.float64)
    bank.put(LAYER, 0, 0, k, k)
    stored, _ = bank._entries[(LAYER, 0, 0)]
    assert stored.dtype == torch.float64 and torch.equal(stored, k)
    with pytest.raises(ValueError, match="floating"):
        bank.put(LAYER, 1, 0, torch.ones(6, 4, dtype=torch.uint8), torch.ones(6, 4, dtype=torch.uint8))


def test_a_budget_function_is_asked_once_with_the_device_of_the_first_tensors() -> None:
    asked: list[torch.device] = []

    def budget(device: torch.device) -> int:
        asked.append(device)
        return 6 * 4 * 4 * 2  # K and V of one (6, 4) float32 entry

    bank = KVBank(dtype=None, device_budget=budget)
    k = torch.randn(6, 4)
    for call in range(3):
        bank.put(LAYER, call, 0, k, k)
    assert asked == [torch.device("cpu")]
    assert bank.device_bytes == 6 * 4 * 4 * 2, "one entry within the budget, the others in CPU memory"
    with pytest.raises(ValueError, match="device_budget"):
        KVBank(device_budget=lambda device: -1).put(LAYER, 0, 0, k, k)


class _StoredWeight:
    """What the WebUIs do to the first UNet weight: store it as ``storage`` and compute in the input's dtype
    on the input's device. float8: A1111 ``--fp8`` / Forge fp8 storage with ``manual_cast`` (cast on use);
    uint8: Forge's NF4/GGUF parameters (dequantized on use); "meta": weights away from the compute device
    (``--lowvram`` moves each module in when it runs)."""

    def __init__(self, linear: torch.nn.Linear, storage: str) -> None:
        weight = linear.weight.detach().clone()
        if storage == "float8":
            stored = weight.to(torch.float8_e4m3fn)
            self.compute = stored.float()
        elif storage == "uint8":
            low, scale = weight.min(), (weight.max() - weight.min()) / 255
            stored = ((weight - low) / scale).round().to(torch.uint8)
            self.compute = stored.float() * scale + low
        else:
            stored = torch.empty(weight.shape, device="meta")
            self.compute = weight
        self.linear, self.saved = linear, linear.weight
        linear.weight = torch.nn.Parameter(stored, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.compute.to(device=x.device, dtype=x.dtype)
        return torch.nn.functional.linear(x, weight, self.linear.bias)

    def restore(self) -> None:
        self.linear.weight = self.saved


@pytest.fixture(params=["float8", "uint8", "meta"])
def stored_first_weight(request: pytest.FixtureRequest, webui: WebUIHost) -> Iterator[str]:
    unet = diffusion_model(webui.shared.sd_model)
    name, _ = next(unet.named_parameters())
    linear = unet.get_submodule(name.rsplit(".", 1)[0])
    stored = _StoredWeight(linear, request.param)
    linear.forward = stored.forward
    try:
        yield request.param
    finally:
        del linear.forward
        stored.restore()


def test_the_bank_holds_the_compute_dtype_and_asks_its_budget_for_the_compute_device(
    webui: WebUIHost, stored_first_weight: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from freecure.pipeline import session as session_module

    unet = diffusion_model(webui.shared.sd_model)
    first = next(unet.parameters())
    assert (first.device.type if stored_first_weight == "meta" else str(first.dtype)).endswith(
        {"float8": "float8_e4m3fn", "uint8": "uint8", "meta": "meta"}[stored_first_weight])
    asked: list[torch.device] = []
    budget = session_module.bank_device_budget

    def spy(device: torch.device) -> Any:
        asked.append(torch.device(device))
        return budget(device)

    monkeypatch.setattr(session_module, "bank_device_budget", spy)
    # The trigger word is the identity here: the stand-in's LoRA would patch the stored weight itself.
    p = webui.txt2img(prompt="a photo of ohwx woman with red hair", steps=4, seed=7)
    webui.set_script_args(p, freecure(webui), [CURE])
    processed = webui.process(p)
    assert "cure failed" not in processed.infotexts[0] and "bank misses" not in processed.infotexts[0]
    bank = getattr(p, STATE_ATTR).session.bank
    assert len(bank) > 0
    assert {t.dtype for entry in bank._entries.values() for t in entry} == {torch.float32}, "the compute dtype"
    assert asked == [torch.device("cpu")], "the budget of the device attention ran on"
