"""A test extension standing in for A1111's built-in soft inpainting
(``extensions-builtin/soft-inpainting/scripts/soft_inpainting.py`` at 82a973c0; Forge 2 ships the same): an
img2img-only AlwaysOn script titled "Soft Inpainting" whose first argument is its enable flag; when on it turns
the mask rounding off (``process``) and replaces the per-step mask blend with a blend whose mask softens with
sigma (``on_mask_blend``; the final blend keeps the sampled latent). The real blend's arithmetic is not
mirrored: only that it differs from the plain one."""

import torch
from modules import scripts
from modules.ui_components import InputAccordion


class FakeSoftInpainting(scripts.Script):
    def title(self):
        return "Soft Inpainting"

    def show(self, is_img2img):
        return scripts.AlwaysVisible if is_img2img else False

    def ui(self, is_img2img):
        with InputAccordion(False, label="Soft inpainting", elem_id="soft_inpainting_enabled") as enabled:
            pass
        return [enabled]

    def process(self, p, enabled):
        if enabled and getattr(p, "image_mask", None) is not None:
            p.mask_round = False
            p.extra_generation_params["Soft inpainting enabled"] = True

    def on_mask_blend(self, p, mba, enabled):
        if not enabled:
            return
        if mba.is_final_blend:
            mba.blended_latent = mba.current_latent
            return
        soft = torch.clamp(mba.nmask * (1.0 + float(mba.sigma.flatten()[0])), 0.0, 1.0)
        mba.blended_latent = mba.current_latent * soft + mba.init_latent * (1.0 - soft)
