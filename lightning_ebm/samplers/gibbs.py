"""Block Gibbs sampling for Boltzmann machines (RBM, DBN top layer, DBM), vectorised over chains.

A Boltzmann machine's layers are conditionally independent given their neighbours, so a Gibbs
sweep updates a whole layer (a *block*) at once from its conditional distribution: Bernoulli units
from ``sigmoid(total input)``, Gaussian units from ``N(mean, sigma^2)``. The models supply the
conditionals; this module supplies the unit samplers and the chain loop, which never synchronises
with the host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

State = TypeVar("State")


def sample_bernoulli(probs: Tensor) -> Tensor:
    """Binary states with ``P(unit = 1) = probs``, in the dtype of ``probs``."""
    return (torch.rand_like(probs) < probs).to(probs.dtype)


def sample_gaussian(mean: Tensor, std: Tensor | float) -> Tensor:
    """``N(mean, std^2)`` samples."""
    return mean + std * torch.randn_like(mean)


def block_gibbs(sweep: Callable[[State], State], state: State, num_steps: int) -> State:
    """Apply the Gibbs sweep ``sweep`` (one update of every block) ``num_steps`` times to ``state``."""
    for _ in range(num_steps):
        state = sweep(state)
    return state
