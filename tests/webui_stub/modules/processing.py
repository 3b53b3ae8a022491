"""``modules/processing.py`` (A1111 1.10.1 82a973c0): ``StableDiffusionProcessingTxt2Img``,
``StableDiffusionProcessingImg2Img`` (img2img and inpainting, "Only masked" crops included), ``process_images``
with the real hook order and the inpaint overlay (``apply_overlay``), ``Processed`` and ``create_infotext``.

Hook order of one request: before_process, process, p.init, then per batch: before_process_batch,
extra networks (+ after_extra_networks_activate), process_batch, setup_conds,
process_before_every_sampling, sample, [hires: extra networks, hr conds, before_hr,
process_before_every_sampling, second pass], post_sample, decode, postprocess_batch,
postprocess_batch_list, per image postprocess_image / postprocess_maskoverlay /
postprocess_image_after_composite; after all batches extra networks deactivate, then postprocess.
Not mirrored: saving, grids, face restoration, colour correction, returned masks, refiner, hires with a
non-latent upscaler.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from modules import (
    devices,
    extra_networks,
    images,
    infotext_utils,
    masking,
    prompt_parser,
    rng,
    scripts,
    sd_models,
    sd_samplers,
    sd_samplers_common,
    sd_unet,
    shared,
)
from modules.shared import opts, state

opt_C = 4
opt_f = 8


def get_fixed_seed(seed):
    if seed == "" or seed is None:
        seed = -1
    elif isinstance(seed, str):
        seed = int(seed)
    if seed == -1:
        return int(random.randrange(4294967294))
    return seed


def create_random_tensors(shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0,
                          seed_resize_from_w=0, p=None):
    g = rng.ImageRNG(shape, seeds, subseeds=subseeds, subseed_strength=subseed_strength,
                     seed_resize_from_h=seed_resize_from_h, seed_resize_from_w=seed_resize_from_w)
    return g.next()


class DecodedSamples(list):
    already_decoded = True


def decode_first_stage(model, x):
    return model.decode_first_stage(x.to(devices.dtype_vae))


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):
    samples = DecodedSamples()
    for i in range(batch.shape[0]):
        sample = decode_first_stage(model, batch[i:i + 1])[0]
        if check_for_nans:
            devices.test_for_nans(sample, "vae")
        if target_device is not None:
            sample = sample.to(target_device)
        samples.append(sample)
    return samples


def uncrop(image, dest_size, paste_loc):
    """An "Only masked" result back at its place in a transparent canvas of the full size."""
    x, y, w, h = paste_loc
    canvas = Image.new("RGBA", dest_size)
    canvas.paste(images.resize_image(1, image, w, h), (x, y))
    return canvas


def apply_overlay(image, paste_loc, overlay):
    """The result under the overlay (the original outside the inpaint mask); also the result before it."""
    if overlay is None:
        return image, image.copy()
    if paste_loc is not None:
        image = uncrop(image, (overlay.width, overlay.height), paste_loc)
    original_denoised_image = image.copy()
    image = image.convert("RGBA")
    image.alpha_composite(overlay)
    return image.convert("RGB"), original_denoised_image


def create_binary_mask(image, round=True):
    """An "L" mask: the alpha channel of an RGBA mask that has transparency (thresholded at 128 when
    rounding), else the image's luminance."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        alpha = image.split()[-1].convert("L")
        return alpha.point(lambda value: 255 if value > 128 else 0) if round else alpha
    return image.convert("L")


def txt2img_image_conditioning(sd_model, x, width, height):
    """Non-inpainting models: a dummy (B, 5, 1, 1) zero tensor, as the real one."""
    return x.new_zeros(x.shape[0], 5, 1, 1, dtype=x.dtype, device=x.device)


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    prompt_for_display: str = None
    negative_prompt: str = ""
    styles: list = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict[str, Any] = None
    overlay_images: list = None
    eta: float = None
    do_not_reload_embeddings: bool = False
    denoising_strength: float = None
    ddim_discretize: str = None
    s_min_uncond: float = None
    s_churn: float = None
    s_tmax: float = None
    s_tmin: float = None
    s_noise: float = None
    override_settings: dict[str, Any] = None
    override_settings_restore_afterwards: bool = True
    sampler_index: int = None
    refiner_checkpoint: str = None
    refiner_switch_at: float = None
    token_merging_ratio = 0
    token_merging_ratio_hr = 0
    disable_extra_networks: bool = False
    firstpass_image: Any = None

    scripts_value: scripts.ScriptRunner = field(default=None, init=False)
    script_args_value: list = field(default=None, init=False)
    scripts_setup_complete: bool = field(default=False, init=False)

    cached_uc: ClassVar[list] = [None, None]
    cached_c: ClassVar[list] = [None, None]

    comments: dict = None
    sampler: sd_samplers_common.Sampler | None = field(default=None, init=False)
    is_using_inpainting_conditioning: bool = field(default=False, init=False)
    paste_to: tuple | None = field(default=None, init=False)
    is_hr_pass: bool = field(default=False, init=False)
    c: tuple = field(default=None, init=False)
    uc: tuple = field(default=None, init=False)
    rng: rng.ImageRNG | None = field(default=None, init=False)
    step_multiplier: int = field(default=1, init=False)
    color_corrections: list = field(default=None, init=False)
    all_prompts: list = field(default=None, init=False)
    all_negative_prompts: list = field(default=None, init=False)
    all_seeds: list = field(default=None, init=False)
    all_subseeds: list = field(default=None, init=False)
    iteration: int = field(default=0, init=False)
    main_prompt: str = field(default=None, init=False)
    main_negative_prompt: str = field(default=None, init=False)
    prompts: list = field(default=None, init=False)
    negative_prompts: list = field(default=None, init=False)
    seeds: list = field(default=None, init=False)
    subseeds: list = field(default=None, init=False)
    extra_network_data: dict = field(default=None, init=False)
    user: str = field(default=None, init=False)
    sd_model_name: str = field(default=None, init=False)
    sd_model_hash: str = field(default=None, init=False)
    sd_vae_name: str = field(default=None, init=False)
    sd_vae_hash: str = field(default=None, init=False)
    is_api: bool = field(default=False, init=False)
    batch_index: int = field(default=0, init=False)
    sampler_noise_scheduler_override: Any = field(default=None, init=False)
    firstpass_steps: int = field(default=0, init=False)

    def __post_init__(self):
        if self.sampler_index is not None:
            print("sampler_index argument for StableDiffusionProcessing does not do anything; use sampler_name")
        self.comments = {}
        self.s_min_uncond = self.s_min_uncond if self.s_min_uncond is not None else opts.s_min_uncond
        self.s_churn = self.s_churn if self.s_churn is not None else opts.s_churn
        self.s_tmin = self.s_tmin if self.s_tmin is not None else opts.s_tmin
        self.s_tmax = (self.s_tmax if self.s_tmax is not None else opts.s_tmax) or float("inf")
        self.s_noise = self.s_noise if self.s_noise is not None else opts.s_noise
        if self.styles is None:
            self.styles = []
        self.sampler_noise_scheduler_override = None
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        self.refiner_checkpoint_info = None
        if not self.seed_enable_extras:
            self.subseed = -1
            self.subseed_strength = 0
            self.seed_resize_from_h = 0
            self.seed_resize_from_w = 0
        self.cached_uc = StableDiffusionProcessing.cached_uc
        self.cached_c = StableDiffusionProcessing.cached_c

    # A dataclass field that a property then replaces, as in the real class: p.sd_model is shared.sd_model.
    @property
    def sd_model(self):  # noqa: F811
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    def setup_scripts(self):
        self.scripts_setup_complete = True
        self.scripts.setup_scrips(self, is_ui=not self.is_api)

    def comment(self, text):
        self.comments[text] = 1

    def txt2img_image_conditioning(self, x, width=None, height=None):
        return txt2img_image_conditioning(self.sd_model, x, width or self.width, height or self.height)

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        raise NotImplementedError()

    def close(self):
        self.sampler = None
        self.c = None
        self.uc = None

    def get_token_merging_ratio(self, for_hr=False):
        if for_hr:
            return self.token_merging_ratio_hr or opts.token_merging_ratio_hr or self.get_token_merging_ratio()
        return self.token_merging_ratio or opts.token_merging_ratio

    def setup_prompts(self):
        if isinstance(self.prompt, list):
            self.all_prompts = self.prompt
        elif isinstance(self.negative_prompt, list):
            self.all_prompts = [self.prompt] * len(self.negative_prompt)
        else:
            self.all_prompts = self.batch_size * self.n_iter * [self.prompt]
        if isinstance(self.negative_prompt, list):
            self.all_negative_prompts = self.negative_prompt
        else:
            self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)
        if len(self.all_prompts) != len(self.all_negative_prompts):
            raise RuntimeError(f"Received a different number of prompts ({len(self.all_prompts)}) and negative "
                               f"prompts ({len(self.all_negative_prompts)})")
        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]

    def get_conds_with_caching(self, function, required_prompts, steps, caches, extra_network_data,
                               hires_steps=None):
        """Conds are cached per (prompts, steps, networks) in class-level caches shared by all ``p``."""
        cached_params = (required_prompts, steps, hires_steps, opts.use_old_scheduling, extra_network_data,
                         opts.CLIP_stop_at_last_layers, shared.sd_model.sd_checkpoint_info)
        for cache in caches:
            if cache[0] is not None and cached_params == cache[0]:
                return cache[1]
        cache = caches[0]
        with devices.autocast():
            cache[1] = function(shared.sd_model, required_prompts, steps, hires_steps, opts.use_old_scheduling)
        cache[0] = cached_params
        return cache[1]

    def setup_conds(self):
        prompts = prompt_parser.SdConditioning(self.prompts, width=self.width, height=self.height)
        negative_prompts = prompt_parser.SdConditioning(self.negative_prompts, width=self.width,
                                                        height=self.height, is_negative_prompt=True)
        sampler_config = sd_samplers.find_sampler_config(self.sampler_name)
        total_steps = sampler_config.total_steps(self.steps) if sampler_config else self.steps
        self.step_multiplier = total_steps // self.steps
        self.firstpass_steps = total_steps
        self.uc = self.get_conds_with_caching(prompt_parser.get_learned_conditioning, negative_prompts,
                                              total_steps, [self.cached_uc], self.extra_network_data)
        self.c = self.get_conds_with_caching(prompt_parser.get_multicond_learned_conditioning, prompts,
                                             total_steps, [self.cached_c], self.extra_network_data)

    def get_conds(self):
        return self.c, self.uc

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def save_samples(self) -> bool:
        return False


class Processed:
    def __init__(self, p: StableDiffusionProcessing, images_list, seed=-1, info="", subseed=None,
                 all_prompts=None, all_negative_prompts=None, all_seeds=None, all_subseeds=None,
                 index_of_first_image=0, infotexts=None, comments="", extra_images_list=None):
        self.images = images_list
        self.extra_images = extra_images_list or []
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.subseed_strength = p.subseed_strength
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.width = p.width
        self.height = p.height
        self.sampler_name = p.sampler_name
        self.cfg_scale = p.cfg_scale
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.denoising_strength = getattr(p, "denoising_strength", None)
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.job_timestamp = state.job_timestamp
        self.sd_model_name = p.sd_model_name
        self.is_using_inpainting_conditioning = p.is_using_inpainting_conditioning
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info] * len(images_list)
        self.version = "v1.10.1"

    def js(self):
        obj = {
            "prompt": self.all_prompts[0],
            "all_prompts": self.all_prompts,
            "negative_prompt": self.all_negative_prompts[0],
            "all_negative_prompts": self.all_negative_prompts,
            "seed": self.seed,
            "all_seeds": self.all_seeds,
            "subseed": self.subseed,
            "all_subseeds": self.all_subseeds,
            "subseed_strength": self.subseed_strength,
            "width": self.width,
            "height": self.height,
            "sampler_name": self.sampler_name,
            "cfg_scale": self.cfg_scale,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "denoising_strength": self.denoising_strength,
            "extra_generation_params": self.extra_generation_params,
            "index_of_first_image": self.index_of_first_image,
            "infotexts": self.infotexts,
            "job_timestamp": self.job_timestamp,
            "version": self.version,
        }
        return json.dumps(obj, default=lambda o: None)

    def infotext(self, p: StableDiffusionProcessing, index):
        return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, comments=[],
                               position_in_batch=index % self.batch_size, iteration=index // self.batch_size)


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None):
    """Prompt, negative prompt and the parameter line; ``p.extra_generation_params`` are merged in
    (None skipped, lists indexed per image, callables called), values quoted by ``infotext_utils.quote``."""
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts
    enable_hr = getattr(p, "enable_hr", False)
    token_merging_ratio = p.get_token_merging_ratio()
    token_merging_ratio_hr = p.get_token_merging_ratio(for_hr=True)
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]
    uses_ensd = opts.eta_noise_seed_delta != 0 and sd_samplers_common.is_sampler_using_eta_noise_seed_delta(p)
    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": p.scheduler,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Variation seed": None if p.subseed_strength == 0 else (
            p.all_subseeds[0] if use_main_prompt else all_subseeds[index]),
        "Variation seed strength": None if p.subseed_strength == 0 else p.subseed_strength,
        "Seed resize from": None if p.seed_resize_from_w <= 0 or p.seed_resize_from_h <= 0
        else f"{p.seed_resize_from_w}x{p.seed_resize_from_h}",
        "Denoising strength": p.extra_generation_params.get("Denoising strength"),
        "ENSD": opts.eta_noise_seed_delta if uses_ensd else None,
        "Token merging ratio": None if token_merging_ratio == 0 else token_merging_ratio,
        "Token merging ratio hr": None if not enable_hr or token_merging_ratio_hr == 0 else token_merging_ratio_hr,
        **p.extra_generation_params,
    }
    for key, value in generation_params.items():
        try:
            if isinstance(value, list):
                generation_params[key] = value[index]
            elif callable(value):
                generation_params[key] = value(**locals())
        except Exception:
            from modules import errors

            errors.report(f'Error creating infotext for key "{key}"', exc_info=True)
            generation_params[key] = None
    generation_params_text = ", ".join(
        [k if k == v else f"{k}: {infotext_utils.quote(v)}" for k, v in generation_params.items() if v is not None]
    )
    negative_prompt_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative_prompt_text}\n{generation_params_text}".strip()


def process_images(p: StableDiffusionProcessing) -> Processed:
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored_opts = {k: opts.data[k] for k in p.override_settings if k in opts.data}
    try:
        for k, v in p.override_settings.items():
            opts.set(k, v, is_api=True, run_callbacks=False)
        sd_models.apply_token_merging(p.sd_model, p.get_token_merging_ratio())
        sd_samplers.fix_p_invalid_sampler_and_scheduler(p)
        res = process_images_inner(p)
    finally:
        sd_models.apply_token_merging(p.sd_model, 0)
        if p.override_settings_restore_afterwards:
            for k, v in stored_opts.items():
                setattr(opts, k, v)
    return res


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    if isinstance(p.prompt, list):
        assert len(p.prompt) > 0
    else:
        assert p.prompt is not None
    devices.torch_gc()
    seed = get_fixed_seed(p.seed)
    subseed = get_fixed_seed(p.subseed)
    p.setup_prompts()
    if isinstance(seed, list):
        p.all_seeds = seed
    else:
        p.all_seeds = [int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
    if isinstance(subseed, list):
        p.all_subseeds = subseed
    else:
        p.all_subseeds = [int(subseed) + x for x in range(len(p.all_prompts))]

    if p.scripts is not None:
        p.scripts.process(p)

    infotexts = []
    output_images = []
    with torch.no_grad(), p.sd_model.ema_scope():
        with devices.autocast():
            p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
            sd_unet.apply_unet()
        if state.job_count == -1:
            state.job_count = p.n_iter

        for n in range(p.n_iter):
            p.iteration = n
            if state.skipped:
                state.skipped = False
            if state.interrupted or state.stopping_generation:
                break
            sd_models.reload_model_weights()
            p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            p.subseeds = p.all_subseeds[n * p.batch_size:(n + 1) * p.batch_size]
            latent_channels = getattr(shared.sd_model, "latent_channels", opt_C)
            p.rng = rng.ImageRNG((latent_channels, p.height // opt_f, p.width // opt_f), p.seeds,
                                 subseeds=p.subseeds, subseed_strength=p.subseed_strength,
                                 seed_resize_from_h=p.seed_resize_from_h, seed_resize_from_w=p.seed_resize_from_w)
            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds,
                                               subseeds=p.subseeds)
            if len(p.prompts) == 0:
                break
            p.parse_extra_network_prompts()
            if not p.disable_extra_networks:
                with devices.autocast():
                    extra_networks.activate(p, p.extra_network_data)
            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            p.setup_conds()
            if p.n_iter > 1:
                shared.state.job = f"Batch {n + 1} out of {p.n_iter}"
            sd_models.apply_alpha_schedule_override(p.sd_model, p)
            with devices.autocast():
                samples_ddim = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds,
                                        subseeds=p.subseeds, subseed_strength=p.subseed_strength, prompts=p.prompts)
            if p.scripts is not None:
                ps = scripts.PostSampleArgs(samples_ddim)
                p.scripts.post_sample(p, ps)
                samples_ddim = ps.samples
            if getattr(samples_ddim, "already_decoded", False):
                x_samples_ddim = samples_ddim
            else:
                devices.test_for_nans(samples_ddim, "unet")
                x_samples_ddim = decode_latent_batch(p.sd_model, samples_ddim, target_device=devices.cpu,
                                                     check_for_nans=True)
            x_samples_ddim = torch.stack(x_samples_ddim).float()
            x_samples_ddim = torch.clamp((x_samples_ddim + 1.0) / 2.0, min=0.0, max=1.0)
            del samples_ddim
            devices.torch_gc()
            state.nextjob()

            if p.scripts is not None:
                p.scripts.postprocess_batch(p, x_samples_ddim, batch_number=n)
                p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
                p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
                batch_params = scripts.PostprocessBatchListArgs(list(x_samples_ddim))
                p.scripts.postprocess_batch_list(p, batch_params, batch_number=n)
                x_samples_ddim = batch_params.images

            def infotext(index=0, use_main_prompt=False):
                return create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=use_main_prompt,
                                       index=index, all_negative_prompts=p.negative_prompts)

            for i, x_sample in enumerate(x_samples_ddim):
                p.batch_index = i
                x_sample = (255.0 * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8)
                image = Image.fromarray(x_sample)
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image
                mask_for_overlay = getattr(p, "mask_for_overlay", None)
                overlay_image = None
                if opts.overlay_inpaint and getattr(p, "overlay_images", None) is not None \
                        and i < len(p.overlay_images):
                    overlay_image = p.overlay_images[i]
                if p.scripts is not None:
                    ppmo = scripts.PostProcessMaskOverlayArgs(i, mask_for_overlay, overlay_image)
                    p.scripts.postprocess_maskoverlay(p, ppmo)
                    mask_for_overlay, overlay_image = ppmo.mask_for_overlay, ppmo.overlay_image
                image, _original_denoised_image = apply_overlay(image, p.paste_to, overlay_image)
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image_after_composite(p, pp)
                    image = pp.image
                text = infotext(i)
                infotexts.append(text)
                if opts.enable_pnginfo:
                    image.info["parameters"] = text
                output_images.append(image)
            del x_samples_ddim
            devices.torch_gc()

        if not infotexts:
            infotexts.append(Processed(p, []).infotext(p, 0))
        p.color_corrections = None
        index_of_first_image = 0

    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)
    devices.torch_gc()
    res = Processed(p, images_list=output_images, seed=p.all_seeds[0], info=infotexts[0],
                    subseed=p.all_subseeds[0], index_of_first_image=index_of_first_image, infotexts=infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str = None
    hr_sampler_name: str = None
    hr_scheduler: str = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""

    cached_hr_uc: ClassVar[list] = [None, None]
    cached_hr_c: ClassVar[list] = [None, None]

    hr_checkpoint_info: dict = field(default=None, init=False)
    hr_upscale_to_x: int = field(default=0, init=False)
    hr_upscale_to_y: int = field(default=0, init=False)
    truncate_x: int = field(default=0, init=False)
    truncate_y: int = field(default=0, init=False)
    applied_old_hires_behavior_to: tuple = field(default=None, init=False)
    latent_scale_mode: dict = field(default=None, init=False)
    hr_c: tuple | None = field(default=None, init=False)
    hr_uc: tuple | None = field(default=None, init=False)
    all_hr_prompts: list = field(default=None, init=False)
    all_hr_negative_prompts: list = field(default=None, init=False)
    hr_prompts: list = field(default=None, init=False)
    hr_negative_prompts: list = field(default=None, init=False)
    hr_extra_network_data: list = field(default=None, init=False)

    def __post_init__(self):
        super().__post_init__()
        if self.firstphase_width != 0 or self.firstphase_height != 0:
            self.hr_upscale_to_x = self.width
            self.hr_upscale_to_y = self.height
            self.width = self.firstphase_width
            self.height = self.firstphase_height
        self.cached_hr_uc = StableDiffusionProcessingTxt2Img.cached_hr_uc
        self.cached_hr_c = StableDiffusionProcessingTxt2Img.cached_hr_c

    def calculate_target_resolution(self):
        if self.hr_resize_x == 0 and self.hr_resize_y == 0:
            self.extra_generation_params["Hires upscale"] = self.hr_scale
            self.hr_upscale_to_x = int(self.width * self.hr_scale)
            self.hr_upscale_to_y = int(self.height * self.hr_scale)
        else:
            self.extra_generation_params["Hires resize"] = f"{self.hr_resize_x}x{self.hr_resize_y}"
            self.hr_upscale_to_x = self.hr_resize_x or self.hr_resize_y * self.width // self.height
            self.hr_upscale_to_y = self.hr_resize_y or self.hr_resize_x * self.height // self.width

    def init(self, all_prompts, all_seeds, all_subseeds):
        if self.enable_hr:
            self.extra_generation_params["Denoising strength"] = self.denoising_strength
            self.latent_scale_mode = shared.latent_upscale_modes.get(
                self.hr_upscaler if self.hr_upscaler is not None else shared.latent_upscale_default_mode, None)
            if self.latent_scale_mode is None:
                raise Exception(f"could not find upscaler named {self.hr_upscaler} (the stand-in has latent "
                                f"upscalers only: {list(shared.latent_upscale_modes)})")
            self.calculate_target_resolution()
            if not state.processing_has_refined_job_count:
                if state.job_count == -1:
                    state.job_count = self.n_iter
                total_steps = (self.steps + (self.hr_second_pass_steps or self.steps)) * state.job_count
                shared.total_tqdm.updateTotal(total_steps)
                state.job_count = state.job_count * 2
                state.processing_has_refined_job_count = True
            if self.hr_second_pass_steps:
                self.extra_generation_params["Hires steps"] = self.hr_second_pass_steps
            if self.hr_upscaler is not None:
                self.extra_generation_params["Hires upscaler"] = self.hr_upscaler

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng.next()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=x, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning,
                                      image_conditioning=self.txt2img_image_conditioning(x))
        del x
        if not self.enable_hr:
            return samples
        devices.torch_gc()
        return self.sample_hr_pass(samples, None, seeds, subseeds, subseed_strength, prompts)

    def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
        if shared.state.interrupted:
            return samples
        self.is_hr_pass = True
        target_width = self.hr_upscale_to_x
        target_height = self.hr_upscale_to_y
        self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)
        samples = torch.nn.functional.interpolate(samples, size=(target_height // opt_f, target_width // opt_f),
                                                  mode=self.latent_scale_mode["mode"],
                                                  antialias=self.latent_scale_mode["antialias"])
        image_conditioning = self.txt2img_image_conditioning(samples)
        shared.state.nextjob()
        self.rng = rng.ImageRNG(samples.shape[1:], self.seeds, subseeds=self.subseeds,
                                subseed_strength=self.subseed_strength, seed_resize_from_h=self.seed_resize_from_h,
                                seed_resize_from_w=self.seed_resize_from_w)
        noise = self.rng.next()
        devices.torch_gc()
        if not self.disable_extra_networks:
            with devices.autocast():
                extra_networks.activate(self, self.hr_extra_network_data)
        with devices.autocast():
            self.calculate_hr_conds()
        sd_models.apply_token_merging(self.sd_model, self.get_token_merging_ratio(for_hr=True))
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc,
                                              steps=self.hr_second_pass_steps or self.steps,
                                              image_conditioning=image_conditioning)
        sd_models.apply_token_merging(self.sd_model, self.get_token_merging_ratio())
        self.sampler = None
        devices.torch_gc()
        decoded_samples = decode_latent_batch(self.sd_model, samples, target_device=devices.cpu, check_for_nans=True)
        self.is_hr_pass = False
        return decoded_samples

    def close(self):
        super().close()
        self.hr_c = None
        self.hr_uc = None

    def setup_prompts(self):
        super().setup_prompts()
        if not self.enable_hr:
            return
        if self.hr_prompt == "":
            self.hr_prompt = self.prompt
        if self.hr_negative_prompt == "":
            self.hr_negative_prompt = self.negative_prompt
        if isinstance(self.hr_prompt, list):
            self.all_hr_prompts = self.hr_prompt
        else:
            self.all_hr_prompts = self.batch_size * self.n_iter * [self.hr_prompt]
        if isinstance(self.hr_negative_prompt, list):
            self.all_hr_negative_prompts = self.hr_negative_prompt
        else:
            self.all_hr_negative_prompts = self.batch_size * self.n_iter * [self.hr_negative_prompt]

    def calculate_hr_conds(self):
        if self.hr_c is not None:
            return
        hr_prompts = prompt_parser.SdConditioning(self.hr_prompts, width=self.hr_upscale_to_x,
                                                  height=self.hr_upscale_to_y)
        hr_negative_prompts = prompt_parser.SdConditioning(self.hr_negative_prompts, width=self.hr_upscale_to_x,
                                                           height=self.hr_upscale_to_y, is_negative_prompt=True)
        sampler_config = sd_samplers.find_sampler_config(self.hr_sampler_name or self.sampler_name)
        steps = self.hr_second_pass_steps or self.steps
        total_steps = sampler_config.total_steps(steps) if sampler_config else steps
        self.hr_uc = self.get_conds_with_caching(prompt_parser.get_learned_conditioning, hr_negative_prompts,
                                                 self.firstpass_steps, [self.cached_hr_uc, self.cached_uc],
                                                 self.hr_extra_network_data, total_steps)
        self.hr_c = self.get_conds_with_caching(prompt_parser.get_multicond_learned_conditioning, hr_prompts,
                                                self.firstpass_steps, [self.cached_hr_c, self.cached_c],
                                                self.hr_extra_network_data, total_steps)

    def setup_conds(self):
        if self.is_hr_pass:
            self.hr_c = None
            self.calculate_hr_conds()
            return
        super().setup_conds()
        self.hr_uc = None
        self.hr_c = None
        if self.enable_hr and opts.hires_fix_use_firstpass_conds:
            self.calculate_hr_conds()

    def get_conds(self):
        if self.is_hr_pass:
            return self.hr_c, self.hr_uc
        return super().get_conds()

    def parse_extra_network_prompts(self):
        res = super().parse_extra_network_prompts()
        if self.enable_hr:
            batch = slice(self.iteration * self.batch_size, (self.iteration + 1) * self.batch_size)
            self.hr_prompts = self.all_hr_prompts[batch]
            self.hr_negative_prompts = self.all_hr_negative_prompts[batch]
            self.hr_prompts, self.hr_extra_network_data = extra_networks.parse_prompts(self.hr_prompts)
        return res


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """img2img and inpainting as in the real class (``modules/processing.py`` L1557-1764): ``init`` makes the
    binary, blurred mask, the "Only masked" crop (``paste_to``), the overlay images, the init latent and the
    latent masks ``mask``/``nmask``; ``sample`` runs ``sample_img2img`` and blends the samples with the init
    latent outside the mask. Not mirrored: resize mode 3, colour correction, saving init images, the
    ``image_conditioning`` of inpainting/edit/depth/unCLIP models."""

    init_images: list = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float = None
    mask: Any = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float = None
    latent_mask: Any = None
    force_task_id: str = None

    image_mask: Any = field(default=None, init=False)
    nmask: torch.Tensor = field(default=None, init=False)
    image_conditioning: torch.Tensor = field(default=None, init=False)
    mask_for_overlay: Any = field(default=None, init=False)
    init_latent: torch.Tensor = field(default=None, init=False)

    def __post_init__(self):
        super().__post_init__()
        self.image_mask = self.mask
        self.mask = None
        self.initial_noise_multiplier = opts.initial_noise_multiplier if self.initial_noise_multiplier is None \
            else self.initial_noise_multiplier

    # A dataclass field that a property then replaces, as in the real class.
    @property
    def mask_blur(self):  # noqa: F811
        return self.mask_blur_x if self.mask_blur_x == self.mask_blur_y else None

    @mask_blur.setter
    def mask_blur(self, value):
        if isinstance(value, int):
            self.mask_blur_x = value
            self.mask_blur_y = value

    def _blurred(self, image_mask):
        """Separable Gaussian blur of the mask, x then y, with the real kernel sizes."""
        for sigma, horizontal in ((self.mask_blur_x, True), (self.mask_blur_y, False)):
            if sigma > 0:
                size = 2 * int(2.5 * sigma + 0.5) + 1
                kernel = (size, 1) if horizontal else (1, size)
                image_mask = Image.fromarray(cv2.GaussianBlur(np.array(image_mask), kernel, sigma))
        if self.mask_blur_x > 0 or self.mask_blur_y > 0:
            self.extra_generation_params["Mask blur"] = self.mask_blur
        return image_mask

    def init(self, all_prompts, all_seeds, all_subseeds):
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.image_cfg_scale = self._edit_image_cfg_scale()
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        if self.resize_mode == 3:
            raise NotImplementedError("the stand-in does not mirror resize mode 3 (latent upscale)")
        crop_region = None
        image_mask = self.image_mask
        if image_mask is not None:
            image_mask = create_binary_mask(image_mask, round=self.mask_round)
            if self.inpainting_mask_invert:
                image_mask = ImageOps.invert(image_mask)
                self.extra_generation_params["Mask mode"] = "Inpaint not masked"
            image_mask = self._blurred(image_mask)
            if self.inpaint_full_res:
                self.mask_for_overlay = image_mask
                mask = image_mask.convert("L")
                crop_region = masking.get_crop_region_v2(mask, self.inpaint_full_res_padding)
                if crop_region:
                    crop_region = masking.expand_crop_region(crop_region, self.width, self.height, mask.width,
                                                             mask.height)
                    x1, y1, x2, y2 = crop_region
                    image_mask = images.resize_image(2, mask.crop(crop_region), self.width, self.height)
                    self.paste_to = (x1, y1, x2 - x1, y2 - y1)
                    self.extra_generation_params["Inpaint area"] = "Only masked"
                    self.extra_generation_params["Masked area padding"] = self.inpaint_full_res_padding
                else:  # a blank mask: plain img2img, as the real one
                    crop_region = None
                    image_mask = None
                    self.mask_for_overlay = None
                    self.inpaint_full_res = False
            else:
                image_mask = images.resize_image(self.resize_mode, image_mask, self.width, self.height)
                doubled = np.clip(np.array(image_mask).astype(np.float32) * 2, 0, 255).astype(np.uint8)
                self.mask_for_overlay = Image.fromarray(doubled)
            self.overlay_images = []

        latent_mask = self.latent_mask if self.latent_mask is not None else image_mask
        imgs = []
        for img in self.init_images:
            image = images.flatten(img, opts.img2img_background_color)
            if crop_region is None:
                image = images.resize_image(self.resize_mode, image, self.width, self.height)
            if image_mask is not None:
                if self.mask_for_overlay.size != (image.width, image.height):
                    self.mask_for_overlay = images.resize_image(self.resize_mode, self.mask_for_overlay,
                                                                image.width, image.height)
                # The original outside the mask, transparent inside: pasted over the result after decoding.
                kept = Image.new("RGBa", (image.width, image.height))
                kept.paste(image.convert("RGBA").convert("RGBa"),
                           mask=ImageOps.invert(self.mask_for_overlay.convert("L")))
                self.overlay_images.append(kept.convert("RGBA"))
            if crop_region is not None:
                image = images.resize_image(2, image.crop(crop_region), self.width, self.height)
            if image_mask is not None and self.inpainting_fill != 1:
                image = masking.fill(image, latent_mask)
                if self.inpainting_fill == 0:
                    self.extra_generation_params["Masked content"] = "fill"
            imgs.append(np.moveaxis(np.array(image).astype(np.float32) / 255.0, 2, 0))

        if len(imgs) == 1:
            batch_images = np.expand_dims(imgs[0], axis=0).repeat(self.batch_size, axis=0)
            if self.overlay_images is not None:
                self.overlay_images = self.overlay_images * self.batch_size
        elif len(imgs) <= self.batch_size:
            self.batch_size = len(imgs)
            batch_images = np.array(imgs)
        else:
            raise RuntimeError(f"bad number of images passed: {len(imgs)}; expecting {self.batch_size} or less")
        image = torch.from_numpy(batch_images).to(shared.device, dtype=devices.dtype_vae)
        self.init_latent = sd_samplers_common.images_tensor_to_samples(
            image, sd_samplers_common.approximation_indexes.get(opts.sd_vae_encode_method), self.sd_model)

        if image_mask is not None:
            # The mask at latent size (a bilinear PIL resize of its RGB form), rounded, one copy per channel.
            latent_hw = (self.init_latent.shape[3], self.init_latent.shape[2])
            latmask = np.moveaxis(np.array(latent_mask.convert("RGB").resize(latent_hw), dtype=np.float32), 2, 0)
            latmask = latmask[0] / 255
            if self.mask_round:
                latmask = np.around(latmask)
            latmask = np.tile(latmask[None], (self.init_latent.shape[1], 1, 1))
            self.mask = torch.asarray(1.0 - latmask).to(shared.device).type(devices.dtype)
            self.nmask = torch.asarray(latmask).to(shared.device).type(devices.dtype)
            if self.inpainting_fill == 2:
                noise = create_random_tensors(self.init_latent.shape[1:], all_seeds[0:self.init_latent.shape[0]])
                self.init_latent = self.init_latent * self.mask + noise * self.nmask
                self.extra_generation_params["Masked content"] = "latent noise"
            elif self.inpainting_fill == 3:
                self.init_latent = self.init_latent * self.mask
                self.extra_generation_params["Masked content"] = "latent nothing"

        self.image_conditioning = self.img2img_image_conditioning(image * 2 - 1, self.init_latent, image_mask,
                                                                  self.mask_round)

    def _edit_image_cfg_scale(self):
        """The image CFG scale is kept for instruct-pix2pix ("edit") models only (A1111's ``init``; Forge 2 sets
        None: its stand-in overrides this)."""
        return self.image_cfg_scale if shared.sd_model.cond_stage_key == "edit" else None

    def img2img_image_conditioning(self, source_image, latent_image, image_mask=None, round_image_mask=True):
        """Non-inpainting models: a dummy (B, 5, 1, 1) zero tensor, as the real one."""
        if self.sampler.conditioning_key in {"hybrid", "concat"}:
            raise NotImplementedError("the stand-in has no inpainting models")
        return latent_image.new_zeros(latent_image.shape[0], 5, 1, 1)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        x = self.rng.next()
        if self.initial_noise_multiplier != 1.0:
            self.extra_generation_params["Noise multiplier"] = self.initial_noise_multiplier
            x *= self.initial_noise_multiplier
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=self.init_latent, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        samples = self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning,
                                              image_conditioning=self.image_conditioning)
        if self.mask is not None:
            samples = blend_with_init_latent(self, samples)
        del x
        devices.torch_gc()
        return samples

    def get_token_merging_ratio(self, for_hr=False):
        return self.token_merging_ratio or ("token_merging_ratio" in self.override_settings
                                            and opts.token_merging_ratio) \
            or opts.token_merging_ratio_img2img or opts.token_merging_ratio


def blend_with_init_latent(p, samples):
    """After sampling (``StableDiffusionProcessingImg2Img.sample``): the init latent outside the mask, then the
    scripts' ``on_mask_blend`` (soft inpainting) may replace the blend."""
    blended = samples * p.nmask + p.init_latent * p.mask
    if p.scripts is not None:
        mba = scripts.MaskBlendArgs(samples, p.nmask, p.init_latent, p.mask, blended)
        p.scripts.on_mask_blend(p, mba)
        blended = mba.blended_latent
    return blended
