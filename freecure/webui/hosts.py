"""Host selection and the host facts the controller needs, decided by what the running WebUI provides
(feature detection, never version strings)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from freecure.attention import LayerKey, layer_key_from_ldm_name
from freecure.options import Options
from freecure.pipeline import CureSession
from freecure.webui.builtins import builtin_reason
from freecure.webui.forge_flux import is_flux
from freecure.webui.identity import IdentitySwitch


def model_family(sd_model: Any) -> str:
    """sd1 | sd2 | sdxl from the flags both hosts set on the loaded model; flux for Forge's joint-attention
    DiTs (FLUX.1 dev and schnell), found by their blocks."""
    if is_forge(sd_model) and is_flux(diffusion_model(sd_model)):
        return "flux"
    if getattr(sd_model, "is_sdxl", False):
        return "sdxl"
    if getattr(sd_model, "is_sd2", False):
        return "sd2"
    return "sd1"


def attention_modules(diffusion_model: torch.nn.Module) -> dict[LayerKey, tuple[Any, Any]]:
    """(attn1, attn2) of every transformer block, keyed in ldm naming."""
    pairs: dict[LayerKey, dict[bool, Any]] = {}
    for name, module in diffusion_model.named_modules():
        found = layer_key_from_ldm_name(name)
        if found is not None:
            key, is_self = found
            pairs.setdefault(key, {})[is_self] = module
    return {key: (pair[True], pair[False]) for key, pair in pairs.items() if len(pair) == 2}


def is_forge(sd_model: Any) -> bool:
    """Forge (classic and 2) patches a clone of ``forge_objects.unet``; A1111 has no ``forge_objects``."""
    return getattr(sd_model, "forge_objects", None) is not None


def is_img2img_job(p: Any) -> bool:
    """An img2img or inpaint job (``StableDiffusionProcessingImg2Img``, from every hook on): it has init images,
    txt2img has no such field."""
    return getattr(p, "init_images", None) is not None


def enabled_script(p: Any, title: str) -> bool:
    """Whether the AlwaysOn script ``title`` is in this job with its first argument (its enable flag) on."""
    runner = getattr(p, "scripts", None)
    args = tuple(getattr(p, "script_args", ()) or ())
    for script in getattr(runner, "alwayson_scripts", ()) or ():
        if script.title() == title and script.args_from is not None and script.args_from < len(args):
            return bool(args[script.args_from])
    return False


def unsupported_reason(p: Any) -> str | None:
    """Why FreeCure cannot run on this job, or None."""
    from modules import shared

    if getattr(p, "image_mask", None) is not None and enabled_script(p, "Soft Inpainting"):
        # Soft inpainting replaces the mask blend of every step (on_mask_blend) and the overlay with its own
        # soft composite: not mirrored or tested with the foundation pass yet.
        return "soft inpainting is on (switch it off for FreeCure): its per-step blend is not supported yet"
    if getattr(p, "refiner_checkpoint", None) not in (None, "", "None"):
        return "a refiner switches models mid-sampling; FreeCure needs one model for both passes"
    ratios = [p.get_token_merging_ratio()]
    if getattr(p, "enable_hr", False):
        ratios.append(p.get_token_merging_ratio(for_hr=True))
    if any(ratio > 0 for ratio in ratios):
        return "token merging is on (set its ratio to 0): FreeCure needs every attention token"
    data = getattr(shared.opts, "data", {}) or {}
    if data.get("hypertile_enable_unet") or data.get("hypertile_enable_unet_secondpass"):
        return "HyperTile is on (switch it off for FreeCure): it splits attention into tiles"
    neo = builtin_reason(p)
    if neo:
        return neo
    model = diffusion_model(p.sd_model)
    if not attention_modules(model) and not (is_forge(p.sd_model) and is_flux(model)):
        return ("this model has neither SD1.x/SD2.x/SDXL UNet attention layers nor FLUX joint-attention blocks"
                " (FreeCure supports those models)")
    return None


def diffusion_model(sd_model: Any) -> torch.nn.Module:
    """The UNet module tree: A1111's ``model.diffusion_model``, Forge's inside its UNet patcher."""
    if is_forge(sd_model):
        return sd_model.forge_objects.unet.model.diffusion_model
    return sd_model.model.diffusion_model


def blend_unsupported(p: Any) -> str | None:
    """Noise blending works on the x0 a k-diffusion denoiser returns; the WebUI's timestep samplers (DDIM,
    PLMS, UniPC) hand their callbacks noise predictions at timesteps instead."""
    try:
        from modules import sd_samplers_timesteps
    except ImportError:
        return None
    names = {name for data in sd_samplers_timesteps.samplers_data_timesteps for name in (data.name, *data.aliases)}
    used = [p.sampler_name, *([getattr(p, "hr_sampler_name", None)] if getattr(p, "enable_hr", False) else [])]
    timestep_samplers = [name for name in used if name in names]
    if timestep_samplers:
        return (f"method blend needs a k-diffusion sampler, not {timestep_samplers[0]} (use fasa, or a sampler"
                " such as Euler or DPM++ 2M)")
    return None


def create_host(p: Any, options: Options, *, x: torch.Tensor, noise: torch.Tensor, conditioning: Any,
                unconditional: Any, is_hires: bool) -> Any:
    """The pipeline host for this sampling pass of this job."""
    if is_forge(p.sd_model):
        from freecure.webui.forge import ForgeHost, ForgeIdentitySwitch

        host_class, switch_class, unet = ForgeHost, ForgeIdentitySwitch, None
    else:
        from freecure.webui.a1111 import A1111Host

        host_class, switch_class, unet = A1111Host, IdentitySwitch, diffusion_model(p.sd_model)
    identity = switch_class(p, kinds=options.identity_off, keep_networks=options.keep_networks,
                            is_hires=is_hires, unet=unet)
    return host_class(p, x=x, noise=noise, conditioning=conditioning, unconditional=unconditional,
                      identity=identity, is_hires=is_hires)


def embedding_names() -> Sequence[str]:
    """Names of the loaded textual-inversion embeddings (A1111 and classic Forge; Forge 2's text engine)."""
    from modules import shared

    databases = []
    try:
        from modules import sd_hijack

        databases.append(getattr(sd_hijack.model_hijack, "embedding_db", None))
    except ImportError:
        pass
    for engine_name in ("text_processing_engine", "text_processing_engine_l"):
        engine = getattr(shared.sd_model, engine_name, None)
        databases.append(getattr(engine, "embeddings", None))
    names: list[str] = []
    for database in databases:
        names += [name for name in getattr(database, "word_embeddings", {}) if name not in names]
    return names


def apg_on_samples(session: CureSession, host: Any, samples: Any) -> Any:
    """APG on what ``post_sample`` holds: latents, or decoded images after hires fix (re-encoded, then
    decoded back into the same form)."""
    if not getattr(samples, "already_decoded", False):
        return session.apg(samples)
    from modules import processing

    images = (torch.stack(list(samples)).float() + 1.0) / 2.0
    latents = host.encode(images)
    cured = session.apg(latents)
    if cured is latents:
        return samples
    decoded = host.decode(cured) * 2.0 - 1.0
    return processing.DecodedSamples(list(decoded))


def rerun_uncured(session: CureSession, host: Any, samples: Any) -> Any:
    """The pass again from its initial noise with nothing installed: the plain personalized result, in the
    form ``post_sample`` holds (latents, or decoded images after hires fix)."""
    from freecure.pipeline.session import PlainHooks

    latents = host.sample(session.personalized, PlainHooks())
    if not getattr(samples, "already_decoded", False):
        return latents
    from modules import processing

    return processing.DecodedSamples(list(host.decode(latents) * 2.0 - 1.0))


def add_result_images(p: Any, processed: Any, items: Sequence[tuple[Any, str]]) -> None:
    """Debug images after the results, each with its caption as infotext (the gallery reads it)."""
    processed.images.extend(image for image, _ in items)
    processed.infotexts.extend(caption for _, caption in items)
