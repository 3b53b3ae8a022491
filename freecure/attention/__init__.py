"""Attention interception for FreeCure: layer keys, the engine, FASA, the recorder, the K/V bank.

Public API (see docs/ARCHITECTURE.md): ``LayerKey``, ``RowRole``, ``layer_key_from_ldm_name``,
``diffusers_layer_keys``, ``execution_order``, ``preset_layers``, ``token_grid``, ``KVBank``,
``CrossAttentionRecorder``, ``FasaSettings``, ``AttentionEngine``, ``RowTracker``,
``intercept_modules``, ``forward_beneath``, ``intercept_diffusers``; joint attention (FLUX): ``joint_blocks``,
``patch_grid``, ``joint_attention`` (``freecure.attention.intercept_flux`` for diffusers' ``FluxTransformer2DModel``).
"""

from .bank import KVBank
from .engine import AttentionEngine
from .fasa import FasaSettings, fasa_attention, mask_tokens
from .intercept import RowTracker, forward_beneath, intercept_diffusers, intercept_modules
from .joint import joint_attention, patch_grid
from .layers import (
    FAMILIES,
    PRESETS,
    diffusers_layer_keys,
    execution_order,
    joint_blocks,
    layer_key_from_ldm_name,
    preset_layers,
    token_grid,
)
from .recorder import CrossAttentionRecorder
from .types import LayerKey, RowRole, in_progress_range

__all__ = [
    "FAMILIES",
    "PRESETS",
    "AttentionEngine",
    "CrossAttentionRecorder",
    "FasaSettings",
    "KVBank",
    "LayerKey",
    "RowRole",
    "RowTracker",
    "diffusers_layer_keys",
    "execution_order",
    "fasa_attention",
    "forward_beneath",
    "in_progress_range",
    "intercept_diffusers",
    "intercept_modules",
    "joint_attention",
    "joint_blocks",
    "layer_key_from_ldm_name",
    "mask_tokens",
    "patch_grid",
    "preset_layers",
    "token_grid",
]
