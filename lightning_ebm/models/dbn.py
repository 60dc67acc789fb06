"""Deep belief network: a stack of RBMs trained greedily, layer by layer.

Hinton, Osindero & Teh 2006, "A fast learning algorithm for deep belief nets"; the likelihood bound
of Salakhutdinov & Murray 2008, "On the quantitative analysis of deep belief networks". Background:
Baumann 2018, section 3.

A DBN with layers ``x_0 = v, x_1, ..., x_D`` is a directed sigmoid belief net from ``x_{D-1}`` down
to ``v`` under an RBM over the top two layers:

    p(v, x_1, ..., x_D) = prod_{l=0}^{D-2} p(x_l | x_{l+1}) * p_top(x_{D-1}, x_D)
    p(x_l = 1 | x_{l+1}) = sigmoid(b_l + W_l x_{l+1})        (the generative, top-down weights)

Each layer is first trained as an RBM on the hidden probabilities of the layers below it (the
greedy phase of :class:`~lightning_ebm.models.stack.GreedyRBMStack`); the layers' bottom-up
conditionals ``q(x_{l+1} | x_l) = sigmoid(c_l + W_l^T x_l)`` then serve as an approximate posterior.

Likelihood. ``p(v)`` itself is intractable; what is well defined is the variational lower bound
(Salakhutdinov & Murray 2008, Eq. 13), with ``q`` the factorial bottom-up posterior:

    log p(v) >= E_q[ sum_{l=0}^{D-2} log p(x_l | x_{l+1}) - F_top(x_{D-1}) ]
                + sum_{l=1}^{D-1} E_q[ H(q(x_l | x_{l-1})) ] - log Z_top              (1)

:meth:`DBN.energy` returns the *variational free energy* ``-(bound + log Z_top)``, a Monte-Carlo
estimate over ``bound_samples`` draws of ``q`` (the entropies are exact given the parent sample), so
that ``log_likelihood(dbn, x, estimate_log_partition(dbn))`` is the AIS estimate of the bound (1);
``log Z_top`` is the top RBM's. For a one-layer DBN it is the RBM's free energy exactly. The exact
``log p(v)`` of a tiny DBN enumerates every layer between ``v`` and the top RBM's visible layer. During the
greedy phase the DBN is the stack trained so far (:attr:`DBN.depth`), so the bound of the first
RBM and of the deeper nets can be compared within one run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_ebm.models.stack import GreedyRBMStack
from lightning_ebm.nn.boltzmann import (
    MAX_ENUMERATED_UNITS,
    bernoulli_entropy,
    bernoulli_log_prob,
    refuse_above,
    state_chunks,
)
from lightning_ebm.nn.rbm import RBMAnnealingPath, RBMLayer
from lightning_ebm.samplers.gibbs import sample_bernoulli
from lightning_ebm.utils import check_bounds


class DBN(GreedyRBMStack):
    """Deep belief network of binary units, trained greedily within one ``fit``.

    Args:
        layer_sizes: units per layer, the visible layer first (784-500-500-2000 in Hinton et al. 2006).
        layer_epochs: greedy-training epochs of each RBM; the run stops once the last is trained.
        data_shape: shape of one example (default ``[layer_sizes[0]]``).
        tied_init: start each RBM whose hidden layer has the size of its own visible layer's
            parent (``layer_sizes[l + 1] == layer_sizes[l - 1]``) from the transposed weights of the
            RBM below, as in Hinton et al. 2006: the DBN's bound then starts at the likelihood of
            the net below and training can only raise it.
        sample_steps: Gibbs sweeps in the top RBM for :meth:`sample`.
        sample_mean: :meth:`sample` returns ``p(v = 1 | x_1)`` of the down pass instead of a sample.
        bound_samples: draws of ``q`` in the Monte-Carlo estimate of :meth:`energy`.
        stack_options: the greedy training of every layer (``method``, ``k``, ``num_chains``,
            ``layer_optimizer``, ``layer_schedule``, ...: :class:`~lightning_ebm.models.stack.GreedyRBMStack`).
    """

    def __init__(
        self,
        layer_sizes: Sequence[int],
        layer_epochs: Sequence[int],
        data_shape: Sequence[int] | None = None,
        tied_init: bool = True,
        sample_steps: int = 1000,
        sample_mean: bool = False,
        bound_samples: int = 10,
        **stack_options: Any,
    ) -> None:
        super().__init__(layer_sizes, layer_epochs, data_shape, **stack_options)
        self.save_hyperparameters()
        check_bounds(positive=dict(bound_samples=bound_samples), non_negative=dict(sample_steps=sample_steps))
        #: The number of RBMs the DBN consists of now: all of them, except during greedy training,
        #: where it is the layers trained so far and the one in training.
        self.register_buffer("depth", torch.tensor(len(self.layers)))

    # ------------------------------------------------------------------ the model
    @property
    def top(self) -> RBMLayer:
        """The top RBM (of the current :attr:`depth`)."""
        return self.layers[int(self.depth) - 1]

    @torch.no_grad()
    def variational_free_energy(self, x: Tensor, num_samples: int | None = None) -> Tensor:
        """``-(bound (1) + log Z_top)`` of each example, averaged over ``num_samples`` draws of ``q``."""
        depth = int(self.depth)
        v = self.flatten(x)
        if depth == 1:
            return self.top.free_energy(v)
        s = num_samples or self.hparams.bound_samples
        states = [v.repeat(s, 1)]  # (s * batch, n): every example s times
        entropy = torch.zeros(states[0].shape[0], dtype=v.dtype, device=v.device)
        for layer in self.layers[: depth - 1]:  # draws of q(x_l | x_{l-1}), l = 1 .. D-1
            logits = layer.hidden_input(states[-1])
            entropy += bernoulli_entropy(logits)
            states.append(sample_bernoulli(torch.sigmoid(logits)))
        log_p = -self.top.free_energy(states[-1])
        for i in range(depth - 1):  # log p(x_l | x_{l+1}), the top-down weights
            log_p += bernoulli_log_prob(states[i], self.layers[i].visible_input(states[i + 1]))
        return -(log_p + entropy).view(s, -1).mean(0)

    # ------------------------------------------------------------------ the contract
    def energy(self, x: Tensor) -> Tensor:
        """The variational free energy (see the module docstring): ``-log p(x) - log Z_top`` or more;
        a Monte-Carlo estimate, exact for a one-layer DBN."""
        return self.variational_free_energy(x)

    @torch.no_grad()
    def sample(self, num_samples: int, num_steps: int | None = None) -> Tensor:
        """Gibbs sampling in the top RBM from random states, then a directed pass down to ``v``."""
        steps = self.hparams.sample_steps if num_steps is None else num_steps
        depth = int(self.depth)
        top = self.top
        x = top.random_visible(num_samples)
        for _ in range(steps):
            x = top.gibbs_step(x)
        for i in range(depth - 2, -1, -1):
            probs = self.layers[i].visible_mean(x)
            x = probs if i == 0 and self.hparams.sample_mean else sample_bernoulli(probs)
        return x.reshape(num_samples, *self.data_shape)

    # ------------------------------------------------------------------ exact and AIS likelihood
    def exact_log_partition(self, max_units: int = MAX_ENUMERATED_UNITS) -> float:
        """``log Z`` of the top RBM (the normaliser of the bound)."""
        return self.top.exact_log_partition(max_units)

    @torch.no_grad()
    def exact_log_likelihood(self, x: Tensor, max_units: int = MAX_ENUMERATED_UNITS) -> Tensor:
        """``log p(v)`` by enumerating every layer between ``v`` and the top RBM's visible layer (float64)."""
        v = self.flatten(x.to(self.device)).double()
        depth = int(self.depth)
        top = self.top
        if depth == 1:
            return top.exact_log_likelihood(v, max_units)
        sizes = self.layer_sizes[1:depth]
        units = sum(sizes)
        refuse_above(units, max_units, "the DBN's intermediate layers")
        layers = [(layer.W.detach().double(), layer.visible_bias.detach().double()) for layer in self.layers]
        W_top, b_top, c_top = (t.detach().double() for t in (top.W, top.visible_bias, top.hidden_bias))
        parts = []
        for chunk in state_chunks(units, v.device, chunk=4096):
            states = [v, *chunk.split(sizes, 1)]
            W, b = layers[0]
            logits = b + states[1] @ W.t()
            log_p = v @ logits.t() - F.softplus(logits).sum(1)  # log p(v | x_1), (batch, states)
            rest = states[-1] @ b_top + F.softplus(states[-1] @ W_top + c_top).sum(1)  # -F_top(x_{D-1})
            for i in range(1, depth - 1):
                W, b = layers[i]
                rest = rest + bernoulli_log_prob(states[i], b + states[i + 1] @ W.t())
            parts.append(torch.logsumexp(log_p + rest, dim=1))
        return torch.logsumexp(torch.stack(parts, 1), 1) - top.exact_log_partition(max_units)

    def annealing_path(self, data: Tensor | None = None) -> RBMAnnealingPath:
        """The top RBM's AIS path, with a base rate from the data passed up to it."""
        top_data = None if data is None else self.up_pass(data.to(self.device), int(self.depth) - 1)
        return self.top.annealing_path(top_data)

    # ------------------------------------------------------------------ greedy training
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        layer = self.current_layer
        if layer is None:
            return
        if self.depth != layer + 1:
            self.depth.fill_(layer + 1)
            if self.current_epoch == self.layer_start(layer):
                self._tie_to_layer_below(layer)

    @torch.no_grad()
    def _tie_to_layer_below(self, layer: int) -> None:
        if not self.hparams.tied_init or layer == 0 or self.layer_sizes[layer + 1] != self.layer_sizes[layer - 1]:
            return
        below, rbm = self.layers[layer - 1], self.layers[layer]
        rbm.W.copy_(below.W.t())
        rbm.visible_bias.copy_(below.hidden_bias)
        rbm.hidden_bias.copy_(below.visible_bias)

    def on_train_end(self) -> None:
        if self.current_layer is None:  # greedy training is complete
            self.depth.fill_(len(self.layers))

    def evaluation_metrics(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """The layer metrics of the stack and the mean variational free energy (``energy_data``)."""
        metrics = super().evaluation_metrics(batch, batch_idx)
        metrics["energy_data"] = self.energy(self.batch_data(batch)).mean()
        return metrics
