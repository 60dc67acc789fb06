"""Log partition functions and log-likelihoods of Boltzmann machines.

* :func:`exact_log_partition`: ``log Z`` by enumerating the states of the smaller layer (the other
  sums or integrates out in closed form), in float64. Feasible up to ~25 units.
* :func:`estimate_log_partition`: annealed importance sampling (Salakhutdinov & Murray 2008) from a
  base-rate model, with their 14,500-step schedule by default.
* :func:`log_likelihood`: ``log p(x) = -F(x) - log Z`` through the model's ``energy``.

For an RBM with Bernoulli visible units ``v``, hidden ``h``, visible bias ``b``, hidden bias ``c``:

    log Z = logsumexp_v [b^T v + sum_j softplus(c_j + (W^T v)_j)]          (enumerating v)
          = logsumexp_h [c^T h + sum_i softplus(b_i + (W h)_i)]            (enumerating h)

With Gaussian visible units the visible integral is Gaussian:

    log Z = logsumexp_h [c^T h + sum_i (1/2 log(2 pi sigma_i^2) + ((b_i + (W h)_i)^2 - b_i^2) / (2 sigma_i^2))]

The AIS path anneals from a base model ``A`` with the same visible units, biases ``b_A`` and no
coupling, to the RBM ``B``: ``f_beta(v) = exp(-(1 - beta) E_A(v) - beta F_B-terms)``, i.e.

    log f_beta(v) = (1 - beta) b_A^T v + beta b^T v + sum_j softplus(beta (c_j + (W^T v)_j))   (Bernoulli)

whose Gibbs transition samples ``h ~ sigmoid(beta (c + W^T v))`` then
``v ~ sigmoid((1 - beta) b_A + beta (b + W h))`` (Gaussian: ``N((1 - beta) b_A + beta (b + W h), sigma^2)``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_ebm.errors import UserError
from lightning_ebm.models.base import EnergyBasedModel
from lightning_ebm.models.rbm import RBM
from lightning_ebm.samplers.ais import LogPartition, annealed_importance_sampling, salakhutdinov_murray_betas
from lightning_ebm.samplers.gibbs import sample_bernoulli, sample_gaussian

MAX_ENUMERATED_UNITS = 25


def _binary_states(num_units: int, start: int, stop: int, dtype: torch.dtype, device: Any) -> Tensor:
    """Rows ``start..stop-1`` of the ``2^num_units`` binary states (bit ``i`` of the row index)."""
    index = torch.arange(start, stop, device=device).unsqueeze(1)
    return ((index >> torch.arange(num_units, device=device)) & 1).to(dtype)


def _logsumexp_over_states(num_units: int, log_f, device: Any, chunk: int = 1 << 16) -> float:
    """``logsumexp`` of ``log_f(states)`` over all binary states, in chunks of ``chunk`` states."""
    parts = [
        torch.logsumexp(log_f(_binary_states(num_units, s, min(s + chunk, 1 << num_units), torch.float64, device)), 0)
        for s in range(0, 1 << num_units, chunk)
    ]
    return float(torch.logsumexp(torch.stack(parts), 0))


def _require_rbm(model: Any, what: str) -> RBM:
    if not isinstance(model, RBM):
        raise UserError(f"{what} supports RBM models (and DBM once it exists), not {type(model).__name__}")
    return model


@torch.no_grad()
def exact_log_partition(model: RBM, max_units: int = MAX_ENUMERATED_UNITS) -> float:
    """``log Z`` of an RBM by enumerating its smaller layer (its hidden layer for Gaussian units)."""
    rbm = _require_rbm(model, "exact_log_partition")
    W = rbm.W.detach().double()
    b, c = rbm.visible_bias.detach().double(), rbm.hidden_bias.detach().double()
    n_visible, n_hidden = W.shape
    enumerate_hidden = rbm.gaussian or n_hidden <= n_visible
    units = n_hidden if enumerate_hidden else n_visible
    if units > max_units:
        layer = "hidden" if enumerate_hidden else "visible"
        raise UserError(
            f"exact log Z enumerates 2^{units} states of the {layer} layer; refusing above {max_units} units "
            "(use estimate_log_partition for AIS)"
        )
    if rbm.gaussian:
        var = rbm.variance.detach().double()
        const = 0.5 * torch.log(2 * math.pi * var).sum()

        def log_f(h: Tensor) -> Tensor:
            mean = h @ W.t() + b
            return h @ c + const + ((mean**2 - b**2) / (2 * var)).sum(1)

    elif enumerate_hidden:

        def log_f(h: Tensor) -> Tensor:
            return h @ c + F.softplus(h @ W.t() + b).sum(1)

    else:

        def log_f(v: Tensor) -> Tensor:
            return v @ b + F.softplus(v @ W + c).sum(1)

    return _logsumexp_over_states(units, log_f, W.device)


class RBMAnnealingPath:
    """AIS path from a base-rate model (visible biases ``base_bias``, no coupling) to an RBM."""

    def __init__(self, rbm: RBM, base_bias: Tensor) -> None:
        self.W = rbm.W.detach()
        self.b = rbm.visible_bias.detach()
        self.c = rbm.hidden_bias.detach()
        self.b_base = base_bias.to(self.W)
        self.gaussian = rbm.gaussian
        self.var = rbm.variance.detach()
        self.std = self.var.sqrt()
        self.gaussian_const = ((self.b_base**2 - self.b**2) / (2 * self.var)).sum()

    def initial_state(self, num_chains: int) -> Tensor:
        mean = self.b_base.expand(num_chains, -1)
        return sample_gaussian(mean, self.std) if self.gaussian else sample_bernoulli(torch.sigmoid(mean))

    def log_base_partition(self) -> float:
        n_hidden = self.W.shape[1]  # uncoupled hidden units contribute 2^n_hidden
        if self.gaussian:
            visible = 0.5 * torch.log(2 * math.pi * self.var.double()).sum()
        else:
            visible = F.softplus(self.b_base.double()).sum()
        return float(visible) + n_hidden * math.log(2)

    def step(self, v: Tensor, beta_from: float, beta_to: float) -> tuple[Tensor, Tensor]:
        # Both log f's are linear in v apart from the hidden softplus terms, so the visible part of
        # the log ratio is one matrix-vector product: (b - b_A)^T v, or for Gaussian units
        # sum_i [(v_i - b_A,i)^2 - (v_i - b_i)^2] / (2 sigma_i^2) = (v / sigma^2)^T (b - b_A) + const.
        scaled = v / self.var if self.gaussian else v
        x = torch.addmm(self.c, scaled, self.W)  # c + W^T v, shared by the log ratio and the h update
        visible = scaled @ (self.b - self.b_base)
        if self.gaussian:
            visible = visible + self.gaussian_const
        x64 = x.double()
        log_ratio = (beta_to - beta_from) * visible.double()
        log_ratio = log_ratio + (F.softplus(beta_to * x64) - F.softplus(beta_from * x64)).sum(1)
        h = sample_bernoulli(torch.sigmoid(beta_to * x))
        bias = (1 - beta_to) * self.b_base + beta_to * self.b
        mean = torch.addmm(bias, h, self.W.t(), alpha=beta_to)  # (1 - beta) b_A + beta (b + W h)
        v = sample_gaussian(mean, self.std) if self.gaussian else sample_bernoulli(torch.sigmoid(mean))
        return log_ratio, v


def base_rate_bias(model: RBM, data: Tensor | None, pseudo_count: float = 5.0) -> Tensor:
    """Visible biases of the base-rate model: ``log(p / (1 - p))`` of the smoothed data means
    (``pseudo_count`` imaginary examples at 1/2, Salakhutdinov & Murray 2008) for Bernoulli units, the
    data means for Gaussian units; zeros (Bernoulli) or the model's ``b`` (Gaussian) without data."""
    if data is None:
        return model.visible_bias.detach().clone() if model.gaussian else torch.zeros_like(model.visible_bias)
    v = model.flatten(data.to(model.W.device)).double()
    if model.gaussian:
        return v.mean(0).to(model.W.dtype)
    p = (v.sum(0) + pseudo_count / 2) / (v.shape[0] + pseudo_count)
    return (torch.log(p) - torch.log1p(-p)).to(model.W.dtype)


@torch.no_grad()
def estimate_log_partition(
    model: RBM,
    num_chains: int = 100,
    betas: Tensor | int | None = None,
    data: Tensor | None = None,
    seed: int | None = None,
) -> LogPartition:
    """AIS estimate of ``log Z`` with its ``+-3`` std interval, vectorised over chains on the model's device.

    Args:
        model: an RBM.
        num_chains: independent AIS runs (100 in Salakhutdinov & Murray 2008).
        betas: the inverse temperatures (a tensor from 0 to 1), or a number of steps for
            :func:`salakhutdinov_murray_betas` (default: their 14,500).
        data: training data for the base-rate model (recommended: it makes the weights far less
            variable); without it the base model is uniform.
        seed: seed for the chains (the global generator's state is left as it was).
    """
    rbm = _require_rbm(model, "estimate_log_partition")
    if betas is None or isinstance(betas, int):
        betas = salakhutdinov_murray_betas(14_500 if betas is None else betas)
    path = RBMAnnealingPath(rbm, base_rate_bias(rbm, data))
    devices = [rbm.device] if rbm.device.type == "cuda" else []
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
def log_likelihood(model: EnergyBasedModel, x: Tensor, log_partition: float | LogPartition) -> Tensor:
    """``log p(x) = -F(x) - log Z`` of each example (nats), through the model's ``energy``."""
    return -model.energy(x.to(model.device)).double() - float(log_partition)
