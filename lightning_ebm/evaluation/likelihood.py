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

Deep Boltzmann machine (Salakhutdinov & Hinton 2009, section 4). Given the odd layers
``x_1, x_3, ...`` the even ones (``v, x_2, ...``) are independent and sum out in closed form:

    log f(x_odd) = sum_{l odd} b_l^T x_l + sum_{l even} sum_i softplus((b_l + W_{l-1}^T x_{l-1} + W_l x_{l+1})_i)

so ``log Z`` enumerates one parity of layers (the one with fewer units) and AIS runs on the odd
layers only. Its path interpolates the joint energy from a base model ``A`` (visible biases from
the data, uniform hidden units, no weights): ``E_beta = (1 - beta) E_A + beta E``; its transition is
a Gibbs sweep of ``E_beta`` (even layers given odd, then odd given even).

Deep belief network: ``log Z`` is the top RBM's (the likelihood bound's normaliser), estimated with
the top RBM's AIS on the data passed up to it; the exact ``log p(v)`` of a tiny DBN enumerates
every layer between ``v`` and the top RBM's visible layer.
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
from lightning_ebm.models.dbm import DBM
from lightning_ebm.models.dbn import DBN, bernoulli_log_prob
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


def _require_boltzmann(model: Any, what: str) -> None:
    if not isinstance(model, (RBM, DBN, DBM)):
        raise UserError(f"{what} supports RBM, DBN and DBM models, not {type(model).__name__}")


def _refuse_above(units: int, max_units: int, what: str) -> None:
    if units > max_units:
        raise UserError(
            f"exact computation enumerates 2^{units} states of {what}; refusing above {max_units} units "
            "(use estimate_log_partition for AIS)"
        )


@torch.no_grad()
def exact_log_partition(model: RBM | DBN | DBM, max_units: int = MAX_ENUMERATED_UNITS) -> float:
    """``log Z`` by enumeration, in float64: of an RBM (its smaller layer; the hidden layer for
    Gaussian units), of a DBN's top RBM, or of a DBM (its odd or even layers, whichever has fewer units)."""
    _require_boltzmann(model, "exact_log_partition")
    if isinstance(model, DBN):
        return exact_log_partition(model.top, max_units)
    if isinstance(model, DBM):
        return _dbm_exact_log_partition(model, max_units)
    rbm = model
    W = rbm.W.detach().double()
    b, c = rbm.visible_bias.detach().double(), rbm.hidden_bias.detach().double()
    n_visible, n_hidden = W.shape
    enumerate_hidden = rbm.gaussian or n_hidden <= n_visible
    units = n_hidden if enumerate_hidden else n_visible
    _refuse_above(units, max_units, f"the {'hidden' if enumerate_hidden else 'visible'} layer")
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


# ---------------------------------------------------------------------- deep Boltzmann machines
def _dbm_parameters(dbm: DBM, dtype: torch.dtype | None = None) -> tuple[list[Tensor], list[Tensor]]:
    weights = [W.detach().to(dtype or W.dtype) for W in dbm.weights]
    biases = [b.detach().to(dtype or b.dtype) for b in dbm.biases]
    return weights, biases


def _neighbour_input(weights: list[Tensor], states: dict[int, Tensor], layer: int) -> Tensor | None:
    """``W_{l-1}^T x_{l-1} + W_l x_{l+1}`` from the neighbours of ``layer`` present in ``states``."""
    total = None
    if layer - 1 in states:
        total = states[layer - 1] @ weights[layer - 1]
    if layer + 1 in states:
        term = states[layer + 1] @ weights[layer].t()
        total = term if total is None else total + term
    return total


def _sum_out(weights: list[Tensor], biases: list[Tensor], states: dict[int, Tensor], layers: range) -> Tensor:
    """``sum_{l in layers} sum_i softplus(b_l + input from states)``, the layers summed out."""
    total = 0
    for layer in layers:
        x = _neighbour_input(weights, states, layer)
        total = total + F.softplus(biases[layer] if x is None else x + biases[layer]).sum(-1)
    return total


def _dbm_exact_log_partition(dbm: DBM, max_units: int) -> float:
    weights, biases = _dbm_parameters(dbm, torch.float64)
    sizes = dbm.layer_sizes
    odd_units, even_units = sum(sizes[1::2]), sum(sizes[0::2])
    parity = 1 if odd_units <= even_units else 0
    layers = range(parity, len(sizes), 2)
    _refuse_above(min(odd_units, even_units), max_units, f"the {'odd' if parity else 'even'} layers")

    def log_f(x: Tensor) -> Tensor:
        states = dict(zip(layers, x.split([sizes[i] for i in layers], dim=1)))
        return sum(states[i] @ biases[i] for i in layers) + _sum_out(
            weights, biases, states, range(1 - parity, len(sizes), 2)
        )

    return _logsumexp_over_states(sum(sizes[i] for i in layers), log_f, weights[0].device)


def _dbm_exact_free_energy(dbm: DBM, v: Tensor, max_units: int, chunk: int = 4096) -> Tensor:
    """``F(v) = -log sum_h exp(-E(v, h))`` by enumerating the odd layers (the even hidden ones sum out)."""
    weights, biases = _dbm_parameters(dbm, torch.float64)
    sizes = dbm.layer_sizes
    odd = range(1, len(sizes), 2)
    units = sum(sizes[i] for i in odd)
    _refuse_above(units, max_units, "the odd layers")
    v = v.double()
    parts = []
    for start in range(0, 1 << units, chunk):
        x = _binary_states(units, start, min(start + chunk, 1 << units), torch.float64, v.device)
        states = dict(zip(odd, x.split([sizes[i] for i in odd], dim=1)))
        hidden = sum(states[i] @ biases[i] for i in odd) + _sum_out(weights, biases, states, range(2, len(sizes), 2))
        parts.append(torch.logsumexp(v @ weights[0] @ states[1].t() + hidden, dim=1))
    return -(v @ biases[0] + torch.logsumexp(torch.stack(parts, 1), 1))


class DBMAnnealingPath:
    """AIS path over a DBM's odd layers (the even ones summed out) from a base model with visible
    biases ``base_bias``, uniform hidden units and no weights (module docstring)."""

    def __init__(self, dbm: DBM, base_bias: Tensor) -> None:
        self.weights, self.biases = _dbm_parameters(dbm)
        self.base = [base_bias.to(self.biases[0])] + [torch.zeros_like(b) for b in self.biases[1:]]
        self.odd = range(1, len(self.biases), 2)
        self.even = range(0, len(self.biases), 2)

    def initial_state(self, num_chains: int) -> dict[int, Tensor]:
        return {i: sample_bernoulli(torch.sigmoid(self.base[i]).expand(num_chains, -1)) for i in self.odd}

    def log_base_partition(self) -> float:
        return float(sum(F.softplus(b.double()).sum() for b in self.base))

    def _bias(self, layer: int, beta: float) -> Tensor:
        return (1 - beta) * self.base[layer] + beta * self.biases[layer]

    def step(self, odd: dict[int, Tensor], beta_from: float, beta_to: float) -> tuple[Tensor, dict[int, Tensor]]:
        # log f_beta(x_odd) = sum_odd ((1-beta) b_A + beta b)^T x + sum_even softplus((1-beta) b_A + beta (b + input))
        log_ratio = (beta_to - beta_from) * sum((odd[i] @ (self.biases[i] - self.base[i])).double() for i in self.odd)
        even = {}
        for layer in self.even:
            x = _neighbour_input(self.weights, odd, layer)
            x64 = x.double()
            base, bias = self.base[layer].double(), self.biases[layer].double()
            after = F.softplus((1 - beta_to) * base + beta_to * (bias + x64))
            before = F.softplus((1 - beta_from) * base + beta_from * (bias + x64))
            log_ratio = log_ratio + (after - before).sum(1)
            even[layer] = sample_bernoulli(torch.sigmoid(self._bias(layer, beta_to) + beta_to * x))
        new_odd = {}
        for layer in self.odd:
            x = _neighbour_input(self.weights, even, layer)
            new_odd[layer] = sample_bernoulli(torch.sigmoid(self._bias(layer, beta_to) + beta_to * x))
        return log_ratio, new_odd


# ---------------------------------------------------------------------- deep belief networks
def _dbn_exact_log_likelihood(dbn: DBN, v: Tensor, max_units: int, chunk: int = 4096) -> Tensor:
    """``log p(v)`` of a DBN by enumerating every layer between ``v`` and the top RBM's visible layer."""
    depth = int(dbn.depth)
    top = dbn.top
    if depth == 1:
        return exact_log_likelihood(top, v, max_units)
    rbms = [dbn.rbms[i] for i in range(depth - 1)]
    sizes = dbn.layer_sizes[1:depth]
    units = sum(sizes)
    _refuse_above(units, max_units, "the DBN's intermediate layers")
    v = v.double()
    parts = []
    for start in range(0, 1 << units, chunk):
        states = [
            v,
            *_binary_states(units, start, min(start + chunk, 1 << units), torch.float64, v.device).split(sizes, 1),
        ]
        logits = rbms[0].visible_bias.double() + states[1] @ rbms[0].W.double().t()
        log_p = v @ logits.t() - F.softplus(logits).sum(1)  # log p(v | x_1), (batch, states)
        rest = -_rbm_free_energy64(top, states[-1])
        for layer in range(1, depth - 1):
            logits = rbms[layer].visible_bias.double() + states[layer + 1] @ rbms[layer].W.double().t()
            rest = rest + bernoulli_log_prob(states[layer], logits)
        parts.append(torch.logsumexp(log_p + rest, dim=1))
    return torch.logsumexp(torch.stack(parts, 1), 1) - exact_log_partition(top, max_units)


def _rbm_free_energy64(rbm: RBM, v: Tensor) -> Tensor:
    """The free energy of binary ``v`` under a Bernoulli RBM, in float64."""
    return -(v @ rbm.visible_bias.double()) - F.softplus(v @ rbm.W.double() + rbm.hidden_bias.double()).sum(1)


@torch.no_grad()
def exact_log_likelihood(model: RBM | DBN | DBM, x: Tensor, max_units: int = MAX_ENUMERATED_UNITS) -> Tensor:
    """``log p(x)`` of each example by enumeration, float64: the reference for the bounds and AIS on
    tiny models (an RBM's is exact whatever the size of the other layer)."""
    _require_boltzmann(model, "exact_log_likelihood")
    v = model.flatten(x.to(model.device))
    if isinstance(model, DBN):
        return _dbn_exact_log_likelihood(model, v, max_units)
    if isinstance(model, DBM):
        return -_dbm_exact_free_energy(model, v, max_units) - exact_log_partition(model, max_units)
    return -model.energy(v).double() - exact_log_partition(model, max_units)


def base_rate_bias(model: RBM | DBM, data: Tensor | None, pseudo_count: float = 5.0) -> Tensor:
    """Visible biases of the base-rate model: ``log(p / (1 - p))`` of the smoothed data means
    (``pseudo_count`` imaginary examples at 1/2, Salakhutdinov & Murray 2008) for Bernoulli units, the
    data means for Gaussian units; zeros (Bernoulli) or the model's ``b`` (Gaussian) without data."""
    visible_bias = model.biases[0] if isinstance(model, DBM) else model.visible_bias
    gaussian = isinstance(model, RBM) and model.gaussian
    if data is None:
        return visible_bias.detach().clone() if gaussian else torch.zeros_like(visible_bias.detach())
    v = model.flatten(data.to(visible_bias.device)).double()
    if gaussian:
        return v.mean(0).to(visible_bias.dtype)
    p = (v.sum(0) + pseudo_count / 2) / (v.shape[0] + pseudo_count)
    return (torch.log(p) - torch.log1p(-p)).to(visible_bias.dtype)


@torch.no_grad()
def estimate_log_partition(
    model: RBM | DBN | DBM,
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
    _require_boltzmann(model, "estimate_log_partition")
    if betas is None or isinstance(betas, int):
        betas = salakhutdinov_murray_betas(14_500 if betas is None else betas)
    if isinstance(model, DBN):  # the top RBM, with a base rate from the data passed up to it
        top_data = None if data is None else model.up_pass(data.to(model.device), int(model.depth) - 1)
        path: Any = RBMAnnealingPath(model.top, base_rate_bias(model.top, top_data))
    elif isinstance(model, DBM):
        path = DBMAnnealingPath(model, base_rate_bias(model, data))
    else:
        path = RBMAnnealingPath(model, base_rate_bias(model, data))
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
def log_likelihood(
    model: EnergyBasedModel, x: Tensor, log_partition: float | LogPartition, batch_size: int = 1000
) -> Tensor:
    """``log p(x) = -F(x) - log Z`` of each example (nats), through the model's ``energy`` (in batches
    of ``batch_size``). For a DBN or a DBM, whose ``energy`` is a variational free energy, it is the
    variational lower bound on ``log p(x)``."""
    energies = [model.energy(part.to(model.device)).double() for part in x.split(batch_size)]
    return -torch.cat(energies) - float(log_partition)
