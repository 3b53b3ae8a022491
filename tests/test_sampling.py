"""Sigma-space sampling math against closed-form solutions of the probability-flow ODE.

For Gaussian data N(0, s_d^2) the ideal denoiser is x0 = x s_d^2 / (sigma^2 + s_d^2) and the ODE has
the exact solution x(sigma) = x(sigma_T) sqrt(sigma^2 + s_d^2) / sqrt(sigma_T^2 + s_d^2); for a single
data point mu the exact solution is mu + (x_T - mu) sigma / sigma_T. Both give references that do not
come from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freecure import sampling

SIGMA_DATA = 0.8


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
    sigma = sigma.view(-1, *([1] * (x.ndim - 1))) if sigma.ndim else sigma
    return x * SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)


def exact_gaussian(x_from: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    return x_from * math.sqrt(sigma_to**2 + SIGMA_DATA**2) / math.sqrt(sigma_from**2 + SIGMA_DATA**2)


def sd_table() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()


def test_euler_step_matches_float64_formula_and_lands_on_x0_at_sigma_zero():
    gen = torch.Generator().manual_seed(0)
    x, x0 = torch.randn(2, 4, 3, 5, generator=gen), torch.randn(2, 4, 3, 5, generator=gen)
    stepped = sampling.euler_step(x, x0, 2.0, 1.25)
    expected = x.double() + (x.double() - x0.double()) / 2.0 * (1.25 - 2.0)
    torch.testing.assert_close(stepped.double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(sampling.euler_step(x, x0, 3.0, 0.0), x0, rtol=0, atol=1e-6)
    per_row = sampling.euler_step(x, x0, torch.tensor([2.0, 4.0]), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(per_row[1], sampling.euler_step(x[1:], x0[1:], 4.0, 1.0)[0])


def test_euler_on_a_single_data_point_follows_the_exact_ode_solution_at_every_step():
    mu = torch.full((1, 4, 2, 2), 0.3)
    x_t = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(1)) * 10
    sigmas = sampling.karras_sigmas(7, 0.05, 10.0)
    seen = []
    out = sampling.sample_euler(
        lambda x, s: mu.expand_as(x), x_t, sigmas, callback=lambda d: seen.append(d["x"].clone())
    )
    for x, sigma in zip(seen, sigmas[:-1], strict=True):
        torch.testing.assert_close(x, mu + (x_t - mu) * float(sigma) / float(sigmas[0]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, mu, rtol=0, atol=1e-5)


def ode_error(sampler, steps: int) -> float:
    x_t = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2)).double() * 5
    sigmas = sampling.karras_sigmas(steps, 0.1, 5.0).double()
    # Stop at the last nonzero sigma so the exact solution is not the trivial x0.
    out = sampler(gaussian_denoiser, x_t, sigmas[:-1])
    return float((out - exact_gaussian(x_t, float(sigmas[0]), float(sigmas[-2]))).abs().max())


def test_heun_is_second_order_and_euler_first_order():
    euler = [ode_error(sampling.sample_euler, n) for n in (8, 16, 32)]
    heun = [ode_error(sampling.sample_heun, n) for n in (8, 16, 32)]
    print("ODE error euler", euler, "heun", heun)
    assert 1.6 < euler[1] / euler[2] < 2.5  # halving the step halves the error
    assert 3.2 < heun[1] / heun[2] < 5.0  # ... and quarters it for Heun
    assert heun[2] < euler[2] / 10


def count_calls(sampler, steps: int, **kwargs) -> int:
    calls = []

    def model(x, sigma):
        calls.append(float(sigma[0]))
        return gaussian_denoiser(x, sigma)

    sampler(model, torch.ones(2, 4, 2, 2), sampling.karras_sigmas(steps, 0.1, 5.0), **kwargs)
    return len(calls)


def test_call_counts_per_sampler():
    noise = lambda s, s_next: torch.zeros(2, 4, 2, 2)  # noqa: E731
    assert count_calls(sampling.sample_euler, 6) == sampling.model_calls("euler", 6) == 6
    assert count_calls(sampling.sample_euler_ancestral, 6, noise_sampler=noise) == 6
    assert count_calls(sampling.sample_heun, 6) == sampling.model_calls("heun", 6) == 11
    with pytest.raises(ValueError, match="sampler must be one of"):
        sampling.model_calls("dpm", 6)


@given(st.floats(0.01, 20), st.floats(0.0, 0.99), st.floats(0.0, 1.0))
def test_ancestral_step_preserves_the_target_variance(sigma_from, ratio, eta):
    sigma_to = sigma_from * ratio
    down, up = sampling.get_ancestral_step(sigma_from, sigma_to, eta)
    assert 0 <= down <= sigma_to + 1e-12 and up >= 0
    assert math.isclose(down**2 + up**2, sigma_to**2, rel_tol=1e-9, abs_tol=1e-12)
    assert sampling.get_ancestral_step(sigma_from, sigma_to, 0.0) == (sigma_to, 0.0)


def test_ancestral_uses_the_supplied_noise_stream_and_reduces_to_euler_at_eta_zero():
    sigmas = sampling.karras_sigmas(5, 0.1, 5.0)
    x_t = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(3)) * 5

    def stream(seed):
        gen = torch.Generator().manual_seed(seed)
        pairs = []

        def draw(sigma, sigma_next):
            pairs.append((float(sigma), float(sigma_next)))
            return torch.randn(1, 4, 3, 3, generator=gen)

        return draw, pairs

    draw_a, pairs = stream(7)
    draw_b, _ = stream(7)
    draw_c, _ = stream(8)
    a = sampling.sample_euler_ancestral(gaussian_denoiser, x_t, sigmas, noise_sampler=draw_a)
    b = sampling.sample_euler_ancestral(gaussian_denoiser, x_t, sigmas, noise_sampler=draw_b)
    c = sampling.sample_euler_ancestral(gaussian_denoiser, x_t, sigmas, noise_sampler=draw_c)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert pairs == [(float(sigmas[i]), float(sigmas[i + 1])) for i in range(4)]  # none on the step to 0
    draw_d, _ = stream(9)
    deterministic = sampling.sample_euler_ancestral(
        gaussian_denoiser, x_t, sigmas, eta=0.0, noise_sampler=draw_d
    )
    torch.testing.assert_close(deterministic, sampling.sample_euler(gaussian_denoiser, x_t, sigmas))


def test_karras_schedule_shape():
    sigmas = sampling.karras_sigmas(10, 0.03, 14.6)
    assert sigmas.shape == (11,) and float(sigmas[-1]) == 0.0
    assert math.isclose(float(sigmas[0]), 14.6, rel_tol=1e-6)
    assert math.isclose(float(sigmas[-2]), 0.03, rel_tol=1e-6)
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_sigmas_from_table_spans_the_table_uniformly_in_t():
    table = sd_table()
    sigmas = sampling.sigmas_from_table(table, 10)
    assert sigmas.shape == (11,) and float(sigmas[-1]) == 0.0
    torch.testing.assert_close(sigmas[0], table[-1])
    torch.testing.assert_close(sigmas[-2], table[0])
    t = sampling.sigma_to_t(sigmas[:-1], table)
    torch.testing.assert_close(t.float(), torch.linspace(999, 0, 10), rtol=0, atol=1e-3)
    # Integer t gives the table entry; fractional t interpolates log sigma.
    at_integers = sampling.t_to_sigma(torch.tensor([0.0, 500.0, 999.0]), table)
    torch.testing.assert_close(at_integers, table[[0, 500, 999]])
    half = sampling.t_to_sigma(torch.tensor([10.5]), table.double())
    assert math.isclose(float(half), math.sqrt(float(table[10]) * float(table[11])), rel_tol=1e-9)


def test_apg_schedules():
    sigmas = sampling.karras_sigmas(10, 0.1, 5.0)
    assert torch.equal(sampling.regeneration_sigmas(sigmas, 0.5), sigmas[5:])
    assert torch.equal(sampling.inversion_sigmas(sigmas, 0.5), sigmas[5:10].flip(0))
    assert torch.equal(sampling.regeneration_sigmas(sigmas, 1.0), sigmas)
    assert sampling.inversion_sigmas(sigmas, 0.0).numel() == 0
    assert sampling.apg_step_count(10, 0.26) == 3
    with pytest.raises(ValueError, match="apg_strength"):
        sampling.inversion_sigmas(sigmas, 1.5)
    with pytest.raises(ValueError, match="ending with 0"):
        sampling.regeneration_sigmas(sigmas[:-1], 0.5)


def test_inversion_then_regeneration_reconstructs_better_with_more_steps():
    x0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(4)).double() * SIGMA_DATA
    errors = []
    for steps in (10, 20, 40):
        sigmas = sampling.karras_sigmas(steps, 0.05, 5.0).double()
        z = sampling.invert(lambda z, s: gaussian_denoiser(z, s), x0, sampling.inversion_sigmas(sigmas, 1.0))
        back = sampling.sample_euler(gaussian_denoiser, z, sampling.regeneration_sigmas(sigmas, 1.0))
        errors.append(float((back - x0).abs().max() / x0.abs().max()))
    print("inversion round-trip relative error (10, 20, 40 steps):", errors)
    # First order: doubling the steps about halves the error.
    assert errors[0] > 1.6 * errors[1] and errors[1] > 1.6 * errors[2] and errors[2] < 0.08


def test_invert_rejects_bad_schedules():
    with pytest.raises(ValueError, match="start above 0"):
        sampling.invert(gaussian_denoiser, torch.zeros(1), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="ascending"):
        sampling.invert(gaussian_denoiser, torch.zeros(1), torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        sampling.karras_sigmas(0, 0.1, 1.0)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 15.0), st.floats(0.0, 1.0))
def test_blend_outside_mask_is_exact_and_inside_follows_the_eps_formula(seed, sigma, weight):
    gen = torch.Generator().manual_seed(seed)
    x_p, x0_p, x_f, x0_f = (torch.randn(2, 4, 6, 5, generator=gen) * 3 for _ in range(4))
    mask = torch.rand(2, 1, 6, 5, generator=gen) > 0.5
    blended = sampling.blend_prediction(x_p, x0_p, x_f, x0_f, weight * mask.float())
    outside = ~mask.expand_as(x_p)
    assert torch.equal(blended[outside], x0_p[outside])
    # Inside: x0 = x_p - sigma * ((1 - a) e_p + a e_f), computed in float64 from the eps form.
    e_p = (x_p.double() - x0_p.double()) / sigma
    e_f = (x_f.double() - x0_f.double()) / sigma
    expected = x_p.double() - sigma * ((1 - weight) * e_p + weight * e_f)
    inside = mask.expand_as(x_p)
    torch.testing.assert_close(blended.double()[inside], expected[inside], rtol=0, atol=1e-5)
