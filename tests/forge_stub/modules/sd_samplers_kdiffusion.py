"""Forge 2 ``modules/sd_samplers_kdiffusion.py``: the sigma table comes from the UNet's predictor
(``ForgeScheduleLinker``, with the model as its ``inner_model``) and sampling is wrapped in
``sampling_prepare``/``sampling_cleanup``. ``sample_img2img`` (dfdcbab6 L136-194) is A1111's: for the eps
models here Forge's ``predictor.noise_scaling(sigma_sched[0], noise, x)`` is A1111's ``x + noise * sigma``."""

from __future__ import annotations

import k_diffusion.external
import k_diffusion.sampling
from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare

from modules import load_a1111, sd_samplers_cfg_denoiser, sd_samplers_common, shared

_a1111 = load_a1111("sd_samplers_kdiffusion")
samplers_k_diffusion = _a1111.samplers_k_diffusion
sampler_extra_params = _a1111.sampler_extra_params


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = k_diffusion.external.ForgeScheduleLinker(
                shared.sd_model.forge_objects.unet.model.predictor)
            self.model_wrap.inner_model = shared.sd_model
        return self.model_wrap


class KDiffusionSampler(_a1111.KDiffusionSampler):
    def __init__(self, funcname, sd_model, options=None):
        sd_samplers_common.Sampler.__init__(self, funcname)
        self.extra_params = sampler_extra_params.get(funcname, [])
        self.options = options or {}
        self.func = funcname if callable(funcname) else getattr(k_diffusion.sampling, self.funcname)
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        unet_patcher = shared.sd_model.forge_objects.unet
        sampling_prepare(unet_patcher, x=x)
        try:
            return super().sample_img2img(p, x, noise, conditioning, unconditional_conditioning, steps,
                                          image_conditioning)
        finally:
            sampling_cleanup(unet_patcher)

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        unet_patcher = shared.sd_model.forge_objects.unet
        sampling_prepare(unet_patcher, x=x)
        try:
            return super().sample(p, x, conditioning, unconditional_conditioning, steps, image_conditioning)
        finally:
            sampling_cleanup(unet_patcher)


samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model),
                                   aliases, options)
    for label, funcname, aliases, options in samplers_k_diffusion
]
