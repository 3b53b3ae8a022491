"""Train the world's model from fixed seeds: VAE, then UNet + text encoder, then the identity LoRA.

The committed weights came from these two commands (the second retrains only the LoRA, on the base as saved):

    python -m freecure_world.train --vae-steps 2000 --base-steps 7000 --lora-steps 400
    python -m freecure_world.train --lora-only --lora-steps 2000 --lora-lr 5e-3 --lora-rank 8

One torch thread (on a shared 2-core machine more threads spin against each other). The figures of
the committed run (steps, losses, wall time) and the SHA-256 of every file it wrote go to
``<out>/TRAINING.json``; the tests never train.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from freecure.pipeline.diffusers_host import sd_sigma_table

from . import world
from .models import (
    IMAGE_SIZE,
    WorldModel,
    build_text_encoder,
    build_unet,
    build_vae,
    load_world_model,
    lora_targets,
    save_world_model,
)

SEED = 20241123


def image_tensor(portrait: world.Portrait) -> Tensor:
    """The portrait at the model's resolution, (3, 64, 64) in [-1, 1]."""
    rgb, _ = world.render(portrait)
    small = cv2.resize(rgb, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(small).permute(2, 0, 1).float() / 127.5 - 1


def train_vae(portraits: list[world.Portrait], images: Tensor, steps: int, log: dict) -> nn.Module:
    torch.manual_seed(SEED)
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(SEED)
    losses = []
    for step in range(steps):
        # 32 px crops: the VAE is convolutional, a quarter of the cost per sample (its mid-block
        # attention then sees 4 x 4 latents instead of 8 x 8).
        x, y = torch.randint(0, IMAGE_SIZE - 32 + 1, (2,), generator=gen).tolist()
        batch = images[torch.randint(0, len(images), (16,), generator=gen), :, y : y + 32, x : x + 32]
        posterior = vae.encode(batch).latent_dist
        # Decoded from the posterior mean: the posterior's noise (std 1 at the start) buried the content
        # for the whole of a short run; the sampler only ever sees encoded means anyway.
        reconstruction = vae.decode(posterior.mode()).sample
        loss = (reconstruction - batch).pow(2).mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 100 == 0:
            print(f"vae {step} {np.mean(losses[-100:]):.4f}", flush=True)
    log["vae"] = {"steps": steps, "final_loss": float(np.mean(losses[-100:]))}
    return vae.eval().requires_grad_(False)


def encode_latents(vae: nn.Module, images: Tensor) -> Tensor:
    with torch.no_grad():
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(256)])
    vae.register_to_config(scaling_factor=float(1 / means.std()))
    return means * vae.config.scaling_factor


def _alphas_cumprod() -> Tensor:
    sigmas = sd_sigma_table()
    return 1 / (1 + sigmas**2)  # sigma = sqrt((1 - abar) / abar)


def diffusion_loss(
    unet: nn.Module, text: nn.Module, latents: Tensor, prompts: list[str], gen: torch.Generator
) -> Tensor:
    abar = _alphas_cumprod()
    t = torch.randint(0, 1000, (latents.shape[0],), generator=gen)
    noise = torch.randn(latents.shape, generator=gen)
    a = abar[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    eps = unet(noisy, t, encoder_hidden_states=text.encode(prompts)).sample
    return (eps - noise).pow(2).mean()


def train_base(portraits: list[world.Portrait], latents: Tensor, steps: int, log: dict) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(SEED + 1)
    unet, text = build_unet(), build_text_encoder()
    ema = {name: p.detach().clone() for name, p in [*unet.named_parameters(), *text.named_parameters()]}
    params = [*unet.parameters(), *text.parameters()]
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    gen = torch.Generator().manual_seed(SEED + 2)
    rng = random.Random(SEED + 3)
    losses = []
    start = time.time()
    for step in range(steps):
        index = torch.randint(0, len(latents), (32,), generator=gen)
        prompts = ["" if rng.random() < 0.1 else world.caption(portraits[i], rng) for i in index.tolist()]
        loss = diffusion_loss(unet, text, latents[index], prompts, gen)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        decay = min(0.99, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, p in [*unet.named_parameters(), *text.named_parameters()]:
                ema[name].mul_(decay).add_(p.detach(), alpha=1 - decay)
        losses.append(loss.item())
        if step % 100 == 0:
            print(f"base {step} {np.mean(losses[-100:]):.4f} {time.time() - start:.0f}s", flush=True)
    with torch.no_grad():
        for name, p in [*unet.named_parameters(), *text.named_parameters()]:
            p.copy_(ema[name])
    log["base"] = {"steps": steps, "batch": 32, "final_loss": float(np.mean(losses[-200:]))}
    return unet.eval(), text.eval()


class _LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, gen: torch.Generator) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Parameter(torch.randn(rank, base.in_features, generator=gen) / rank)
        self.up = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + x @ self.down.T @ self.up.T  # alpha = rank: scale 1


def train_lora(
    unet: nn.Module, text: nn.Module, latents: Tensor, steps: int, rank: int, lr: float, log: dict
) -> dict[str, Tensor]:
    """DreamBooth-style: images of the subject with its usual look, captions naming only the trigger."""
    gen = torch.Generator().manual_seed(SEED + 4)
    targets = lora_targets(unet, text)
    wrapped: dict[str, _LoraLinear] = {}
    for name, module in targets.items():
        parent, _, child = _module_path(unet, text, module)
        wrapped[name] = _LoraLinear(module, rank, gen)
        setattr(parent, child, wrapped[name])
    params = [p for w in wrapped.values() for p in (w.down, w.up)]
    optimizer = torch.optim.AdamW(params, lr=lr)
    prompt = world.prompt([], subject=f"{world.TRIGGER} {world.CLASS_WORD}")
    losses = []
    try:
        for step in range(steps):
            loss = diffusion_loss(unet, text, latents.expand(16, -1, -1, -1), [prompt] * 16, gen)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if step % 50 == 0:
                print(f"lora {step} {np.mean(losses[-50:]):.4f}", flush=True)
    finally:
        for name, module in targets.items():
            parent, _, child = _module_path(unet, text, wrapped[name])
            setattr(parent, child, module)
    log["lora"] = {"steps": steps, "rank": rank, "lr": lr, "prompt": prompt, "final_loss": float(np.mean(losses[-50:]))}
    state: dict[str, Tensor] = {}
    for name, w in wrapped.items():
        state[f"{name}.lora_down.weight"] = w.down.detach().clone()
        state[f"{name}.lora_up.weight"] = w.up.detach().clone()
        state[f"{name}.alpha"] = torch.tensor(float(rank))
    return state


def _module_path(unet: nn.Module, text: nn.Module, target: nn.Module) -> tuple[nn.Module, str, str]:
    for model in (unet, text):
        for name, module in model.named_modules():
            for child_name, child in module.named_children():
                if child is target:
                    return module, name, child_name
    raise LookupError("module not found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "weights")
    parser.add_argument("--portraits", type=int, default=6000)
    parser.add_argument("--vae-steps", type=int, default=400)
    parser.add_argument("--base-steps", type=int, default=450)
    parser.add_argument("--lora-steps", type=int, default=120)
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--lora-only", action="store_true",
                        help="keep the VAE, UNet and text encoder in --out (as saved) and train only the LoRA")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    log: dict = {"seed": SEED, "args": {k: str(v) for k, v in vars(args).items()}}
    if args.lora_only:
        base = load_world_model(args.out)
        previous = json.loads((args.out / "TRAINING.json").read_text())
        log.update({key: previous[key] for key in ("vae", "base")}, base_args=previous["args"])
        _finish(base.unet, base.vae, base.text_encoder, args, log, start)
        return
    rng = random.Random(SEED)
    portraits = [world.random_portrait(rng) for _ in range(args.portraits)]
    images = torch.stack([image_tensor(p) for p in portraits])
    vae = train_vae(portraits, images, args.vae_steps, log)
    with torch.no_grad():
        check = images[:8]
        reconstruction = vae.decode(vae.encode(check).latent_dist.mode()).sample
        log["vae"]["full_image_mse"] = float((reconstruction - check).pow(2).mean())
    print(log["vae"], flush=True)
    latents = encode_latents(vae, images)
    unet, text = train_base(portraits, latents, args.base_steps, log)
    _finish(unet, vae, text, args, log, start)


def _finish(
    unet: nn.Module, vae: nn.Module, text: nn.Module, args: argparse.Namespace, log: dict, start: float
) -> None:
    """Train the identity LoRA on the subject's portrait, save everything with the log and the hashes."""
    subject = image_tensor(world.Portrait(world.SUBJECT, world.SUBJECT_LOOK))[None]
    with torch.no_grad():
        subject_latent = vae.encode(subject).latent_dist.mean * vae.config.scaling_factor
    lora = train_lora(unet, text, subject_latent, args.lora_steps, args.lora_rank, args.lora_lr, log)
    save_world_model(WorldModel(unet, vae, text, lora), args.out)
    log["wall_s"] = round(time.time() - start)
    log["sha256"] = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(args.out.iterdir())
        if path.suffix in (".safetensors", ".json") and path.name != "TRAINING.json"
    }
    (args.out / "TRAINING.json").write_text(json.dumps(log, indent=1) + "\n")
    print(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
