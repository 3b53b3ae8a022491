"""The reference host for FLUX: diffusers' ``FluxTransformer2DModel`` (flow matching, joint attention).

Flow matching in the k-diffusion form the rest of FreeCure uses: x_sigma = (1 - sigma) x0 + sigma * noise
with sigma in (0, 1], the model predicts the velocity v = noise - x0, and the denoiser returns
x0 = x - sigma * v. Then (x - x0) / sigma = v, so the x0-form Euler and Heun steps, the inversion and the
blend formula of ``freecure.sampling`` are the flow ODE's own (what ``sampling`` calls eps is the velocity
here). k-diffusion's ancestral step is the variance-exploding one, so Euler ancestral is not offered.

Guidance: a guidance-distilled transformer (FLUX.1 dev, ``guidance_embeds``) gets ``guidance`` as an
input and runs one conditional row per image when ``cfg_scale`` is 1; any other ``cfg_scale`` is real
CFG with unconditional rows, as Forge runs FLUX with a CFG above 1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from freecure.attention import AttentionEngine, LayerKey, RowTracker, joint_blocks, patch_grid
from freecure.attention.intercept_flux import intercept_flux_diffusers

from .diffusers_host import DiffusersHost, ToyTextEncoder
from .host import Branch


def flow_sigmas(steps: int, shift: float = 3.0) -> Tensor:
    """FLUX's schedule: ``steps`` times uniform in (0, 1], time-shifted by ``shift`` (sigma = s t / (1 + (s - 1) t),
    the schedule of FLUX.1 schnell; dev shifts by resolution), then a trailing 0."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1]
    sigmas = shift * t / (1 + (shift - 1) * t)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


class DiffusersFluxHost(DiffusersHost):
    """Reference :class:`~freecure.pipeline.host.Host` over a diffusers ``FluxTransformer2DModel``; see the
    module docstring. ``latent_hw`` is the VAE latent size (any, padded to even like Forge's flux.py)."""

    FAMILIES = ("flux",)
    SAMPLERS = ("euler", "heun")

    def __init__(self, transformer: nn.Module, *, guidance: float = 3.5, shift: float = 3.0, **kwargs: Any) -> None:
        if kwargs.get("karras"):
            raise ValueError("karras: flow-matching models use their own time-shifted schedule")
        self.guidance = float(guidance)
        self.shift = float(shift)
        super().__init__(transformer, family="flux", **kwargs)

    def attach(self, engine: AttentionEngine) -> Any:
        return intercept_flux_diffusers(engine, self.unet, RowTracker(engine))

    def layer_keys(self) -> list[LayerKey]:
        return list(joint_blocks(self.unet))

    # --- internals ------------------------------------------------------------------------------------

    def _default_text_encoder(self, seed: int) -> ToyTextEncoder:
        config = self.unet.config
        return ToyTextEncoder(config.joint_attention_dim, config.pooled_projection_dim, seed=seed)

    def _schedule(self, steps: int, karras: bool) -> Tensor:
        return flow_sigmas(steps, self.shift)

    def _latent_channels(self) -> int:
        return self.unet.config.in_channels // 4  # 2x2 patches

    def _added_cond(self, branches: tuple[Branch, ...]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        halves = ([t for b in branches for t in b.prompts], [t for b in branches for t in b.negative_prompts])
        return tuple(  # type: ignore[return-value]
            {"pooled": self.text_encoder.pooled(texts).to(self.device, self.dtype)} for texts in halves
        )

    def _x0(self, x: Tensor, sigma: Tensor, context: Tensor, added: dict[str, Tensor] | None) -> Tensor:
        """Velocity-predicting transformer -> x0 = x - sigma * v, on 2x2 patch tokens (FluxPipeline's packing)."""
        assert added is not None
        self.unet_calls += 1
        batch, channels, height, width = x.shape
        grid_h, grid_w = patch_grid((height, width))
        padded = F.pad(x, (0, 2 * grid_w - width, 0, 2 * grid_h - height), mode="circular")
        tokens = padded.view(batch, channels, grid_h, 2, grid_w, 2).permute(0, 2, 4, 1, 3, 5)
        tokens = tokens.reshape(batch, grid_h * grid_w, channels * 4)
        img_ids = torch.zeros(grid_h, grid_w, 3, device=x.device, dtype=x.dtype)
        img_ids[..., 1] += torch.arange(grid_h, device=x.device, dtype=x.dtype)[:, None]
        img_ids[..., 2] += torch.arange(grid_w, device=x.device, dtype=x.dtype)[None, :]
        txt_ids = torch.zeros(context.shape[1], 3, device=x.device, dtype=x.dtype)
        guidance = None
        if self.unet.config.guidance_embeds:
            guidance = torch.full((batch,), self.guidance, device=x.device, dtype=x.dtype)
        velocity = self.unet(
            hidden_states=tokens, encoder_hidden_states=context, pooled_projections=added["pooled"],
            timestep=sigma.to(x.dtype), img_ids=img_ids.view(-1, 3), txt_ids=txt_ids, guidance=guidance,
        ).sample  # fmt: skip
        velocity = velocity.view(batch, grid_h, grid_w, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
        velocity = velocity.reshape(batch, channels, 2 * grid_h, 2 * grid_w)[..., :height, :width]
        return x - sigma.view(-1, 1, 1, 1).to(x.dtype) * velocity
