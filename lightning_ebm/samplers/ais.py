"""Annealed importance sampling (Neal 2001) for partition functions, after Salakhutdinov & Murray (2008).

To estimate ``Z_K`` of a target ``p_K(x) = f_K(x) / Z_K``, AIS moves chains through a sequence of
intermediate distributions ``f_k = f_0^(1-beta_k) f_K^beta_k`` with ``0 = beta_0 < ... < beta_K = 1``,
starting from exact samples of a base distribution ``p_0`` whose ``Z_0`` is known:

    x_0 ~ p_0,   x_k ~ T_k(. | x_{k-1})   (T_k leaves p_k invariant)
    log w = sum_{k=1..K} [log f_k(x_{k-1}) - log f_{k-1}(x_{k-1})]
    Z_K / Z_0 ~= mean(w)

``mean(w)`` is unbiased for ``Z_K / Z_0``, so ``log Z`` is slightly underestimated in expectation
(Jensen). The uncertainty reported is that of Salakhutdinov & Murray: ``log(mean(w) +- 3 std(w) /
sqrt(M))`` over the ``M`` chains.

A model provides an :class:`AnnealingPath`: exact samples of ``p_0``, ``log Z_0``, and one step that
returns the log-weight increment and applies ``T_k``. Both are computed from the same statistics
of the current state, so a step of an RBM costs two matrix products for all chains at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor


class AnnealingPath(Protocol):
    """The model-specific half of AIS."""

    def initial_state(self, num_chains: int) -> Any:
        """``num_chains`` exact samples of the base distribution ``p_0``."""

    def log_base_partition(self) -> float:
        """``log Z_0``."""

    def step(self, state: Any, beta_from: float, beta_to: float) -> tuple[Tensor, Any]:
        """``(log f_to(state) - log f_from(state), state')`` with ``state' ~ T_to(. | state)``."""


@dataclass(frozen=True)
class LogPartition:
    """An AIS estimate of ``log Z``.

    Attributes:
        estimate: ``log Z_0 + log mean(w)``.
        lower, upper: ``log(mean(w) -+ 3 std(w) / sqrt(M))`` (``lower`` is ``-inf`` when the interval
            reaches zero).
        log_weights: ``log w`` of each chain (float64), for diagnostics such as the effective
            sample size.
    """

    estimate: float
    lower: float
    upper: float
    log_weights: Tensor

    def __float__(self) -> float:
        return self.estimate

    @property
    def effective_sample_size(self) -> float:
        """``(sum w)^2 / sum w^2``: close to the number of chains when the weights are even."""
        lw = self.log_weights
        return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))


def salakhutdinov_murray_betas(num_steps: int = 14_500) -> Tensor:
    """The inverse temperatures of Salakhutdinov & Murray (2008), float64, from 0 to 1.

    Their 14,500 steps are spaced uniformly in three stretches: 500 steps to 0.5, 4,000 to 0.9 and
    10,000 to 1.0. Another ``num_steps`` keeps those proportions (for cheap estimates in training).
    """
    if num_steps < 3:
        raise ValueError(f"AIS needs at least 3 annealing steps, got {num_steps}")
    n1 = max(1, round(num_steps * 500 / 14_500))
    n2 = max(1, round(num_steps * 4_000 / 14_500))
    n3 = max(1, num_steps - n1 - n2)
    return torch.cat(
        [
            torch.linspace(0.0, 0.5, n1 + 1, dtype=torch.float64)[:-1],
            torch.linspace(0.5, 0.9, n2 + 1, dtype=torch.float64)[:-1],
            torch.linspace(0.9, 1.0, n3 + 1, dtype=torch.float64),
        ]
    )


def annealed_importance_sampling(path: AnnealingPath, num_chains: int, betas: Tensor) -> LogPartition:
    """Run ``num_chains`` AIS chains along ``betas`` (``betas[0] = 0``, ``betas[-1] = 1``, increasing)."""
    betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
    if betas.numel() < 2 or float(betas[0]) != 0.0 or float(betas[-1]) != 1.0:
        raise ValueError("betas must start at 0 and end at 1")
    if bool((betas[1:] < betas[:-1]).any()):
        raise ValueError("betas must be non-decreasing")
    schedule = betas.tolist()  # Python floats: no host-device synchronisation inside the loop
    state = path.initial_state(num_chains)
    log_w: Tensor | None = None
    for k in range(1, len(schedule)):
        increment, state = path.step(state, schedule[k - 1], schedule[k])
        log_w = increment.double() if log_w is None else log_w + increment.double()
    assert log_w is not None
    return _summarise(log_w.cpu(), path.log_base_partition())


def _summarise(log_w: Tensor, log_z0: float) -> LogPartition:
    m = log_w.numel()
    shift = float(log_w.max())
    w = torch.exp(log_w - shift)
    mean = float(w.mean())
    half_width = 3 * float(w.std(unbiased=True)) / math.sqrt(m) if m > 1 else 0.0
    base = log_z0 + shift
    lower = base + math.log(mean - half_width) if mean > half_width else -math.inf
    return LogPartition(base + math.log(mean), lower, base + math.log(mean + half_width), log_w)
