"""Builds the Forge 2 model objects around the tiny diffusers UNets: ``StableDiffusion`` (SD1) and
``StableDiffusionXL`` engines with ``forge_objects`` (UnetPatcher over ``KModel``, CLIP, VAE) and
``text_processing_engine`` (SD1) / ``text_processing_engine_l`` (SDXL)."""

from __future__ import annotations

import contextlib

import torch
from stand_in.sd_model import sd1_alphas_cumprod
from stand_in.text import ToyTextEncoder
from stand_in.vae import ToyVAE
from torch import nn

from backend import memory_management
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
from backend.modules.k_model import KModel
from backend.modules.k_prediction import Prediction
from backend.nn.unet import IntegratedUNet2DConditionModel
from backend.patcher.unet import ModelPatcher, UnetPatcher
from backend.text_processing.classic_engine import ClassicTextProcessingEngine, CLIPPatcher


class VAEPatcher:
    def __init__(self, vae: ToyVAE):
        self.first_stage_model = vae
        self.latent_channels = 4

    def encode(self, x):
        return self.first_stage_model.encode(x)

    def decode(self, z):
        return self.first_stage_model.decode(z)


class StandInEngine(ForgeDiffusionEngine):
    sd_checkpoint_info = None
    sd_model_hash = ""

    @contextlib.contextmanager
    def ema_scope(self):  # the A1111 processing code shared by the stand-ins enters it
        yield

    def __init__(self, family: str, unet: nn.Module, context_dim: int, pooled_dim: int):
        super().__init__()
        sdxl = family == "sdxl"
        self.is_sd1 = not sdxl
        self.is_sdxl = sdxl
        diffusion_model = IntegratedUNet2DConditionModel(unet, sdxl)
        k_model = KModel(diffusion_model, Prediction(sd1_alphas_cumprod()))
        text_encoder = ToyTextEncoder(context_dim, 11)
        clip = CLIPPatcher(ModelPatcher(text_encoder))
        engine = ClassicTextProcessingEngine(text_encoder)
        if sdxl:
            self.text_processing_engine_l = engine
            self.pooled_projection = nn.Linear(context_dim, pooled_dim)
            with torch.no_grad():
                generator = torch.Generator().manual_seed(5)
                for param in self.pooled_projection.parameters():
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        else:
            self.text_processing_engine = engine
        self.forge_objects = ForgeObjects(UnetPatcher(k_model), clip, VAEPatcher(ToyVAE()), None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()

    def get_learned_conditioning(self, prompt):
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        engine = self.text_processing_engine_l if self.is_sdxl else self.text_processing_engine
        crossattn = engine(list(prompt))
        if not self.is_sdxl:
            return crossattn
        width = getattr(prompt, "width", 1024) or 1024
        height = getattr(prompt, "height", 1024) or 1024
        pooled = self.pooled_projection(crossattn[:, 0])
        if getattr(prompt, "is_negative_prompt", False) and all(x == "" for x in prompt):
            crossattn = torch.zeros_like(crossattn)
            pooled = torch.zeros_like(pooled)
        size_ids = torch.tensor([[height, width, 0.0, 0.0, height, width]]).repeat(len(prompt), 1)
        return {"crossattn": crossattn, "vector": torch.cat([pooled, size_ids], dim=1)}

    def get_prompt_lengths_on_ui(self, prompt):
        engine = self.text_processing_engine_l if self.is_sdxl else self.text_processing_engine
        _, token_count = engine.tokenize_line(prompt)
        return token_count, engine.get_target_prompt_token_count(token_count)

    def encode_first_stage(self, x):
        return self.forge_objects.vae.encode(x)

    def decode_first_stage(self, x):
        return self.forge_objects.vae.decode(x)

    def get_first_stage_encoding(self, x):
        return x


def build_engine(family: str, unet: nn.Module, context_dim: int, pooled_dim: int) -> StandInEngine:
    return StandInEngine(family, unet, context_dim, pooled_dim)
