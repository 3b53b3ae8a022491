"""The world's model: a small SD1-layout UNet, a CLIP-architecture text encoder, an AutoencoderKL, and a
kohya-format identity LoRA; building, saving (fp16 safetensors) and loading them; a reference host on them.

The UNet has SD1's block types and depth (3 cross-attention down levels, 2 layers per block: 16
transformer blocks, ldm ``input_blocks.1``-``8`` / ``middle_block`` / ``output_blocks.3``-``11``), so
FreeCure's layer presets and token grids apply unchanged; only the widths are cut. Images are 64 px, the
VAE factor is 8, so latents are 8 x 8 and attention runs at 8 x 8, 4 x 4 and 2 x 2.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from freecure.pipeline.diffusers_host import DiffusersHost

from .text import ClipTextEncoder, world_vocabulary

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
IMAGE_SIZE = 64
LATENT_SIZE = IMAGE_SIZE // 8
CONTEXT_DIM = 64

UNET_CONFIG = {
    "sample_size": LATENT_SIZE,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [16, 32, 32, 32],
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "cross_attention_dim": CONTEXT_DIM,
    "attention_head_dim": 4,  # diffusers' SD1 naming: this is the number of heads
}
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [16, 32, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": IMAGE_SIZE,
}
TEXT_CONFIG = {"width": CONTEXT_DIM, "heads": 4, "layers": 2}

# kohya's LoRA targets: the linear layers of the UNet's transformer blocks and of the text encoder.
_UNET_TARGET = re.compile(
    r"attentions\.\d+\.transformer_blocks\.\d+\.(attn[12]\.(to_[qkv]|to_out\.0)|ff\.net\.(0\.proj|2))$"
)
_TEXT_TARGET = re.compile(r"encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET_CONFIG)


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(**VAE_CONFIG)


def build_text_encoder() -> ClipTextEncoder:
    return ClipTextEncoder(world_vocabulary(), **TEXT_CONFIG)


def lora_targets(unet: nn.Module, text_encoder: nn.Module) -> dict[str, nn.Linear]:
    """kohya LoRA name (``lora_unet_down_blocks_0_...``, ``lora_te_text_model_...``) -> linear layer."""
    targets: dict[str, nn.Linear] = {}
    for prefix, model, pattern in (("lora_unet", unet, _UNET_TARGET), ("lora_te", text_encoder, _TEXT_TARGET)):
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and pattern.search(name):
                targets[f"{prefix}_{name.replace('.', '_')}"] = module
    return targets


def lora_deltas(state: dict[str, Tensor], targets: dict[str, nn.Linear]) -> dict[str, Tensor]:
    """Weight delta of each targeted layer at LoRA weight 1: up @ down * alpha / rank (kohya's rule)."""
    deltas = {}
    for name, module in targets.items():
        down, up = state[f"{name}.lora_down.weight"].float(), state[f"{name}.lora_up.weight"].float()
        alpha = float(state[f"{name}.alpha"]) if f"{name}.alpha" in state else down.shape[0]
        deltas[name] = (up @ down * (alpha / down.shape[0])).to(module.weight.dtype)
    unknown = {key.split(".")[0] for key in state} - set(targets)
    if unknown:
        raise ValueError(f"LoRA: keys for layers this model does not have: {sorted(unknown)[:3]}")
    return deltas


class MergedLora:
    """The identity switch of the reference host: LoRA merged into the weights (identity on) or the
    original weights restored exactly (identity off)."""

    def __init__(
        self, targets: dict[str, nn.Linear], deltas: dict[str, Tensor], weight: float,
        originals: dict[str, Tensor] | None = None,
    ) -> None:  # fmt: skip
        self.targets, self.deltas, self.weight = targets, deltas, weight
        self.originals = originals or {name: module.weight.detach().clone() for name, module in targets.items()}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __call__(self, on: bool) -> None:
        with torch.no_grad():
            for name, module in self.targets.items():
                original = self.originals[name]
                module.weight.copy_(original + self.weight * self.deltas[name] if on else original)

    def rows(self, flags: Sequence[bool] | None) -> None:
        """Per batch row (one-pass mode): the original weights, and the LoRA's delta added by forward hooks to
        the rows flagged on; None: the hooks off, the LoRA merged again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if flags is None:
            self(True)
            return
        self(False)
        on = torch.tensor(list(flags), dtype=torch.float32)
        for name, module in self.targets.items():
            self._handles.append(module.register_forward_hook(self._row_delta(self.weight * self.deltas[name], on)))

    @staticmethod
    def _row_delta(delta: Tensor, on: Tensor) -> Callable[..., Tensor]:
        def add(_module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            rows = on.to(output.device, output.dtype).view(-1, *[1] * (output.ndim - 1))
            return output + (inputs[0] @ delta.to(output.dtype).T) * rows

        return add


@dataclass
class WorldModel:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: ClipTextEncoder
    lora: dict[str, Tensor]

    def __post_init__(self) -> None:
        self.targets = lora_targets(self.unet, self.text_encoder)
        self.deltas = lora_deltas(self.lora, self.targets)
        self.base_weights = {name: module.weight.detach().clone() for name, module in self.targets.items()}

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images (B, 3, 64, 64) in [0, 1]."""
        with torch.no_grad():
            image = self.vae.decode(latents.float() / self.vae.config.scaling_factor).sample
        return ((image + 1) / 2).clamp(0, 1)

    def host(self, *, seed: int, steps: int = 20, lora_weight: float = 1.0, sampler: str = "euler",
             batch_size: int = 1) -> DiffusersHost:
        """The reference host on this model; identity = the LoRA merged at ``lora_weight`` (0: no LoRA).
        Every host starts from the base weights, whatever an earlier host left merged."""
        switch = MergedLora(self.targets, self.deltas, lora_weight, self.base_weights)
        switch(bool(lora_weight))
        identity = switch if lora_weight else None
        return DiffusersHost(
            self.unet, family="sd1", steps=steps, sampler=sampler, batch_size=batch_size,
            latent_hw=(LATENT_SIZE, LATENT_SIZE), seed=seed, text_encoder=self.text_encoder,
            set_identity=identity, identity_rows=switch.rows if lora_weight else None, decoder=self.decode,
        )  # fmt: skip


def _save(module_state: dict[str, Tensor], path: Path) -> None:
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in module_state.items()}, str(path))


def save_world_model(model: WorldModel, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    _save(model.unet.state_dict(), directory / "unet.safetensors")
    _save(model.vae.state_dict(), directory / "vae.safetensors")
    _save(model.text_encoder.state_dict(), directory / "text_encoder.safetensors")
    _save(model.lora, directory / "ohwx_lora.safetensors")
    config = {
        "vae_scaling_factor": model.vae.config.scaling_factor,
        "vocabulary": model.text_encoder.tokenizer.vocabulary,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1) + "\n")


def load_world_model(directory: Path = WEIGHTS_DIR) -> WorldModel:
    """The committed (or freshly trained) model, in float32 on the CPU, eval mode."""
    config = json.loads((directory / "config.json").read_text())
    unet, vae = build_unet(), build_vae()
    vae.register_to_config(scaling_factor=config["vae_scaling_factor"])
    text_encoder = ClipTextEncoder(config["vocabulary"], **TEXT_CONFIG)
    for module, name in ((unet, "unet"), (vae, "vae"), (text_encoder, "text_encoder")):
        state = {k: v.float() for k, v in load_file(str(directory / f"{name}.safetensors")).items()}
        module.load_state_dict(state)
        module.eval().requires_grad_(False)
    lora = {k: v.float() for k, v in load_file(str(directory / "ohwx_lora.safetensors")).items()}
    return WorldModel(unet, vae, text_encoder, lora)
