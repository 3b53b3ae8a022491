"""UNet configurations and presets for ``bench_cure``.

``sd15`` and ``sdxl`` are the real architectures (diffusers configs of SD1.5 and SDXL base); the
``-small`` ones keep their block layout (16 and 70 transformer blocks, SDXL's linear projection and
text_time conditioning, the real context widths) with channel widths cut for a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_SD15_LAYOUT: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
}
_SDXL_LAYOUT: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 1280 pooled + 6 * 256 size/crop ids
}

UNET_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (model family, UNet2DConditionModel kwargs)
    "sd15": ("sd1", {**_SD15_LAYOUT, "block_out_channels": (320, 640, 1280, 1280), "attention_head_dim": 8}),
    "sdxl": ("sdxl", {**_SDXL_LAYOUT, "block_out_channels": (320, 640, 1280), "attention_head_dim": (5, 10, 20)}),
    "sd15-small": (
        "sd1",
        {**_SD15_LAYOUT, "block_out_channels": (16, 32, 32, 32), "attention_head_dim": 4, "norm_num_groups": 8},
    ),
    "sdxl-small": (
        "sdxl",
        {**_SDXL_LAYOUT, "block_out_channels": (16, 32, 32), "attention_head_dim": (2, 4, 8), "norm_num_groups": 8},
    ),
}

BASE_METHODS = ("fasa", "blend", "fasa+apg", "fasa+reused", "fasa+one-pass", "blend+one-pass")
SWEEP_METHODS = ("fasa",)


@dataclass(frozen=True)
class Case:
    """One group of interleaved runs: a plain generation and each cured ``method`` at the same
    model, size, steps and seed."""

    config: str
    size: int  # image side in pixels (latent side = size // 8)
    steps: int
    methods: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.config not in UNET_CONFIGS:
            raise ValueError(f"config: unknown value {self.config!r}; accepted: {', '.join(UNET_CONFIGS)}")
        if self.size < 64 or self.size % 64:
            raise ValueError(f"size: must be a multiple of 64 pixels, got {self.size}")
        if self.steps < 2:
            raise ValueError(f"steps: must be at least 2, got {self.steps}")


PRESETS: dict[str, tuple[Case, ...]] = {
    # 2-core CPU: small models; all methods at 128 px, 10 steps; FASA at 20 and 30 steps and at 256 px.
    "cpu": (
        Case("sd15-small", 128, 10, BASE_METHODS),
        Case("sd15-small", 128, 20, SWEEP_METHODS),
        Case("sd15-small", 128, 30, SWEEP_METHODS),
        Case("sd15-small", 256, 10, SWEEP_METHODS),
        Case("sdxl-small", 128, 10, BASE_METHODS),
    ),
    # One H100, fp16: the real architectures at their native sizes, bank on the GPU and offloaded.
    "gpu": (
        Case("sd15", 512, 20, (*BASE_METHODS, "fasa+offload")),
        Case("sdxl", 1024, 20, (*BASE_METHODS, "fasa+offload")),
    ),
    # The smoke test's preset: seconds, not minutes.
    "smoke": (Case("sd15-small", 64, 2, BASE_METHODS),),
}
