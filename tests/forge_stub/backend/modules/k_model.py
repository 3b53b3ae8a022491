"""``backend/modules/k_model.py``: ``KModel`` = diffusion model + predictor; ``apply_model`` returns x0;
``storage_dtype`` (the weights' dtype: the stand-in's are float32), which LoRA loading reads."""

import torch
from torch import nn


class KModel(nn.Module):
    def __init__(self, diffusion_model: nn.Module, predictor: nn.Module):
        super().__init__()
        self.storage_dtype = torch.float32
        self.computation_dtype = torch.float32
        self.diffusion_model = diffusion_model
        self.predictor = predictor

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        sigma = t
        xc = self.predictor.calculate_input(sigma, x)
        timestep = self.predictor.timestep(sigma).float()
        out = self.diffusion_model(xc, timestep, context=c_crossattn, control=control,
                                   transformer_options=transformer_options or {}, **kwargs).float()
        return self.predictor.calculate_denoised(sigma, out, x)

    def memory_required(self, input_shape):
        return 0
