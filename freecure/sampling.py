"""Sigma-space sampling math for a denoiser that returns x0 (the k-diffusion convention).

Every model here is ``model(x, sigma_batch, **extra_args) -> x0``: the WebUI's CFG denoisers and the
reference diffusers host both wrap eps-, v- and SDXL models this way, so one set of formulas serves all.
With z = x0 + sigma * eps, the ODE direction at (z, sigma) is eps = (z - x0) / sigma.

The sampler functions have the k-diffusion signature ``fn(model, x, sigmas, extra_args, callback, ...)``
so a WebUI can run them in place of its own; ``callback`` gets the k-diffusion dict
``{"x", "i", "sigma", "sigma_hat", "denoised"}``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

Denoiser = Callable[..., Tensor]
NoiseSampler = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict[str, Any]], None]


# --- single steps ---------------------------------------------------------------------------------


def to_eps(x: Tensor, x0: Tensor, sigma: Tensor | float) -> Tensor:
    """The noise direction (x - x0) / sigma at noise level ``sigma``."""
    return (x - x0) / _broadcast(sigma, x)


def euler_step(x: Tensor, x0: Tensor, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
    """One deterministic Euler step from ``sigma`` to ``sigma_next`` (DDIM with eta 0 in sigma space).

    Works in both directions: with ``sigma_next > sigma`` it is the usual DDIM-inversion step.
    """
    sigma_t = _broadcast(sigma, x)
    return x + to_eps(x, x0, sigma_t) * (_broadcast(sigma_next, x) - sigma_t)


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split an ancestral step into a deterministic part down to ``sigma_down`` and fresh noise of
    size ``sigma_up``, so that sigma_down**2 + sigma_up**2 == sigma_to**2 (k-diffusion's convention)."""
    sigma_from, sigma_to = float(sigma_from), float(sigma_to)
    if eta == 0 or sigma_to == 0:
        return sigma_to, 0.0
    variance_ratio = sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2
    sigma_up = min(sigma_to, eta * math.sqrt(max(variance_ratio, 0.0)))
    sigma_down = math.sqrt(sigma_to**2 - sigma_up**2)
    return sigma_down, sigma_up


def blend_prediction(x_p: Tensor, x0_p: Tensor, x_f: Tensor, x0_f: Tensor, weight_map: Tensor) -> Tensor:
    """Noise blending: pull the personalized guided prediction toward the foundation's inside a mask.

    With e = (x_t - x0) / sigma the blend is e = (1 - a M) e_p + a M e_f, i.e.
    x0 = x0_p - sigma * a M * (e_f - e_p) = x0_p - a M * ((x_f - x0_f) - (x_p - x0_p)):
    sigma cancels, and where ``weight_map`` (= a * M, broadcastable to x) is 0 the result is x0_p exactly.
    """
    return x0_p - weight_map * ((x_f - x0_f) - (x_p - x0_p))


# --- schedules --------------------------------------------------------------------------------------


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) schedule: ``n`` sigmas from ``sigma_max`` to ``sigma_min``, then a trailing 0."""
    _check_steps(n)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def sigma_to_t(sigma: Tensor, table: Tensor) -> Tensor:
    """Fractional timestep of ``sigma`` in an ascending sigma ``table`` by log-linear interpolation
    (k-diffusion's ``DiscreteSchedule.sigma_to_t``)."""
    log_table = table.log()
    log_sigma = sigma.to(table.dtype).log()
    dists = log_sigma[..., None] - log_table
    low = dists.ge(0).cumsum(dim=-1).argmax(dim=-1).clamp(max=log_table.numel() - 2)
    high = low + 1
    low_val, high_val = log_table[low], log_table[high]
    weight = ((low_val - log_sigma) / (low_val - high_val)).clamp(0, 1)
    return (1 - weight) * low + weight * high


def t_to_sigma(t: Tensor, table: Tensor) -> Tensor:
    """Sigma at fractional timestep ``t`` of an ascending sigma ``table`` (log-linear interpolation)."""
    log_table = table.log()
    low = t.floor().long().clamp(0, log_table.numel() - 1)
    high = t.ceil().long().clamp(0, log_table.numel() - 1)
    frac = t - low.to(t.dtype)
    return ((1 - frac) * log_table[low] + frac * log_table[high]).exp()


def sigmas_from_table(table: Tensor, n: int) -> Tensor:
    """``n`` sigmas uniform in timestep from the table's last to its first entry, plus a trailing 0
    (k-diffusion's ``get_sigmas``; the WebUI's "uniform"/"automatic" schedule)."""
    _check_steps(n)
    t = torch.linspace(table.numel() - 1, 0, n, dtype=torch.float64)
    sigmas = t_to_sigma(t, table.double())
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def apg_step_count(n_steps: int, fraction: float) -> int:
    """Number of schedule steps APG inverts and regenerates: round(fraction * n_steps)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"apg_strength must be a fraction in [0, 1], got {fraction!r}")
    return round(fraction * n_steps)


def inversion_sigmas(sigmas: Tensor, fraction: float) -> Tensor:
    """Ascending sigmas for inverting the last round(fraction * n) steps of a descending schedule.

    The clean latent is treated as z at the lowest nonzero sigma (the model cannot be evaluated at 0),
    so this is ``regeneration_sigmas(sigmas, fraction)[:-1]`` reversed: the inversion retraces exactly
    the points the regeneration will visit.
    """
    return regeneration_sigmas(sigmas, fraction)[:-1].flip(0)


def regeneration_sigmas(sigmas: Tensor, fraction: float) -> Tensor:
    """The tail of a descending schedule (with trailing 0) that regenerates round(fraction * n) steps."""
    _check_schedule(sigmas)
    n_steps = sigmas.numel() - 1
    count = apg_step_count(n_steps, fraction)
    return sigmas[n_steps - count :] if count else sigmas[-1:]


# --- loops --------------------------------------------------------------------------------------------


def invert(
    denoise: Callable[[Tensor, Tensor], Tensor], x0_latent: Tensor, sigmas_ascending: Tensor
) -> Tensor:
    """Deterministic inversion: Euler steps with increasing sigma, each evaluated at the current point.

    ``denoise(z, sigma)`` returns x0; ``x0_latent`` is taken as z at ``sigmas_ascending[0]`` (> 0).
    Returns z at ``sigmas_ascending[-1]``.
    """
    if sigmas_ascending.numel() and float(sigmas_ascending[0]) <= 0:
        raise ValueError("inversion sigmas must start above 0: the model cannot be evaluated at sigma 0")
    if bool((sigmas_ascending[1:] < sigmas_ascending[:-1]).any()):
        raise ValueError("inversion sigmas must be ascending")
    z = x0_latent
    for sigma, sigma_next in itertools.pairwise(sigmas_ascending):
        z = euler_step(z, denoise(z, sigma), sigma, sigma_next)
    return z


@torch.no_grad()
def sample_euler(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """Deterministic Euler sampler: one model call per step."""
    extra_args = dict(extra_args or {})
    ones = x.new_ones(x.shape[0])
    for i in range(sigmas.numel() - 1):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        x = euler_step(x, denoised, sigmas[i], sigmas[i + 1])
    return x


@torch.no_grad()
def sample_euler_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """Euler ancestral sampler. ``noise_sampler(sigma, sigma_next)`` supplies the fresh noise; hosts pass
    one built from the main pass's generator so that two passes draw the same noise (default: randn)."""
    extra_args = dict(extra_args or {})
    draw = noise_sampler or (lambda _sigma, _sigma_next: torch.randn_like(x))
    ones = x.new_ones(x.shape[0])
    for i in range(sigmas.numel() - 1):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = euler_step(x, denoised, sigmas[i], sigma_down)
        if float(sigmas[i + 1]) > 0:  # drawn even when eta is 0, as k-diffusion does, to keep the stream
            x = x + draw(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


@torch.no_grad()
def sample_heun(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """Heun's second-order sampler: two model calls per step, one on the last step (to sigma 0)."""
    extra_args = dict(extra_args or {})
    ones = x.new_ones(x.shape[0])
    for i in range(sigmas.numel() - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        _report(callback, x, i, sigma, denoised)
        direction = to_eps(x, denoised, sigma)
        step = sigma_next - sigma
        if float(sigma_next) == 0:
            x = x + direction * step
            continue
        x_euler = x + direction * step
        direction_next = to_eps(x_euler, model(x_euler, sigma_next * ones, **extra_args), sigma_next)
        x = x + (direction + direction_next) / 2 * step
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "euler_a": sample_euler_ancestral,
    "heun": sample_heun,
}


def model_calls(sampler: str, n_steps: int) -> int:
    """Denoiser calls a sampler makes over ``n_steps`` steps (Heun: two per step, one on the last)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    return 2 * n_steps - 1 if sampler == "heun" else n_steps


# --- helpers --------------------------------------------------------------------------------------------


def _broadcast(value: Tensor | float, like: Tensor) -> Tensor:
    """A scalar or per-row sigma shaped to broadcast over ``like`` (B, C, H, W)."""
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if tensor.ndim == 1 and tensor.numel() == like.shape[0]:
        return tensor.view(-1, *([1] * (like.ndim - 1)))
    return tensor


def _report(callback: Callback | None, x: Tensor, i: int, sigma: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


def _check_steps(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"steps must be a positive integer, got {n!r}")


def _check_schedule(sigmas: Tensor) -> None:
    if sigmas.ndim != 1 or sigmas.numel() < 2 or float(sigmas[-1]) != 0.0:
        raise ValueError("sigmas must be a 1-D descending schedule ending with 0 (k-diffusion convention)")
