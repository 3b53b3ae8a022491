"""Forge 2 ``modules/sd_samplers_cfg_denoiser.py``: ``on_cfg_denoiser`` gets the *unbatched* x (one row per
image) with the reconstructed conds; CFG runs in ``backend.sampling.sampling_function``;
``on_cfg_denoised`` is never called; ``on_cfg_after_cfg`` is. Inpainting (``forward``, dfdcbab6 L190-230): before
the call the latent outside the mask is the init latent noised with fresh global-RNG noise, after it the
denoised latent is the init latent there (``on_mask_blend`` may replace the blend)."""

from __future__ import annotations

import torch
from backend.sampling.sampling_function import sampling_function

from modules import prompt_parser, sd_samplers_common
from modules.script_callbacks import (
    AfterCFGCallbackParams,
    CFGDenoiserParams,
    cfg_after_cfg_callback,
    cfg_denoiser_callback,
)
from modules.shared import opts, state


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.model_wrap = None
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.steps = None
        self.total_steps = None
        self.step = 0
        self.image_cfg_scale = None
        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        self.sampler = sampler
        self.p = None
        self.mask_before_denoising = False

    @property
    def inner_model(self):
        raise NotImplementedError()

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException
        cond_composition, cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step) if uncond is not None else None
        if self.mask is not None:
            # Inpainting: outside the mask the UNet sees the init latent noised to this sigma, with noise
            # from torch's global generator (``torch.randn_like``, not ``p.rng``).
            predictor = self.inner_model.inner_model.forge_objects.unet.model.predictor
            noisy_init = predictor.noise_scaling(sigma[:, None, None, None],
                                                 torch.randn_like(self.init_latent).to(self.init_latent),
                                                 self.init_latent, max_denoise=False)
            x = x * self.nmask + noisy_init * self.mask
        denoiser_params = CFGDenoiserParams(x, image_cond, sigma, state.sampling_step, state.sampling_steps, cond,
                                            uncond, self)
        cfg_denoiser_callback(denoiser_params)
        if self.p.is_hr_pass:
            cond_scale = self.p.hr_cfg
        if opts.skip_early_cond > 0 and self.step / self.total_steps <= opts.skip_early_cond:
            cond_scale = 1.0
            self.p.extra_generation_params["Skip Early CFG"] = opts.skip_early_cond
        elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            cond_scale = 1.0
            self.p.extra_generation_params["NGMS"] = s_min_uncond
        denoised, cond_pred, _ = sampling_function(self, denoiser_params=denoiser_params, cond_scale=cond_scale,
                                                   cond_composition=cond_composition)
        if self.mask is not None:
            blended = denoised * self.nmask + self.init_latent * self.mask
            if self.p.scripts is not None:
                from modules import scripts

                mba = scripts.MaskBlendArgs(denoised, self.nmask, self.init_latent, self.mask, blended,
                                            denoiser=self, sigma=sigma)
                self.p.scripts.on_mask_blend(self.p, mba)
                blended = mba.blended_latent
            denoised = blended
        self.sampler.last_latent = self.get_pred_x0(x, cond_pred, sigma)
        sd_samplers_common.store_latent(self.sampler.last_latent)
        after_cfg_callback_params = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after_cfg_callback_params)
        denoised = after_cfg_callback_params.x
        self.step += 1
        return denoised
