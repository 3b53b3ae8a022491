"""``modules/rng.py``: per-image seeded noise. ``first()`` builds the initial noise (variation seed slerp,
"resize seed from"); later ``next()`` calls continue each image's own generator, re-seeded with
``seed + eta_noise_seed_delta`` after the first call when ENSD is set."""

from __future__ import annotations

import torch

from modules import devices, shared


def randn(seed, shape, generator=None):
    manual_seed(seed)
    return torch.randn(shape, device=devices.cpu, generator=generator).to(devices.device)


def randn_local(seed, shape):
    local_generator = torch.Generator(devices.cpu).manual_seed(int(seed))
    return torch.randn(shape, device=devices.cpu, generator=local_generator).to(devices.device)


def randn_like(x):
    return torch.randn_like(x, device=devices.cpu).to(x.device)


def randn_without_seed(shape, generator=None):
    return torch.randn(shape, device=devices.cpu, generator=generator).to(devices.device)


def manual_seed(seed):
    torch.manual_seed(seed)


def create_generator(seed):
    return torch.Generator(devices.cpu).manual_seed(int(seed))


def slerp(val, low, high):
    """Spherical interpolation between two noise tensors (variation seeds)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


class ImageRNG:
    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0,
                 seed_resize_from_w=0):
        self.shape = tuple(map(int, shape))
        self.seeds = seeds
        self.subseeds = subseeds
        self.subseed_strength = subseed_strength
        self.seed_resize_from_h = seed_resize_from_h
        self.seed_resize_from_w = seed_resize_from_w
        self.generators = [create_generator(seed) for seed in seeds]
        self.is_first = True

    def first(self):
        resized = self.seed_resize_from_h > 0 and self.seed_resize_from_w > 0
        noise_shape = (self.shape[0], int(self.seed_resize_from_h) // 8, int(self.seed_resize_from_w) // 8) \
            if resized else self.shape
        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators, strict=True)):
            subnoise = None
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = 0 if i >= len(self.subseeds) else self.subseeds[i]
                subnoise = randn(subseed, noise_shape)
            if noise_shape != self.shape:
                noise = randn(seed, noise_shape)
            else:
                noise = randn(seed, self.shape, generator=generator)
            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)
            if noise_shape != self.shape:
                # Paste the centre of the noise generated at the old size into noise of the new size.
                x = randn(seed, self.shape, generator=generator)
                dx = (self.shape[2] - noise_shape[2]) // 2
                dy = (self.shape[1] - noise_shape[1]) // 2
                w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
                h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
                tx, ty = max(dx, 0), max(dy, 0)
                dx, dy = max(-dx, 0), max(-dy, 0)
                x[:, ty:ty + h, tx:tx + w] = noise[:, dy:dy + h, dx:dx + w]
                noise = x
            xs.append(noise)
        eta_noise_seed_delta = shared.opts.eta_noise_seed_delta or 0
        if eta_noise_seed_delta:
            self.generators = [create_generator(seed + eta_noise_seed_delta) for seed in self.seeds]
        return torch.stack(xs).to(shared.device)

    def next(self):
        if self.is_first:
            self.is_first = False
            return self.first()
        xs = [randn_without_seed(self.shape, generator=generator) for generator in self.generators]
        return torch.stack(xs).to(shared.device)
