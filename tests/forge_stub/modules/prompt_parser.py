"""Forge 2 ``modules/prompt_parser.py`` (lllyasviel/stable-diffusion-webui-forge dfdcbab6): A1111's, with
``SdConditioning`` carrying ``distilled_cfg_scale`` (L139-154), which FLUX's engine reads as its guidance
(``backend/diffusion_engine/flux.py`` L90-92: ``getattr(prompt, 'distilled_cfg_scale', 3.5) or 3.5``)."""

from modules import load_a1111

_a1111 = load_a1111("prompt_parser")
globals().update({name: value for name, value in vars(_a1111).items() if not name.startswith("__")})


class SdConditioning(_a1111.SdConditioning):
    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None,
                 distilled_cfg_scale=None):  # fmt: skip
        super().__init__(prompts, is_negative_prompt, width, height, copy_from)
        copy_from = prompts if copy_from is None else copy_from
        self.distilled_cfg_scale = distilled_cfg_scale or getattr(copy_from, "distilled_cfg_scale", None)


_a1111.SdConditioning = SdConditioning  # the copy's functions build this one (copy_from keeps the scale)
