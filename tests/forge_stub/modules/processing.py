"""Forge 2 ``modules/processing.py`` (lllyasviel/stable-diffusion-webui-forge dfdcbab6): A1111's, with Forge's
changes: ``p.uc = None`` at CFG 1; ``forge_objects`` reset to ``forge_objects_after_applying_lora`` before every
sampling call; ``process_before_every_sampling`` once in the first pass (after the reset, L1373-1377) and twice
in the hires pass: once still with the first pass's ``forge_objects``, then after the reset again (L1510-1526);
``p.extra_result_images`` shown after the images (``Processed.extra_images``); ``hr_cfg``; the prompts carrying
``distilled_cfg_scale`` / ``hr_distilled_cfg`` (FLUX's guidance). img2img and inpainting
as A1111's (``init`` unchanged but for ``before_process_init_images``, not mirrored; ``sample`` below)."""

from __future__ import annotations

from dataclasses import dataclass

from modules import load_a1111, prompt_parser

_a1111 = load_a1111("processing")
get_fixed_seed = _a1111.get_fixed_seed
create_random_tensors = _a1111.create_random_tensors
DecodedSamples = _a1111.DecodedSamples
decode_first_stage = _a1111.decode_first_stage
decode_latent_batch = _a1111.decode_latent_batch
txt2img_image_conditioning = _a1111.txt2img_image_conditioning
create_infotext = _a1111.create_infotext
StableDiffusionProcessing = _a1111.StableDiffusionProcessing


class Processed(_a1111.Processed):
    def __init__(self, p, images_list, *args, extra_images_list=None, **kwargs):
        super().__init__(p, images_list, *args, **kwargs)
        self.extra_images = p.extra_result_images if extra_images_list is None else extra_images_list


_a1111.Processed = Processed  # the private copy's process_images_inner builds Forge's Processed


def process_images(p):
    p.extra_result_images = []
    return _a1111.process_images(p)


def reset_forge_objects(p):
    p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()


def _setup_conds(self):
    """Forge's ``setup_conds`` (L491-492): A1111's, the prompts carrying ``distilled_cfg_scale``."""
    prompts = prompt_parser.SdConditioning(self.prompts, width=self.width, height=self.height,
                                           distilled_cfg_scale=self.distilled_cfg_scale)
    negative_prompts = prompt_parser.SdConditioning(self.negative_prompts, width=self.width, height=self.height,
                                                    is_negative_prompt=True,
                                                    distilled_cfg_scale=self.distilled_cfg_scale)
    sampler_config = _a1111.sd_samplers.find_sampler_config(self.sampler_name)
    total_steps = sampler_config.total_steps(self.steps) if sampler_config else self.steps
    self.step_multiplier = total_steps // self.steps
    self.firstpass_steps = total_steps
    self.uc = self.get_conds_with_caching(prompt_parser.get_learned_conditioning, negative_prompts,
                                          total_steps, [self.cached_uc], self.extra_network_data)
    self.c = self.get_conds_with_caching(prompt_parser.get_multicond_learned_conditioning, prompts,
                                         total_steps, [self.cached_c], self.extra_network_data)


_a1111.StableDiffusionProcessing.setup_conds = _setup_conds


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(_a1111.StableDiffusionProcessingTxt2Img):
    hr_cfg: float = 1.0
    distilled_cfg_scale: float = 3.5  # Forge declares it on StableDiffusionProcessing (L143)
    hr_distilled_cfg: float = 3.5  # L1203
    modified_noise = None

    def setup_conds(self):
        super().setup_conds()
        if self.cfg_scale == 1:
            self.uc = None
            print("Skipping unconditional conditioning when CFG = 1. Negative Prompts are ignored.")

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = _a1111.sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng.next()
        reset_forge_objects(self)
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=x, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        if self.modified_noise is not None:
            x, self.modified_noise = self.modified_noise, None
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning,
                                      image_conditioning=self.txt2img_image_conditioning(x))
        if not self.enable_hr:
            return samples
        return self.sample_hr_pass(samples, None, seeds, subseeds, subseed_strength, prompts)

    def calculate_hr_conds(self):
        """Forge's (L1575-1590): A1111's, the hires prompts carrying ``hr_distilled_cfg``."""
        if self.hr_c is not None:
            return
        size = {"width": self.hr_upscale_to_x, "height": self.hr_upscale_to_y,
                "distilled_cfg_scale": self.hr_distilled_cfg}  # fmt: skip
        hr_prompts = prompt_parser.SdConditioning(self.hr_prompts, **size)
        hr_negative_prompts = prompt_parser.SdConditioning(self.hr_negative_prompts, is_negative_prompt=True, **size)
        sampler_config = _a1111.sd_samplers.find_sampler_config(self.hr_sampler_name or self.sampler_name)
        steps = self.hr_second_pass_steps or self.steps
        total_steps = sampler_config.total_steps(steps) if sampler_config else steps
        self.hr_uc = self.get_conds_with_caching(prompt_parser.get_learned_conditioning, hr_negative_prompts,
                                                 self.firstpass_steps, [self.cached_hr_uc, self.cached_uc],
                                                 self.hr_extra_network_data, total_steps)
        self.hr_c = self.get_conds_with_caching(prompt_parser.get_multicond_learned_conditioning, hr_prompts,
                                                self.firstpass_steps, [self.cached_hr_c, self.cached_c],
                                                self.hr_extra_network_data, total_steps)

    def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
        """A1111's hires pass; the stand-in's scripts runner is wrapped so that the hires
        ``process_before_every_sampling`` is followed by the reset and a second call, as Forge does."""
        scripts = self.scripts
        if scripts is not None:
            self.scripts_value = _ForgeHiresScripts(scripts)
        try:
            return super().sample_hr_pass(samples, decoded_samples, seeds, subseeds, subseed_strength, prompts)
        finally:
            self.scripts_value = scripts


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(_a1111.StableDiffusionProcessingImg2Img):
    distilled_cfg_scale: float = 3.5
    hr_distilled_cfg: float = 3.5  # L1655
    modified_noise = None

    def _edit_image_cfg_scale(self):
        return None  # Forge 2's init: ``self.image_cfg_scale = None``

    def img2img_image_conditioning(self, source_image, latent_image, image_mask=None, round_image_mask=True):
        """Forge 2 (L360-376): inpainting models by ``sd_model.is_inpaint``, else the dummy zero tensor."""
        if self.sd_model.is_inpaint:
            raise NotImplementedError("the stand-in has no inpainting models")
        return latent_image.new_zeros(latent_image.shape[0], 5, 1, 1)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        """A1111's, with ``forge_objects`` reset before the hook and ``modified_noise`` (L1844-1880); the samples
        blended with the init latent outside the inpaint mask, as A1111's."""
        x = self.rng.next()
        if self.initial_noise_multiplier != 1.0:
            self.extra_generation_params["Noise multiplier"] = self.initial_noise_multiplier
            x *= self.initial_noise_multiplier
        reset_forge_objects(self)
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=self.init_latent, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        if self.modified_noise is not None:
            x, self.modified_noise = self.modified_noise, None
        samples = self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning,
                                              image_conditioning=self.image_conditioning)
        if self.mask is not None:
            samples = _a1111.blend_with_init_latent(self, samples)
        return samples


class _ForgeHiresScripts:
    """Forge's hires pass: before_hr, process_before_every_sampling, reset forge_objects, and
    process_before_every_sampling again."""

    def __init__(self, runner):
        self.runner = runner

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def process_before_every_sampling(self, p, **kwargs):
        self.runner.process_before_every_sampling(p, **kwargs)
        reset_forge_objects(p)
        self.runner.process_before_every_sampling(p, **kwargs)

