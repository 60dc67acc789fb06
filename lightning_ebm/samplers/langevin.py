"""Langevin samplers on an energy ``E`` (target density ``p(x) ~ exp(-E(x) / T)``), vectorised over chains.

* :func:`langevin_dynamics`: unadjusted Langevin, ``x <- x - step * grad E(x) + noise * eps``.
  With ``noise = sqrt(2 * step * T)`` it discretises the diffusion whose invariant law is
  ``exp(-E/T)``; JEM-style SGLD decouples the two (step 1, noise 0.01).
* :func:`mala`: the Metropolis-adjusted version (Roberts & Tweedie 1996), exact for any step size:
  the proposal ``x' = x - a grad U(x) + sqrt(2a) eps`` with ``U = E/T`` is accepted with probability
  ``min(1, exp(U(x) - U(x') + log q(x | x') - log q(x' | x)))`` where
  ``log q(x' | x) = -||x' - x + a grad U(x)||^2 / (4a)`` (squared norm, per chain).

Both keep everything on the chains' device and never synchronise with the host inside the loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

EnergyFn = Callable[[Tensor], Tensor]


def _energy_and_grad(energy: EnergyFn, x: Tensor) -> tuple[Tensor, Tensor]:
    # Lightning validates under ``inference_mode``; gradients need it off and a normal copy of ``x``.
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        e = energy(x)
        (grad,) = torch.autograd.grad(e.sum(), x)
    return e.detach(), grad.detach()


def langevin_dynamics(
    energy: EnergyFn, x: Tensor, num_steps: int, step_size: float, noise_scale: float | None = None
) -> Tensor:
    """Unadjusted Langevin steps from ``x``; ``noise_scale`` defaults to ``sqrt(2 * step_size)`` (T = 1)."""
    noise = (2 * step_size) ** 0.5 if noise_scale is None else noise_scale
    for _ in range(num_steps):
        _, grad = _energy_and_grad(energy, x)
        x = x - step_size * grad + noise * torch.randn_like(x)
    return x.detach()


def mala(
    energy: EnergyFn, x: Tensor, num_steps: int, step_size: float, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Metropolis-adjusted Langevin from ``x`` targeting ``exp(-E / temperature)``.

    Returns the final states and the acceptance rate per chain (mean over steps).
    """

    def potential(v: Tensor) -> tuple[Tensor, Tensor]:
        e, g = _energy_and_grad(energy, v)
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
