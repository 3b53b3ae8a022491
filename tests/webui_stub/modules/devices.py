"""``modules/devices.py``: the stand-in runs on CPU in float32, where autocast is a no-op as in the
WebUI's own float32 path."""

from __future__ import annotations

import contextlib

import torch

cpu = torch.device("cpu")
device = device_interrogate = device_gfpgan = device_esrgan = device_codeformer = cpu
dtype = dtype_vae = dtype_unet = dtype_inference = torch.float32
unet_needs_upcast = False


def get_optimal_device() -> torch.device:
    return cpu


def get_optimal_device_name() -> str:
    return "cpu"


def autocast(disable: bool = False):
    return contextlib.nullcontext()


def without_autocast(disable: bool = False):
    return contextlib.nullcontext()


def torch_gc() -> None:
    pass


def cond_cast_unet(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def cond_cast_float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class NansException(Exception):
    pass


def test_for_nans(x: torch.Tensor, where: str) -> None:
    if torch.isnan(x[(0,) * x.dim()]):
        raise NansException(f"A tensor with NaNs was produced in {where}.")
