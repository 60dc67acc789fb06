"""Deep belief network: a stack of RBMs trained greedily, layer by layer.

Hinton, Osindero & Teh 2006, "A fast learning algorithm for deep belief nets"; the likelihood bound
of Salakhutdinov & Murray 2008, "On the quantitative analysis of deep belief networks". Background:
Baumann 2018, section 3.

A DBN with layers ``x_0 = v, x_1, ..., x_D`` is a directed sigmoid belief net from ``x_{D-1}`` down
to ``v`` under an RBM over the top two layers:

    p(v, x_1, ..., x_D) = prod_{l=0}^{D-2} p(x_l | x_{l+1}) * p_top(x_{D-1}, x_D)
    p(x_l = 1 | x_{l+1}) = sigmoid(b_l + W_l x_{l+1})        (the generative, top-down weights)

Each layer is first trained as an RBM on the hidden probabilities of the layers below it (the
greedy phase of :class:`~lightning_ebm.models.stack.GreedyRBMStack`); the RBMs' bottom-up
conditionals ``q(x_{l+1} | x_l) = sigmoid(c_l + W_l^T x_l)`` then serve as an approximate posterior.

Likelihood. ``p(v)`` itself is intractable; what is well defined is the variational lower bound
(Salakhutdinov & Murray 2008, Eq. 13), with ``q`` the factorial bottom-up posterior:

    log p(v) >= E_q[ sum_{l=0}^{D-2} log p(x_l | x_{l+1}) - F_top(x_{D-1}) ]
                + sum_{l=1}^{D-1} E_q[ H(q(x_l | x_{l-1})) ] - log Z_top              (1)

:meth:`DBN.energy` returns the *variational free energy* ``-(bound + log Z_top)``, a Monte-Carlo
estimate over ``bound_samples`` draws of ``q`` (the entropies are exact given the parent sample), so
that ``log_likelihood(dbn, x, estimate_log_partition(dbn))`` is the AIS estimate of the bound (1);
``log Z_top`` is the top RBM's. For a one-layer DBN it is the RBM's free energy exactly. During the
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
from lightning_ebm.samplers.gibbs import sample_bernoulli


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """``log p(x)`` of factorial Bernoulli units with ``logits``, summed over units."""
    return (x * logits - F.softplus(logits)).sum(-1)


def bernoulli_entropy(logits: Tensor) -> Tensor:
    """Entropy of factorial Bernoulli units with ``logits``, summed over units:
    ``H = softplus(a) - sigmoid(a) a``."""
    return (F.softplus(logits) - torch.sigmoid(logits) * logits).sum(-1)


class DBN(GreedyRBMStack):
    """Deep belief network of binary units, trained greedily within one ``fit``.

    Args:
        layer_sizes: units per layer, the visible layer first (784-500-500-2000 in Hinton et al. 2006).
        layer_epochs: greedy-training epochs of each RBM; the run stops once the last is trained.
        data_shape: shape of one example (default ``[layer_sizes[0]]``).
        rbm: options of every layer's :class:`~lightning_ebm.models.RBM` (``method``, ``k``, ``lr``,
            momentum schedule, ``weight_decay``, ...).
        tied_init: start each RBM whose hidden layer has the size of its own visible layer's
            parent (``layer_sizes[l + 1] == layer_sizes[l - 1]``) from the transposed weights of the
            RBM below, as in Hinton et al. 2006: the DBN's bound then starts at the likelihood of
            the net below and training can only raise it.
        sample_steps: Gibbs sweeps in the top RBM for :meth:`sample`.
        sample_mean: :meth:`sample` returns ``p(v = 1 | x_1)`` of the down pass instead of a sample.
        bound_samples: draws of ``q`` in the Monte-Carlo estimate of :meth:`energy`.
    """

    def __init__(
        self,
        layer_sizes: Sequence[int],
        layer_epochs: Sequence[int],
        data_shape: Sequence[int] | None = None,
        rbm: dict[str, Any] | None = None,
        tied_init: bool = True,
        sample_steps: int = 1000,
        sample_mean: bool = False,
        bound_samples: int = 10,
    ) -> None:
        super().__init__(layer_sizes, layer_epochs, data_shape, rbm)
        self.save_hyperparameters()
        if bound_samples < 1:
            raise ValueError(f"bound_samples must be at least 1, got {bound_samples}")
        #: The number of RBMs the DBN consists of now: all of them, except during greedy training,
        #: where it is the layers trained so far and the one in training.
        self.register_buffer("depth", torch.tensor(len(self.rbms)))

    # ------------------------------------------------------------------ the model
    @property
    def top(self) -> Any:
        """The top RBM (of the current :attr:`depth`)."""
        return self.rbms[int(self.depth) - 1]

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
        for rbm in self.rbms[: depth - 1]:  # draws of q(x_l | x_{l-1}), l = 1 .. D-1
            logits = rbm.hidden_input(states[-1])
            entropy += bernoulli_entropy(logits)
            states.append(sample_bernoulli(torch.sigmoid(logits)))
        log_p = -self.top.free_energy(states[-1])
        for layer in range(depth - 1):  # log p(x_l | x_{l+1}), the top-down weights
            log_p += bernoulli_log_prob(states[layer], self.rbms[layer].visible_input(states[layer + 1]))
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
        for layer in range(depth - 2, -1, -1):
            probs = self.rbms[layer].visible_mean(x)
            x = probs if layer == 0 and self.hparams.sample_mean else sample_bernoulli(probs)
        return x.reshape(num_samples, *self.data_shape)

    # ------------------------------------------------------------------ greedy training
    def on_train_epoch_start(self) -> None:
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
        below, rbm = self.rbms[layer - 1], self.rbms[layer]
        rbm.W.copy_(below.W.t())
        rbm.visible_bias.copy_(below.hidden_bias)
        rbm.hidden_bias.copy_(below.visible_bias)

    def on_train_end(self) -> None:
        if self.current_layer is None:  # greedy training is complete
            self.depth.fill_(len(self.rbms))
