"""Attention interception for FreeCure: layer keys, the engine, FASA, the recorder, the K/V bank.

Public API (see docs/ARCHITECTURE.md): ``LayerKey``, ``RowRole``, ``layer_key_from_ldm_name``,
``diffusers_layer_keys``, ``execution_order``, ``preset_layers``, ``token_grid``, ``KVBank``,
``CrossAttentionRecorder``, ``FasaSettings``, ``AttentionEngine``, ``RowTracker``,
``intercept_modules``, ``intercept_diffusers``.
"""

from .bank import KVBank
from .engine import AttentionEngine
from .fasa import FasaSettings, fasa_attention, mask_tokens
from .intercept import RowTracker, intercept_diffusers, intercept_modules
from .layers import (
    FAMILIES,
    PRESETS,
    diffusers_layer_keys,
    execution_order,
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
    "in_progress_range",
    "intercept_diffusers",
    "intercept_modules",
    "layer_key_from_ldm_name",
    "mask_tokens",
    "preset_layers",
    "token_grid",
]
