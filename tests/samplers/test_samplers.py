"""Langevin samplers against a known invariant distribution (an anisotropic Gaussian)."""

from __future__ import annotations

import torch

from lightning_ebm.samplers import langevin_dynamics, latent_mala, mala

MEAN = torch.tensor([1.0, -2.0])
STD = torch.tensor([0.5, 2.0])


def gaussian_energy(x: torch.Tensor) -> torch.Tensor:
    return ((x - MEAN) / STD).pow(2).sum(1) / 2


def test_mala_samples_the_target_exactly_even_with_a_large_step() -> None:
    torch.manual_seed(0)
    x0 = torch.randn(4000, 2) * 3
    x, rate = mala(gaussian_energy, x0, num_steps=300, step_size=0.2)
    torch.testing.assert_close(x.mean(0), MEAN, atol=0.1, rtol=0)
    torch.testing.assert_close(x.std(0), STD, atol=0.06, rtol=0)
    assert 0.0 < float(rate.mean()) < 1.0
    # unadjusted Langevin with the same step is biased as its closed form says: for a Gaussian its
    # stationary std is sigma / sqrt(1 - h / (2 sigma^2)) = 0.5 / sqrt(0.6) = 0.645 in the narrow direction
    y = langevin_dynamics(gaussian_energy, x0, num_steps=300, step_size=0.2)
    assert abs(float(y.std(0)[0]) - 0.5 / 0.6**0.5) < 0.03


def test_mala_at_a_temperature_widens_the_target() -> None:
    torch.manual_seed(1)
    x, _ = mala(gaussian_energy, torch.zeros(4000, 2), num_steps=300, step_size=0.1, temperature=4.0)
    torch.testing.assert_close(x.std(0), 2 * STD, atol=0.15, rtol=0)  # exp(-E/T): std times sqrt(T)


def test_langevin_with_a_small_step_matches_the_target() -> None:
    torch.manual_seed(2)
    x = langevin_dynamics(gaussian_energy, torch.zeros(4000, 2), num_steps=2000, step_size=0.01)
    torch.testing.assert_close(x.mean(0), MEAN, atol=0.1, rtol=0)
    torch.testing.assert_close(x.std(0), STD, atol=0.08, rtol=0)


def test_mala_works_on_image_shaped_chains() -> None:
    energy = lambda v: v.flatten(1).pow(2).sum(1) / 2  # noqa: E731
    x, rate = mala(energy, torch.randn(8, 1, 4, 4), num_steps=5, step_size=0.05)
    assert x.shape == (8, 1, 4, 4) and rate.shape == (8,)


def test_latent_mala_with_a_uniform_prior_stays_in_the_cube_and_samples_it_uniformly() -> None:
    """G = identity and a flat energy: the target is U(-1, 1)^2 (mean 0, variance 1/3); proposals that
    leave the cube have zero density and must be rejected, never kept."""
    z, rate = latent_mala(lambda x: 0 * x.sum(1), lambda v: v, torch.zeros(4000, 2), 200, 0.05, prior="uniform")
    assert z.abs().max() <= 1.0
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=0.03, rtol=0)
    torch.testing.assert_close(z.var(0), torch.full((2,), 1 / 3), atol=0.02, rtol=0)
    assert 0.0 < float(rate.mean()) < 1.0


def test_latent_mala_tilts_the_normal_prior_by_the_energy_of_the_generated_points() -> None:
    """G(z) = 2 z, E(x) = ||x - 1||^2 / 2 at temperature 1/2: the target exp(-||z||^2/2 - ||2z - 1||^2) is
    the Gaussian N(mean 4/9 * 1, variance 1/9) (precision 1 + 8 = 9, mean (4 * 1) / 9)."""
    energy = lambda x: 0.5 * (x - 1).pow(2).sum(1)  # noqa: E731
    z, _ = latent_mala(energy, lambda v: 2 * v, torch.zeros(4000, 2), 300, 0.05, temperature=0.5)
    torch.testing.assert_close(z.mean(0), torch.full((2,), 4 / 9), atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(0), torch.full((2,), 1 / 9), atol=0.01, rtol=0)
