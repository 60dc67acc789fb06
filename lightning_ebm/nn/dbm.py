"""The deep Boltzmann machine's network: binary layers, their energy, Gibbs sweeps, mean-field
inference, exact ``log Z`` and the AIS path (Salakhutdinov & Hinton 2009, sections 2-4).

Binary layers ``x_0 = v, x_1, ..., x_L`` with weights ``W_l`` (layer l x layer l+1) and biases
``b_l``, connected only to their neighbours:

    E(x) = -sum_{l=0}^{L} b_l^T x_l - sum_{l=0}^{L-1} x_l^T W_l x_{l+1}                          (1)
    p(x_l = 1 | rest) = sigmoid(b_l + W_{l-1}^T x_{l-1} + W_l x_{l+1})                          (2)

Odd layers are conditionally independent given the even ones and vice versa, so a Gibbs sweep
updates all odd layers at once, then all even ones.

Mean field. ``p(h | v)`` is approximated by a factorial ``q(x_l = 1) = mu_l``; maximising the bound

    log p(v) >= -E_q[E(v, h)] + H(q) - log Z = -F_MF(v) - log Z                                (3)

gives the fixed-point equations ``mu_l = sigmoid(b_l + W_{l-1}^T mu_{l-1} + W_l mu_{l+1})``
(``mu_0 = v``), applied to the odd layers, then the even ones: each is an exact coordinate ascent
step, so the bound never decreases. They start from a bottom-up pass that doubles every input
but the top layer's, which stands in for the missing top-down input.

Partition function (section 4). Given the odd layers the even ones are independent and sum out:

    log f(x_odd) = sum_{l odd} b_l^T x_l + sum_{l even} sum_i softplus((b_l + W_{l-1}^T x_{l-1} + W_l x_{l+1})_i)

so ``log Z`` enumerates one parity of layers (the one with fewer units) and AIS runs on the odd
layers only. Its path interpolates the joint energy from a base model ``A`` (visible biases from
the data, uniform hidden units, no weights): ``E_beta = (1 - beta) E_A + beta E``; its transition is
a Gibbs sweep of ``E_beta`` (even layers given odd, then odd given even).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ebm.nn.boltzmann import (
    MAX_ENUMERATED_UNITS,
    bernoulli_base_rate,
    logsumexp_over_states,
    refuse_above,
    state_chunks,
)
from lightning_ebm.samplers.gibbs import sample_bernoulli

_TOL_EVERY = 5  # mean-field sweeps between two convergence tests (each one synchronises with the host)


def _neighbour_input(weights: Sequence[Tensor], states: dict[int, Tensor], layer: int) -> Tensor | None:
    """``W_{l-1}^T x_{l-1} + W_l x_{l+1}`` from the neighbours of ``layer`` present in ``states``."""
    total = None
    if layer - 1 in states:
        total = states[layer - 1] @ weights[layer - 1]
    if layer + 1 in states:
        term = states[layer + 1] @ weights[layer].t()
        total = term if total is None else total + term
    return total


def _sum_out(weights: Sequence[Tensor], biases: Sequence[Tensor], states: dict[int, Tensor], layers: range) -> Tensor:
    """``sum_{l in layers} sum_i softplus(b_l + input from states)``, the layers summed out."""
    total = 0
    for layer in layers:
        x = _neighbour_input(weights, states, layer)
        total = total + F.softplus(biases[layer] if x is None else x + biases[layer]).sum(-1)
    return total


class DBMNet(nn.Module):
    """A deep Boltzmann machine's layers of binary units, ``layer_sizes`` (the visible layer first).

    Args:
        layer_sizes: units per layer, e.g. ``[784, 500, 1000]``.
        init_std: standard deviation of the initial weights.
    """

    def __init__(self, layer_sizes: Sequence[int], init_std: float = 0.01) -> None:
        super().__init__()
        self.layer_sizes = [int(n) for n in layer_sizes]
        sizes = self.layer_sizes
        self.weights = nn.ParameterList(
            nn.Parameter(init_std * torch.randn(a, b)) for a, b in zip(sizes[:-1], sizes[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(n)) for n in sizes)

    @property
    def num_layers(self) -> int:
        """Number of layers, the visible one included."""
        return len(self.layer_sizes)

    # ------------------------------------------------------------------ energy and conditionals
    def layer_input(self, states: Sequence[Tensor], layer: int) -> Tensor:
        """Total input of ``layer`` given its neighbours' states, Eq. (2): ``b_l + W_{l-1}^T x_{l-1} + W_l x_{l+1}``."""
        total = self.biases[layer]
        if layer > 0:
            total = total + states[layer - 1] @ self.weights[layer - 1]
        if layer < self.num_layers - 1:
            total = total + states[layer + 1] @ self.weights[layer].t()
        return total

    def joint_energy(self, states: Sequence[Tensor]) -> Tensor:
        """``E(x)`` of Eq. (1) for every layer's states (or mean-field probabilities), shape ``(batch,)``."""
        energy = -sum(x @ b for x, b in zip(states, self.biases))
        for layer, W in enumerate(self.weights):
            energy = energy - ((states[layer] @ W) * states[layer + 1]).sum(1)
        return energy

    def split_layers(self, states: Tensor) -> list[Tensor]:
        """Every layer's part of side-by-side states ``(batch, sum(sizes))``."""
        return list(states.split(self.layer_sizes, dim=1))

    def gibbs_sweep(self, states: Tensor) -> Tensor:
        """One Gibbs sweep, Eq. (2): every odd layer given the even ones, then every even layer."""
        layers = self.split_layers(states)
        for parity in (1, 0):
            for layer in range(parity, self.num_layers, 2):
                layers[layer] = sample_bernoulli(torch.sigmoid(self.layer_input(layers, layer)))
        return torch.cat(layers, dim=1)

    def random_states(self, num_chains: int) -> Tensor:
        """Uniformly random binary states of every layer, side by side."""
        weight = self.weights[0]
        return torch.randint(0, 2, (num_chains, sum(self.layer_sizes)), device=weight.device).to(weight.dtype)

    # ------------------------------------------------------------------ mean field, Eq. (3)
    def mean_field(self, v: Tensor, num_steps: int, tol: float | None = None) -> list[Tensor]:
        """``[v, mu_1, ..., mu_L]``: ``num_steps`` fixed-point sweeps of Eq. (3) from a doubled
        bottom-up pass (stopping early once no ``mu`` moves more than ``tol`` in a sweep, when given).

        The convergence test reads a number from the device, so it runs every ``_TOL_EVERY`` sweeps,
        not after each: the sweeps in between need no host-device synchronisation."""
        mu = [v]
        last = self.num_layers - 1
        for layer in range(1, self.num_layers):
            scale = 2.0 if layer < last else 1.0
            mu.append(torch.sigmoid(torch.addmm(self.biases[layer], mu[-1], self.weights[layer - 1], alpha=scale)))
        for step in range(num_steps):
            check = tol is not None and (step + 1) % _TOL_EVERY == 0
            change = torch.zeros((), device=v.device, dtype=v.dtype)
            for first in (1, 2):  # the odd hidden layers, then the even ones (v stays clamped)
                for layer in range(first, self.num_layers, 2):
                    new = torch.sigmoid(self.layer_input(mu, layer))
                    if check:
                        change = torch.maximum(change, (new - mu[layer]).detach().abs().max())
                    mu[layer] = new
            if check and float(change) < tol:
                break
        return mu

    def mean_field_free_energy(self, mu: Sequence[Tensor]) -> Tensor:
        """``F_MF = E_q[E(v, h)] - H(q)`` of Eq. (3) for ``mu = [v, mu_1, ...]``, shape ``(batch,)``."""
        entropy = sum(-(torch.special.xlogy(m, m) + torch.special.xlogy(1 - m, 1 - m)).sum(1) for m in mu[1:])
        return self.joint_energy(mu) - entropy

    # ------------------------------------------------------------------ partition function
    def _parameters64(self) -> tuple[list[Tensor], list[Tensor]]:
        return [W.detach().double() for W in self.weights], [b.detach().double() for b in self.biases]

    @torch.no_grad()
    def exact_log_partition(self, max_units: int = MAX_ENUMERATED_UNITS) -> float:
        """``log Z`` by enumerating the odd or the even layers, whichever have fewer units (float64)."""
        weights, biases = self._parameters64()
        sizes = self.layer_sizes
        odd_units, even_units = sum(sizes[1::2]), sum(sizes[0::2])
        parity = 1 if odd_units <= even_units else 0
        layers = range(parity, len(sizes), 2)
        refuse_above(min(odd_units, even_units), max_units, f"the {'odd' if parity else 'even'} layers")

        def log_f(x: Tensor) -> Tensor:
            states = dict(zip(layers, x.split([sizes[i] for i in layers], dim=1)))
            return sum(states[i] @ biases[i] for i in layers) + _sum_out(
                weights, biases, states, range(1 - parity, len(sizes), 2)
            )

        return logsumexp_over_states(sum(sizes[i] for i in layers), log_f, weights[0].device)

    @torch.no_grad()
    def exact_free_energy(self, v: Tensor, max_units: int = MAX_ENUMERATED_UNITS) -> Tensor:
        """``F(v) = -log sum_h exp(-E(v, h))`` by enumerating the odd layers (the even hidden ones sum out)."""
        weights, biases = self._parameters64()
        sizes = self.layer_sizes
        odd = range(1, len(sizes), 2)
        units = sum(sizes[i] for i in odd)
        refuse_above(units, max_units, "the odd layers")
        v = v.double()
        parts = []
        for x in state_chunks(units, v.device, chunk=4096):
            states = dict(zip(odd, x.split([sizes[i] for i in odd], dim=1)))
            hidden = sum(states[i] @ biases[i] for i in odd)
            hidden = hidden + _sum_out(weights, biases, states, range(2, len(sizes), 2))
            parts.append(torch.logsumexp(v @ weights[0] @ states[1].t() + hidden, dim=1))
        return -(v @ biases[0] + torch.logsumexp(torch.stack(parts, 1), 1))

    @torch.no_grad()
    def exact_log_likelihood(self, v: Tensor, max_units: int = MAX_ENUMERATED_UNITS) -> Tensor:
        """``log p(v) = -F(v) - log Z`` by enumeration, float64."""
        return -self.exact_free_energy(v, max_units) - self.exact_log_partition(max_units)

    def annealing_path(self, data: Tensor | None = None) -> DBMAnnealingPath:
        """The AIS path from the base model of ``data`` (flattened visible states; without data a
        uniform one) to this DBM."""
        b = self.biases[0].detach()
        base = torch.zeros_like(b) if data is None else bernoulli_base_rate(data.to(b.device)).to(b.dtype)
        return DBMAnnealingPath(self, base)


class DBMAnnealingPath:
    """AIS path over a DBM's odd layers (the even ones summed out) from a base model with visible
    biases ``base_bias``, uniform hidden units and no weights (module docstring)."""

    def __init__(self, net: DBMNet, base_bias: Tensor) -> None:
        self.weights = [W.detach() for W in net.weights]
        self.biases = [b.detach() for b in net.biases]
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
