"""Mode metrics against cases whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_ebm.datamodules import mode_centres, sample_toy2d
from lightning_ebm.evaluation import (
    mass_near_modes,
    mode_metrics,
    mode_sharpness,
    modes_at_energy_minima,
    spurious_minima,
)


def test_true_samples_cover_every_mode_uniformly() -> None:
    centres, std = mode_centres("25gaussians")
    x = sample_toy2d("25gaussians", 25_000, torch.Generator().manual_seed(0))
    m = mode_metrics(x, centres, std)
    assert m["modes"] == 25
    assert m["hq_fraction"] == pytest.approx(1 - math.exp(-4.5), abs=0.003)
    # counts of high-quality samples are multinomial: E[KL] ~ (K - 1) / (2 n) = 5e-4
    assert m["kl"] == pytest.approx(0.0, abs=2e-3)


def test_collapsed_samples() -> None:
    centres, std = mode_centres("8gaussians")
    x = centres[3].expand(100, 2) + 0.1 * std * torch.randn(100, 2)
    m = mode_metrics(x, centres, std)
    assert m == {"modes": 1.0, "hq_fraction": 1.0, "kl": pytest.approx(math.log(8))}


def test_off_mode_samples_are_low_quality() -> None:
    centres, std = mode_centres("25gaussians")
    midpoints = (centres[:-1] + centres[1:]) / 2  # halfway between neighbours: far from every centre
    m = mode_metrics(midpoints, centres, std)
    assert m["hq_fraction"] == 0.0 and m["modes"] == 0.0 and m["kl"] == pytest.approx(math.log(25))


def test_two_modes_known_kl_and_non_finite_samples() -> None:
    centres = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    x = torch.cat([centres[0].expand(3, 2), centres[1].expand(1, 2), torch.full((1, 2), float("nan"))])
    m = mode_metrics(x, centres, std=0.01)
    p = torch.tensor([0.75, 0.25])
    assert m["modes"] == 2 and m["hq_fraction"] == pytest.approx(4 / 5)
    assert m["kl"] == pytest.approx(float((p * torch.log(p * 4)).sum()))


def _mixture_energy(centres: torch.Tensor, std: float, spurious: torch.Tensor | None = None, weight: float = 0.0):
    """``-log`` of the equal-weight Gaussian mixture on ``centres`` (plus a component of mass ``weight``
    at ``spurious``, of the same std), up to a constant."""

    def energy(x: torch.Tensor) -> torch.Tensor:
        logp = -(torch.cdist(x.double(), centres.double()) ** 2) / (2 * std**2)
        logp = torch.logsumexp(logp, 1) + math.log((1 - weight) / centres.shape[0])
        if spurious is not None:
            extra = -((x.double() - spurious.double()) ** 2).sum(1) / (2 * std**2) + math.log(weight)
            logp = torch.logaddexp(logp, extra)
        return -logp

    return energy


@pytest.mark.parametrize("name", ["25gaussians", "8gaussians"])
def test_mass_near_modes_of_the_true_mixture_is_the_chi2_probability(name: str) -> None:
    centres, std = mode_centres(name)
    mass = mass_near_modes(_mixture_energy(centres, std), centres, std)
    assert mass == pytest.approx(1 - math.exp(-4.5), abs=0.004)  # P(chi^2_2 < 9)
    assert mass_near_modes(_mixture_energy(centres, std), centres, std, threshold=2.0) == pytest.approx(
        1 - math.exp(-2.0), abs=0.006
    )


def test_a_spurious_basin_between_modes_takes_its_mass_away() -> None:
    centres, std = mode_centres("25gaussians")
    between = (centres[0] + centres[1]) / 2  # halfway between two neighbouring modes
    energy = _mixture_energy(centres, std, spurious=between, weight=0.2)
    assert mass_near_modes(energy, centres, std) == pytest.approx(0.8 * (1 - math.exp(-4.5)), abs=0.005)
    # a flat energy (no modes at all) puts only the modes' share of the grid's area near them
    flat = mass_near_modes(lambda x: torch.zeros(x.shape[0]), centres, std)
    assert flat < 0.05


def test_every_centre_of_the_true_mixture_is_an_energy_minimum_and_a_shifted_one_is_not() -> None:
    centres, std = mode_centres("25gaussians")
    assert modes_at_energy_minima(_mixture_energy(centres, std), centres, radius=0.1) == 25
    # the same mixture with three components moved by 2 std: those centres sit on a slope
    moved = centres.clone()
    moved[:3, 0] += 2 * std
    assert modes_at_energy_minima(_mixture_energy(moved, std), centres, radius=0.1 * std) == 22
    # no minimum anywhere on a tilted plane
    assert modes_at_energy_minima(lambda x: x[:, 0], centres, radius=0.1) == 0


@pytest.mark.parametrize("name", ["25gaussians", "8gaussians"])
def test_the_true_mixture_has_no_spurious_minimum_and_an_extra_basin_is_one(name: str) -> None:
    centres, std = mode_centres(name)
    assert spurious_minima(_mixture_energy(centres, std), centres, std) == 0
    neighbour = int(torch.cdist(centres[:1], centres[1:]).argmin()) + 1
    between = (centres[0] + centres[neighbour]) / 2  # halfway between two neighbouring modes
    assert spurious_minima(_mixture_energy(centres, std, spurious=between, weight=0.01), centres, std) == 1
    # a broad basin at every mode (std x 8, as a short-trained energy has) is still no spurious minimum
    assert spurious_minima(_mixture_energy(centres, 8 * std), centres, std) == 0
    # a bowl centred between the modes has its one minimum there
    assert spurious_minima(lambda x: (x - between).pow(2).sum(1), centres, std) == 1


@pytest.mark.parametrize("name", ["25gaussians", "8gaussians"])
def test_mode_sharpness_is_one_for_the_true_mixture_and_scales_with_the_energy(name: str) -> None:
    centres, std = mode_centres(name)
    energy = _mixture_energy(centres, std)
    assert mode_sharpness(energy, centres, std) == pytest.approx(1.0, rel=1e-3)
    # an energy 100 times as sharp (the temperature 1/100 version of the mixture) reads 100; basins
    # twice as wide as the data's read 1/4
    assert mode_sharpness(lambda x: 100 * energy(x), centres, std) == pytest.approx(100.0, rel=1e-3)
    assert mode_sharpness(_mixture_energy(centres, 2 * std), centres, std) == pytest.approx(0.25, rel=1e-2)

    # an anisotropic quadratic bowl at each centre: the mean of its two curvatures
    def bowl(x: torch.Tensor) -> torch.Tensor:
        squares = (x[:, None].double() - centres.double()) ** 2 * torch.tensor([1.0, 9.0], dtype=torch.float64)
        return (squares / (2 * std**2)).sum(2).min(1).values

    assert mode_sharpness(bowl, centres, std) == pytest.approx(5.0, rel=1e-3)
