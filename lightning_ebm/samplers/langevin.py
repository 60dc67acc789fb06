"""Langevin samplers on an energy ``E`` (target density ``p(x) ~ exp(-E(x) / T)``), vectorised over chains.

* :func:`langevin_dynamics`: unadjusted Langevin, ``x <- x - step * grad E(x) + noise * eps``.
  With ``noise = sqrt(2 * step * T)`` it discretises the diffusion whose invariant law is
  ``exp(-E/T)``; JEM-style SGLD decouples the two (step 1, noise 0.01). With ``bounds`` each step
  is projected onto the box ``[low, high]^D`` (projected Langevin, as in Du & Mordatch 2019), for
  densities supported on the data's range.
* :func:`mala`: the Metropolis-adjusted version (Roberts & Tweedie 1996), exact for any step size:
  the proposal ``x' = x - a grad U(x) + sqrt(2a) eps`` with ``U = E/T`` is accepted with probability
  ``min(1, exp(U(x) - U(x') + log q(x | x') - log q(x' | x)))`` where
  ``log q(x' | x) = -||x' - x + a grad U(x)||^2 / (4a)`` (squared norm, per chain).

* :func:`latent_mala`: MALA in the latent space of a generator ``x = G(z)``, on the composed energy
  ``E(G(z)) / T`` plus the prior's energy (Kumar et al. 2019, Sec. 2.2: the latent manifold is
  flatter than the data's, so the chains move further).

All keep everything on the chains' device and never synchronise with the host inside the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lightning_ebm.utils import input_gradient

EnergyFn = Callable[[Tensor], Tensor]
LATENT_PRIORS = ("normal", "uniform", "none")


def langevin_dynamics(
    energy: EnergyFn,
    x: Tensor,
    num_steps: int,
    step_size: float,
    noise_scale: float | None = None,
    bounds: tuple[float, float] | None = None,
) -> Tensor:
    """Unadjusted Langevin steps from ``x``; ``noise_scale`` defaults to ``sqrt(2 * step_size)`` (T = 1).

    With ``bounds = (low, high)`` every step ends with the projection ``clamp(x, low, high)``.
    """
    noise = (2 * step_size) ** 0.5 if noise_scale is None else noise_scale
    for _ in range(num_steps):
        _, grad = input_gradient(energy, x)
        x = x - step_size * grad + noise * torch.randn_like(x)
        if bounds is not None:
            x = x.clamp(bounds[0], bounds[1])
    return x.detach()


def mala(
    energy: EnergyFn, x: Tensor, num_steps: int, step_size: float, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Metropolis-adjusted Langevin from ``x`` targeting ``exp(-E / temperature)``.

    Returns the final states and the acceptance rate per chain (mean over steps).
    """

    def potential(v: Tensor) -> tuple[Tensor, Tensor]:
        e, g = input_gradient(energy, v)
        return e / temperature, g / temperature

    def log_q(to: Tensor, frm: Tensor, grad_frm: Tensor) -> Tensor:
        return -(to - frm + step_size * grad_frm).flatten(1).pow(2).sum(1) / (4 * step_size)

    x = x.detach()
    u, grad = potential(x)
    accepted = torch.zeros(x.shape[0], device=x.device)
    shape = (-1,) + (1,) * (x.dim() - 1)
    for _ in range(num_steps):
        proposal = x - step_size * grad + (2 * step_size) ** 0.5 * torch.randn_like(x)
        u_new, grad_new = potential(proposal)
        log_ratio = u - u_new + log_q(x, proposal, grad_new) - log_q(proposal, x, grad)
        accept = torch.rand_like(log_ratio).log() < log_ratio
        x = torch.where(accept.view(shape), proposal, x)
        u = torch.where(accept, u_new, u)
        grad = torch.where(accept.view(shape), grad_new, grad)
        accepted += accept.float()
    return x, accepted / max(num_steps, 1)


def latent_mala(
    energy: EnergyFn,
    generator: Callable[[Tensor], Tensor],
    z: Tensor,
    num_steps: int,
    step_size: float,
    temperature: float = 1.0,
    prior: str = "normal",
) -> tuple[Tensor, Tensor]:
    """MALA on ``z`` targeting ``p(z) exp(-E(G(z)) / temperature)``: the generator's prior tilted by the
    energy of its output, so that ``G(z)`` of the final states follows the energy model more closely.

    Args:
        energy: ``E`` on the generator's outputs.
        generator: ``G``, in the mode it should sample in (evaluation mode for batch norm).
        z: starting latent codes, ``(chains, latent_dim)``.
        num_steps: MALA steps.
        step_size: Langevin step ``a``.
        temperature: ``T``; below 1 sharpens the target towards the energy's minima.
        prior: ``normal`` (``N(0, I)``: adds ``||z||^2 / 2``), ``uniform`` (``U(-1, 1)``: a proposal
            outside the cube has zero density and is rejected) or ``none``.

    Returns:
        The final latent codes and the acceptance rate per chain.
    """
    if prior not in LATENT_PRIORS:
        raise ValueError(f"prior must be one of {', '.join(LATENT_PRIORS)}, got {prior!r}")

    def latent_energy(v: Tensor) -> Tensor:
        u = energy(generator(v)) * (1.0 / temperature)
        if prior == "normal":
            u = u + 0.5 * v.flatten(1).pow(2).sum(1)
        elif prior == "uniform":
            outside = (v.abs() > 1).flatten(1).any(1)
            u = torch.where(outside, torch.full_like(u, math.inf), u)
        return u

    return mala(latent_energy, z, num_steps, step_size)
