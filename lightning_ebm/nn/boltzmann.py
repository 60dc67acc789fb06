"""Pieces shared by the Boltzmann machines' layers: factorial Bernoulli units and exact sums over
binary states (the references that AIS and the variational bounds are tested against)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_ebm.errors import UserError

#: Exact computations enumerate ``2^units`` states; above this many units they refuse.
MAX_ENUMERATED_UNITS = 25


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """``log p(x)`` of factorial Bernoulli units with ``logits``, summed over units."""
    return (x * logits - F.softplus(logits)).sum(-1)


def bernoulli_entropy(logits: Tensor) -> Tensor:
    """Entropy of factorial Bernoulli units with ``logits``, summed over units:
    ``H = softplus(a) - sigmoid(a) a``."""
    return (F.softplus(logits) - torch.sigmoid(logits) * logits).sum(-1)


def bernoulli_base_rate(v: Tensor, pseudo_count: float = 5.0) -> Tensor:
    """Biases of the base-rate model of binary data ``v`` (Salakhutdinov & Murray 2008):
    ``log(p / (1 - p))`` of the means smoothed by ``pseudo_count`` imaginary examples at 1/2."""
    v = v.double()
    p = (v.sum(0) + pseudo_count / 2) / (v.shape[0] + pseudo_count)
    return torch.log(p) - torch.log1p(-p)


def binary_states(num_units: int, start: int, stop: int, dtype: torch.dtype, device: Any) -> Tensor:
    """Rows ``start..stop-1`` of the ``2^num_units`` binary states (bit ``i`` of the row index)."""
    index = torch.arange(start, stop, device=device).unsqueeze(1)
    return ((index >> torch.arange(num_units, device=device)) & 1).to(dtype)


def state_chunks(num_units: int, device: Any, chunk: int = 1 << 16):
    """Every binary state of ``num_units`` units, float64, in chunks of ``chunk`` states."""
    for start in range(0, 1 << num_units, chunk):
        yield binary_states(num_units, start, min(start + chunk, 1 << num_units), torch.float64, device)


def logsumexp_over_states(num_units: int, log_f: Callable[[Tensor], Tensor], device: Any) -> float:
    """``logsumexp`` of ``log_f(states)`` over all binary states of ``num_units`` units (float64)."""
    parts = [torch.logsumexp(log_f(states), 0) for states in state_chunks(num_units, device)]
    return float(torch.logsumexp(torch.stack(parts), 0))


def refuse_above(units: int, max_units: int, what: str) -> None:
    """An exact computation over ``2^units`` states refuses above ``max_units`` units."""
    if units > max_units:
        raise UserError(
            f"exact computation enumerates 2^{units} states of {what}; refusing above {max_units} units "
            "(use estimate_log_partition for AIS)"
        )
