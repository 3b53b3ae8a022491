"""Which attention layer is which: ldm/diffusers names -> layer keys, execution order, presets, grids."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

from torch import nn

from .types import SECTIONS, LayerKey, check_layer_key

# ldm/sgm: input_blocks.<i>.1.transformer_blocks.<j>.attn<1|2>, middle_block.1..., output_blocks.<i>.1...
_LDM_NAME = re.compile(
    r"(?:^|\.)(?:(?P<section>input|output)_blocks\.(?P<block>\d+)|middle_block)"
    r"\.1\.transformer_blocks\.(?P<index>\d+)\.attn(?P<kind>[12])$"
)
# The blocks of a joint-attention DiT: Forge's flux.py names them double_blocks.<i> / single_blocks.<i>,
# diffusers' FluxTransformer2DModel transformer_blocks.<i> / single_transformer_blocks.<i>.
_DIT_BLOCK_NAME = re.compile(
    r"(?:^|\.)(?P<section>double_blocks|single_blocks|transformer_blocks|single_transformer_blocks)\.(?P<block>\d+)$"
)
_DIT_SECTION = {"double_blocks": "double", "transformer_blocks": "double",
                "single_blocks": "single", "single_transformer_blocks": "single"}
_DIFFUSERS_NAME = re.compile(
    r"^(?:(?P<section>down|up)_blocks\.(?P<level>\d+)|mid_block)\.attentions\.(?P<attention>\d+)"
    r"\.transformer_blocks\.(?P<index>\d+)\.attn(?P<kind>[12])$"
)

PRESETS = ("default", "decoder", "decoder-high", "all")
FAMILIES = ("sd1", "sd2", "sdxl", "flux")
# The reference code's SDXL set: execution-order blocks 50-69 of 70, i.e. the last 2/7 of the blocks.
_SDXL_DEFAULT_FRACTION = 20 / 70


def layer_key_from_ldm_name(name: str) -> tuple[LayerKey, bool] | None:
    """``"...input_blocks.1.1.transformer_blocks.0.attn1"`` -> ``(("input", 1, 0), True)`` (True = self).

    Any prefix (``diffusion_model.``, ``model.diffusion_model.``) is accepted; other names give None.
    """
    match = _LDM_NAME.search(name)
    if match is None:
        return None
    section = match["section"] or "middle"
    block = int(match["block"]) if match["block"] is not None else 0
    return (section, block, int(match["index"])), match["kind"] == "1"


def diffusers_layer_keys(unet: nn.Module) -> dict[str, tuple[LayerKey, bool]]:
    """Map each transformer attention module name of a diffusers UNet to ``(ldm key, is_self)``.

    ldm block numbers are derived from the UNet's own structure: ``input_blocks`` start with conv_in,
    then per level one block per resnet and one for the downsampler; ``output_blocks`` have one block
    per resnet (the upsampler shares the last one). This covers SD1.x, SD2.x and SDXL layouts.
    """
    input_start, output_start = [], []
    next_input = 1
    for down in unet.down_blocks:
        input_start.append(next_input)
        next_input += len(down.resnets) + (1 if getattr(down, "downsamplers", None) else 0)
    next_output = 0
    for up in unet.up_blocks:
        output_start.append(next_output)
        next_output += len(up.resnets)

    keys: dict[str, tuple[LayerKey, bool]] = {}
    for name, _ in unet.named_modules():
        match = _DIFFUSERS_NAME.match(name)
        if match is None:
            continue
        attention, index = int(match["attention"]), int(match["index"])
        if match["section"] == "down":
            key: LayerKey = ("input", input_start[int(match["level"])] + attention, index)
        elif match["section"] == "up":
            key = ("output", output_start[int(match["level"])] + attention, index)
        else:
            key = ("middle", 0, index)
        keys[name] = (key, match["kind"] == "1")
    return keys


def joint_blocks(model: nn.Module) -> dict[LayerKey, nn.Module]:
    """The double- and single-stream blocks of a joint-attention DiT, keyed ("double" | "single", i, 0).

    Only direct children of a ``double_blocks``/``single_blocks`` list count (Forge's flux.py, Neo's
    flux.py and chroma.py), or of diffusers' ``transformer_blocks``/``single_transformer_blocks``
    when the model also has the single-stream list (a diffusers UNet's ``transformer_blocks`` are not
    joint attention)."""
    blocks: dict[LayerKey, nn.Module] = {}
    names = {name for name, _ in model.named_children()}
    for name, module in model.named_modules():
        match = _DIT_BLOCK_NAME.fullmatch(name)
        if match is None or match["section"] not in names:
            continue
        if match["section"] == "transformer_blocks" and "single_transformer_blocks" not in names:
            continue
        blocks[(_DIT_SECTION[match["section"]], int(match["block"]), 0)] = module
    return blocks


def _order(key: LayerKey) -> tuple[int, int, int]:
    return SECTIONS.index(key[0]), key[1], key[2]


def execution_order(keys: Iterable[LayerKey]) -> list[LayerKey]:
    """Distinct keys in UNet execution order: input blocks, middle, output blocks; then transformer index."""
    return sorted({check_layer_key(key, "keys") for key in keys}, key=_order)


def _output_levels(keys: Sequence[LayerKey]) -> dict[LayerKey, int]:
    """Resolution level of each output key, counted from the lowest resolution (larger = higher res).

    The number of ldm blocks per level (resnets + downsampler) is read off the input blocks: levels
    are runs of consecutive input block numbers separated by downsampler blocks, which carry no
    transformer. The decoder has the same number of blocks per level (one more resnet, no downsampler).
    """
    input_blocks = sorted({block for section, block, _ in keys if section == "input"})
    if not input_blocks:
        raise ValueError("all_keys: the decoder presets need input-block keys to find the resolution levels")
    run_starts = [b for i, b in enumerate(input_blocks) if i == 0 or input_blocks[i - 1] != b - 1]
    blocks_per_level = run_starts[1] - run_starts[0] if len(run_starts) > 1 else len(input_blocks) + 1
    return {key: key[1] // blocks_per_level for key in keys if key[0] == "output"}


def preset_layers(preset: str, all_keys: Sequence[LayerKey], family: str) -> frozenset[LayerKey]:
    """Self-attention layers a FASA preset selects among ``all_keys`` (all transformer blocks of the UNet).

    - ``"all"``: every block. ``"decoder"``: every output block.
    - ``"decoder-high"``: output blocks at the two highest resolutions that carry transformers
      (SD1.x: output_blocks 6-11; SDXL: all of output_blocks 0-5, the only two such levels).
    - ``"default"``: the reference code's sets. sd1/sd2: the six highest-resolution decoder blocks
      (= decoder-high, execution index 10-15 of 16); sdxl: the last 2/7 of the blocks in execution
      order (index 50-69 of 70: output_blocks.1 tb 6-9, .2 tb 0-9, .3-.5 tb 0-1).
    - flux (joint attention, no reference code; see ``_flux_preset``): ``"decoder"`` = every
      single-stream block, ``"default"`` and ``"decoder-high"`` = the later half of them.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset: unknown value {preset!r}; accepted: {', '.join(PRESETS)}")
    if family not in FAMILIES:
        raise ValueError(f"family: unknown value {family!r}; accepted: {', '.join(FAMILIES)}")
    order = execution_order(all_keys)
    if preset == "all":
        return frozenset(order)
    if family == "flux":
        return _flux_preset(preset, order)
    if preset == "decoder":
        return frozenset(key for key in order if key[0] == "output")
    if preset == "default" and family == "sdxl":
        count = round(len(order) * _SDXL_DEFAULT_FRACTION)
        return frozenset(order[len(order) - count :])
    levels = _output_levels(order)
    top_two = sorted(set(levels.values()))[-2:]
    return frozenset(key for key, level in levels.items() if level in top_two)


def _flux_preset(preset: str, order: Sequence[LayerKey]) -> frozenset[LayerKey]:
    """FLUX has no decoder; its single-stream blocks play that part: they come last and carry the image
    tokens to the output. Training-free FLUX editing shares attention features in the later single-stream
    blocks (RF-Solver-Edit: the last 20 of 38) because the double-stream blocks settle layout and
    text alignment, which the cure must leave to the personalized pass (the identity lives there too).
    So ``default`` = the later half of the single-stream blocks (FLUX.1: single 19-37), ``decoder`` =
    all of them."""
    single = [key for key in order if key[0] == "single"]
    if not single:
        raise ValueError("all_keys: the flux presets need single-stream block keys")
    if preset == "decoder":
        return frozenset(single)
    return frozenset(single[len(single) // 2 :])


@lru_cache(maxsize=256)
def token_grid(latent_hw: tuple[int, int], n_tokens: int) -> tuple[int, int]:
    """The (h, w) token grid of a layer with ``n_tokens`` queries for a latent of size ``latent_hw``.

    Each UNet level halves the size with a stride-2 convolution (padding 1), i.e. ceil(h / 2).
    Raises ValueError when no level matches (token merging, hypertile or an unknown architecture).
    """
    height, width = latent_hw
    if min(height, width) < 1:
        raise ValueError(f"latent_hw must be two positive ints, got {latent_hw!r}")
    while True:
        if height * width == n_tokens:
            return height, width
        if height * width < n_tokens or (height == 1 and width == 1):
            raise ValueError(
                f"n_tokens: {n_tokens} queries match no UNet level of a {latent_hw[0]}x{latent_hw[1]} latent "
                "(is token merging or hypertile on?)"
            )
        height, width = math.ceil(height / 2), math.ceil(width / 2)
