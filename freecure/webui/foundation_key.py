"""The key of a foundation pass in a WebUI job: every input that can change what the identity-off pass
produces, and nothing that only the cure reads.

A missing input would hand a later job a wrong foundation without a word, so the key errs the other way: the
whole settings page, every other AlwaysOn script's arguments (ControlNet units, images included, by content),
the exact initial latent and noise the WebUI drew, and the processing fields its samplers read. What is left
out is only what FreeCure itself applies after the foundation pass (strength, step window, masks, APG, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch

from freecure.options import Options
from freecure.pipeline.foundation_cache import digest

# Fields of StableDiffusionProcessing(Txt2Img|Img2Img) that the WebUI's sampling reads (A1111 1.10.1 and
# Forge 2 modules/processing.py, modules/sd_samplers_kdiffusion.py); absent ones count as None.
SAMPLING_FIELDS = (
    "seeds", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w",
    "sampler_name", "scheduler", "steps", "cfg_scale", "distilled_cfg_scale", "image_cfg_scale",
    "width", "height", "batch_size", "denoising_strength", "initial_noise_multiplier",
    "s_churn", "s_tmin", "s_tmax", "s_noise", "s_min_uncond", "eta", "tiling",
    "enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
    "hr_sampler_name", "hr_scheduler", "hr_cfg", "hr_distilled_cfg", "hr_checkpoint_name",
    "hr_additional_modules", "hr_upscale_to_x", "hr_upscale_to_y", "latent_scale_mode",
    "override_settings", "extra_network_data", "hr_extra_network_data",
    "resize_mode", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert",
    "mask_blur_x", "mask_blur_y", "mask_round",
    # img2img/inpaint: what the sampler blends toward and conditions on at every step, by content
    "init_images", "image_mask", "init_latent", "mask", "nmask", "image_conditioning",
)

# Options the cure stage reads after the foundation pass; every other option is part of the key. Method and
# layers are checked against what a record holds instead (FoundationRecord.covers).
CURE_ONLY_OPTIONS = frozenset({
    "enabled", "method", "layers", "strength", "blend_weight", "blend_start", "step_start", "step_end",
    "mask_source", "mask_combine", "mask_dilation", "face_parser", "faces", "allow_download", "offload_bank",
    "apg", "apg_strength", "apg_source", "apg_target", "apg_guidance", "hires", "debug_images",
    # a strength of 0 leaves an attribute out of the plan, which changes the recorded phrases (in the key)
    "attribute_strength", "attribute_dilation",
    # one-pass mode samples its foundation inside the cure pass and keeps nothing for reuse
    "passes", "one_pass_masks_at",
})


def foundation_key(p: Any, options: Options, *, x: torch.Tensor, noise: torch.Tensor, is_hires: bool,
                   foundation_prompts: Sequence[str], negative_prompts: Sequence[str], cfg_scale: float,
                   phrases: dict[str, tuple[str, ...]], embeddings: Sequence[str]) -> str:
    """Digest of this sampling pass's foundation inputs (see the module docstring)."""
    from modules import shared

    settings_page = {k: v for k, v in (getattr(shared.opts, "data", {}) or {}).items()
                     if not k.startswith("freecure_")}
    return digest({
        "model": _model_identity(p.sd_model),
        "vae": _loaded_vae(),
        "settings": settings_page,
        "fields": {name: getattr(p, name, None) for name in SAMPLING_FIELDS},
        # The WebUI draws a new random subseed every job; modules/rng.py reads it only at a strength != 0.
        "subseeds": getattr(p, "subseeds", None) if getattr(p, "subseed_strength", 0) else None,
        "other_scripts": _other_script_args(p),
        "options": {k: v for k, v in asdict(options).items() if k not in CURE_ONLY_OPTIONS},
        "pass": {"hires": is_hires, "x": x, "noise": noise, "cfg": cfg_scale},
        "prompts": (tuple(foundation_prompts), tuple(negative_prompts)),
        "phrases": phrases,
        "embeddings": tuple(embeddings),
    })


def _model_identity(sd_model: Any) -> tuple:
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return (getattr(info, "filename", None), getattr(info, "sha256", None), getattr(sd_model, "sd_model_hash", None),
            type(sd_model).__qualname__)


def _loaded_vae() -> Any:
    try:
        from modules import sd_vae
    except ImportError:
        return None
    return getattr(sd_vae, "loaded_vae_file", None)


def _other_script_args(p: Any) -> dict[str, Any]:
    """Every AlwaysOn script's arguments but FreeCure's own, by script (ControlNet units, other adapters...)."""
    runner = getattr(p, "scripts", None)
    args = tuple(getattr(p, "script_args", ()) or ())
    found: dict[str, Any] = {}
    for index, script in enumerate(getattr(runner, "alwayson_scripts", ()) or ()):
        title = script.title()
        if title == "FreeCure" or script.args_from is None:
            continue
        found[f"{index}:{title}"] = args[script.args_from:script.args_to]
    return found
