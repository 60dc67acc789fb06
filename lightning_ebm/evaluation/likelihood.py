"""Log partition functions and log-likelihoods of Boltzmann machines, through a small protocol.

* :func:`exact_log_partition`: ``log Z`` by enumeration, in float64 (feasible up to ~25 units).
* :func:`exact_log_likelihood`: ``log p(x)`` by enumeration, the reference for the bounds and AIS.
* :func:`estimate_log_partition`: annealed importance sampling (Salakhutdinov & Murray 2008) from a
  base-rate model, with their 14,500-step schedule by default.
* :func:`log_likelihood`: ``log p(x) = -F(x) - log Z`` through the model's ``energy``.

A model takes part by implementing :class:`TractableBoltzmannMachine`: the RBM (its layer's ``log Z``
and path, :class:`~lightning_ebm.nn.RBMLayer`), the DBN (its top RBM's, the normaliser of its bound)
and the DBM (:class:`~lightning_ebm.nn.DBMNet`: odd layers enumerated or annealed, the even ones
summed out) do; the equations are written where the models are.
"""

from __future__ import annotations

import warnings
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from lightning_ebm.errors import UserError
from lightning_ebm.nn.boltzmann import MAX_ENUMERATED_UNITS
from lightning_ebm.samplers.ais import (
    AnnealingPath,
    LogPartition,
    annealed_importance_sampling,
    salakhutdinov_murray_betas,
)


@runtime_checkable
class TractableBoltzmannMachine(Protocol):
    """What exact and AIS likelihoods need of a model (``x``: examples shaped like its data)."""

    device: torch.device

    def exact_log_partition(self, max_units: int = MAX_ENUMERATED_UNITS) -> float:
        """``log Z`` by enumeration (refusing above ``max_units`` enumerated units)."""

    def exact_log_likelihood(self, x: Tensor, max_units: int = MAX_ENUMERATED_UNITS) -> Tensor:
        """``log p(x)`` of each example by enumeration, float64."""

    def annealing_path(self, data: Tensor | None = None) -> AnnealingPath:
        """The AIS path from a base model (of ``data``'s base rates when given) to the model."""


def _require(model: object, what: str) -> TractableBoltzmannMachine:
    if not isinstance(model, TractableBoltzmannMachine):
        raise UserError(
            f"{what} needs a model with exact_log_partition, exact_log_likelihood and annealing_path "
            f"(RBM, DBN, DBM), not {type(model).__name__}"
        )
    return model


@torch.no_grad()
def exact_log_partition(model: TractableBoltzmannMachine, max_units: int = MAX_ENUMERATED_UNITS) -> float:
    """``log Z`` by enumeration, in float64: of an RBM (its smaller layer; the hidden layer for
    Gaussian units), of a DBN's top RBM, or of a DBM (its odd or even layers, whichever has fewer units)."""
    return _require(model, "exact_log_partition").exact_log_partition(max_units)


@torch.no_grad()
def exact_log_likelihood(model: TractableBoltzmannMachine, x: Tensor, max_units: int = MAX_ENUMERATED_UNITS) -> Tensor:
    """``log p(x)`` of each example by enumeration, float64: the reference for the bounds and AIS on
    tiny models (an RBM's is exact whatever the size of the other layer)."""
    return _require(model, "exact_log_likelihood").exact_log_likelihood(x, max_units)


@torch.no_grad()
def estimate_log_partition(
    model: TractableBoltzmannMachine,
    num_chains: int = 100,
    betas: Tensor | int | None = None,
    data: Tensor | None = None,
    seed: int | None = None,
) -> LogPartition:
    """AIS estimate of ``log Z`` with its ``+-3`` std interval, vectorised over chains on the model's device.

    Args:
        model: an RBM, a DBN (its top RBM, the normaliser of the bound) or a DBM (its odd layers).
        num_chains: independent AIS runs (100 in Salakhutdinov & Murray 2008).
        betas: the inverse temperatures (a tensor from 0 to 1), or a number of steps for
            :func:`salakhutdinov_murray_betas` (default: their 14,500).
        data: training data for the base-rate model (recommended: it makes the weights far less
            variable); without it the base model is uniform.
        seed: seed for the chains (the global generator's state is left as it was).
    """
    path = _require(model, "estimate_log_partition").annealing_path(data)
    if betas is None or isinstance(betas, int):
        betas = salakhutdinov_murray_betas(14_500 if betas is None else betas)
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        estimate = annealed_importance_sampling(path, num_chains, betas)
    ess = estimate.effective_sample_size
    if num_chains >= 10 and ess < 0.1 * num_chains:
        warnings.warn(
            f"AIS weights are degenerate (effective sample size {ess:.1f} of {num_chains} chains): log Z "
            f"{estimate.estimate:.2f} is unreliable and most likely too low, so log-likelihoods would be too "
            "high; use more betas and chains",
            stacklevel=3,  # the caller of the no_grad wrapper
        )
    return estimate


@torch.no_grad()
def log_likelihood(model: object, x: Tensor, log_partition: float | LogPartition, batch_size: int = 1000) -> Tensor:
    """``log p(x) = -F(x) - log Z`` of each example (nats), through the model's ``energy`` (in batches
    of ``batch_size``). For a DBN or a DBM, whose ``energy`` is a variational free energy, it is the
    variational lower bound on ``log p(x)``."""
    energies = [model.energy(part.to(model.device)).double() for part in x.split(batch_size)]
    return -torch.cat(energies) - float(log_partition)
