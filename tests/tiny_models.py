"""Tiny random-weight diffusers UNets with the real SD1.x and SDXL block layouts.

Channel widths are cut down for a 2-core CPU; the block structure (which levels carry transformers,
how deep they are, linear projection for SDXL) is that of the real models, so layer keys, token grids
and execution order are the real ones.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

SD1_CONTEXT_DIM = 32
SDXL_CONTEXT_DIM = 32
SDXL_POOLED_DIM = 16
SDXL_TIME_DIM = 4


def tiny_sd1_unet(seed: int = 0) -> UNet2DConditionModel:
    """SD1.x layout: 3 cross-attention down levels, 16 transformer blocks of depth 1."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=2,
        norm_num_groups=8,
        cross_attention_dim=SD1_CONTEXT_DIM,
        attention_head_dim=4,
    )
    return unet.eval()


def tiny_sdxl_unet(seed: int = 0, *, deep: int = 10) -> UNet2DConditionModel:
    """SDXL layout: transformers at levels 2 and 3 (depth 2 and ``deep``), linear projection,
    text_time added conditioning. With ``deep=10`` there are 70 transformer blocks as in SDXL."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        norm_num_groups=8,
        transformer_layers_per_block=(1, 2, deep),
        cross_attention_dim=SDXL_CONTEXT_DIM,
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_DIM,
        projection_class_embeddings_input_dim=SDXL_POOLED_DIM + 6 * SDXL_TIME_DIM,
    )
    return unet.eval()


def sdxl_added_cond(batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The ``added_cond_kwargs`` an SDXL-layout UNet needs: pooled text embedding and size/crop ids."""
    return {
        "text_embeds": torch.randn(batch, SDXL_POOLED_DIM, generator=generator),
        "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).repeat(batch, 1),
    }


FLUX_CONTEXT_DIM = 16
FLUX_POOLED_DIM = 8


def tiny_flux_transformer(seed: int = 0, *, guidance_embeds: bool = True, double: int = 2, single: int = 4):
    """FLUX layout (diffusers' ``FluxTransformer2DModel``): double-stream then single-stream joint-attention
    blocks, QK RMS norms, 3-axis RoPE, 2x2 patch tokens. Widths cut down (2 heads of 8, latent 4 channels
    instead of 16); ``guidance_embeds`` = FLUX.1 dev's distilled guidance input (schnell has none)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=double,
        num_single_layers=single,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=FLUX_CONTEXT_DIM,
        pooled_projection_dim=FLUX_POOLED_DIM,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(2, 2, 4),
    )
    return transformer.eval()
