"""A1111's loaded model objects: ``LatentDiffusion`` (SD1) and sgm's ``DiffusionEngine`` (SDXL) as
``sd_models_xl`` extends it, with the attributes and methods the WebUI and extensions read."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from stand_in.ldm_unet import UNetModel
from stand_in.lora import LowRankPatcher
from stand_in.vae import ToyVAE


def sd1_alphas_cumprod() -> torch.Tensor:
    """The ``scaled_linear`` DDPM schedule of SD1/SD2/SDXL (beta 0.00085 -> 0.012, 1000 steps)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


class DiffusionWrapper(nn.Module):
    """``ldm.models.diffusion.ddpm.DiffusionWrapper``: ``model.diffusion_model`` and the cond routing."""

    def __init__(self, diffusion_model: nn.Module, conditioning_key: str = "crossattn"):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = conditioning_key

    def forward(self, x, t, c_concat=None, c_crossattn=None, c_adm=None):
        return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))


class OpenAIWrapper(DiffusionWrapper):
    """sgm's wrapper: ``model(x, t, cond_dict)`` with ``crossattn`` and ``vector``."""

    def forward(self, x, t, c, **kwargs):
        return self.diffusion_model(x, timesteps=t, context=c.get("crossattn"), y=c.get("vector"), **kwargs)


class _StandInModel(nn.Module):
    is_sd1 = False
    is_sd2 = False
    is_sdxl = False
    is_sd3 = False
    is_ssd = False
    parameterization = "eps"
    latent_channels = 4
    cond_stage_key = "txt"
    sd_model_hash = ""
    sd_model_checkpoint = "stand-in.safetensors"
    sd_checkpoint_info = None

    def _common(self, diffusion_model: UNetModel, text_encoder: nn.Module):
        self.alphas_cumprod = sd1_alphas_cumprod()
        self.alphas_cumprod_original = self.alphas_cumprod
        self.first_stage_model = ToyVAE(self.latent_channels)
        targets = {
            f"diffusion_model.{name}.{proj}": getattr(module, proj) if proj != "to_out" else module.to_out[0]
            for name, module in diffusion_model.named_modules()
            if name.endswith(("attn1", "attn2"))
            for proj in ("to_q", "to_k", "to_v", "to_out")
        }
        targets["text_encoder.proj"] = text_encoder.wrapped.proj
        # The LoRA state of the stand-in (what Lora's networks module keeps for the real model).
        self.lora_patcher = LowRankPatcher(targets)

    @contextlib.contextmanager
    def ema_scope(self, context=None):
        yield

    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z)

    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior):
        return encoder_posterior


class LatentDiffusion(_StandInModel):
    is_sd1 = True

    def __init__(self, unet: nn.Module, context_dim: int):
        super().__init__()
        from modules.sd_hijack_clip import FrozenCLIPEmbedderWithCustomWords

        self.model = DiffusionWrapper(UNetModel(unet, sdxl=False))
        self.cond_stage_model = FrozenCLIPEmbedderWithCustomWords(context_dim)
        self._common(self.model.diffusion_model, self.cond_stage_model)

    def get_learned_conditioning(self, c):
        return self.cond_stage_model(c)

    def apply_model(self, x_noisy, t, cond, return_ids=False):
        return self.model(x_noisy, t, **cond)


class GeneralConditioner(nn.Module):
    """sgm's conditioner; ``embedders[0]`` is the CLIP-L wrapper with ``tokenize_line``."""

    def __init__(self, embedder: nn.Module):
        super().__init__()
        self.embedders = nn.ModuleList([embedder])


class DiffusionEngine(_StandInModel):
    """SDXL. ``vector`` is the pooled text embedding followed by the six raw size/crop ids (the real
    one embeds the ids to 1536 values; the tiny UNet embeds them itself)."""

    is_sdxl = True

    def __init__(self, unet: nn.Module, context_dim: int, pooled_dim: int):
        super().__init__()
        from modules.sd_hijack_clip import FrozenCLIPEmbedderForSDXLWithCustomWords

        self.model = OpenAIWrapper(UNetModel(unet, sdxl=True))
        embedder = FrozenCLIPEmbedderForSDXLWithCustomWords(context_dim)
        self.conditioner = GeneralConditioner(embedder)
        self.cond_stage_model = self.conditioner
        self.pooled_projection = nn.Linear(context_dim, pooled_dim)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(5)
            for param in self.pooled_projection.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        self._common(self.model.diffusion_model, embedder)

    def get_learned_conditioning(self, batch):
        width = getattr(batch, "width", 1024) or 1024
        height = getattr(batch, "height", 1024) or 1024
        is_negative_prompt = getattr(batch, "is_negative_prompt", False)
        crossattn = self.conditioner.embedders[0](list(batch))
        pooled = self.pooled_projection(crossattn[:, 0])
        if is_negative_prompt and all(x == "" for x in batch):
            # sd_models_xl: an empty negative prompt gives zero embeddings (force_zero_embeddings).
            crossattn = torch.zeros_like(crossattn)
            pooled = torch.zeros_like(pooled)
        size_ids = torch.tensor([[height, width, 0.0, 0.0, height, width]]).repeat(len(batch), 1)
        return {"crossattn": crossattn, "vector": torch.cat([pooled, size_ids], dim=1)}

    def apply_model(self, x, t, cond):
        return self.model(x, t, cond)
