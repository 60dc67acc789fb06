"""Deep Boltzmann machine: layer-wise pretraining, then joint training with mean-field inference
for the data term and persistent Gibbs chains for the model term.

Salakhutdinov & Hinton 2009, "Deep Boltzmann machines"; Salakhutdinov & Larochelle 2010.
Background: Baumann 2018, section 4.

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

Learning (stochastic approximation). The gradient of the log-likelihood is
``<x_l x_{l+1}^T>_data - <x_l x_{l+1}^T>_model`` for ``W_l`` and ``<x_l>_data - <x_l>_model`` for ``b_l``;
the data term takes ``mu`` (with ``mu_0 = v``), the model term the states of persistent chains
(100 "fantasy particles", a few Gibbs sweeps per update).

Pretraining (Salakhutdinov & Hinton 2009, section 3.1). The layers are first trained greedily as
RBMs whose weights are doubled where the DBM's layer will also get input from the other side: the
first RBM doubles its bottom-up input (``2 W^T v``), the last its top-down input, the middle ones
both. Composing them, ``W_l`` is RBM ``l``'s ``W``; a hidden layer's bias is the mean of the biases
the two RBMs that share the layer gave it (so its input is the mean of theirs).

``energy(x)`` is the mean-field free energy ``F_MF(x)`` of (3), an upper bound on the true free
energy: ``log_likelihood(dbm, x, estimate_log_partition(dbm))`` is the variational lower bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_ebm.models.stack import GreedyRBMStack
from lightning_ebm.samplers.gibbs import block_gibbs, sample_bernoulli

_STARTS = ("noise", "chains")
_TOL_EVERY = 5  # mean-field sweeps between two convergence tests (each one synchronises with the host)


def pretraining_scales(num_rbms: int) -> list[tuple[float, float]]:
    """``(bottom_up, top_down)`` weight multipliers of each pretraining RBM (Salakhutdinov & Hinton 2009)."""
    if num_rbms == 1:
        return [(1.0, 1.0)]
    return [(2.0 if i < num_rbms - 1 else 1.0, 2.0 if i > 0 else 1.0) for i in range(num_rbms)]


class DBM(GreedyRBMStack):
    """Deep Boltzmann machine with binary units and any number of hidden layers.

    Args:
        layer_sizes: units per layer, the visible layer first (784-500-1000 on MNIST).
        layer_epochs: pretraining epochs of each layer's RBM (zeros: no pretraining); the joint
            training runs for the rest of ``trainer.max_epochs``.
        data_shape: shape of one example (default ``[layer_sizes[0]]``).
        rbm: options of the pretraining RBMs (``method``, ``k``, ``lr``, momentum, ``weight_decay``...).
        lr: learning rate of joint training; ``lr_decay`` ``linear`` decreases it to 0 over the
            joint phase, as in the paper, ``none`` keeps it.
        momentum, final_momentum, momentum_epochs: momentum of joint training, ``final_momentum``
            after its first ``momentum_epochs`` epochs.
        weight_decay: L2 penalty on the weights (not the biases).
        init_std: standard deviation of the initial weights (without pretraining).
        num_chains: persistent chains per process (the fantasy particles).
        gibbs_steps: Gibbs sweeps of the chains per update.
        mean_field_steps: fixed-point iterations of the data term in training.
        eval_mean_field_steps: at most this many iterations for :meth:`energy`, stopping when no
            ``mu`` moves more than ``mean_field_tol``.
        sample_steps: Gibbs sweeps of :meth:`sample`; ``sample_start`` ``noise`` or ``chains``.
        sample_mean: :meth:`sample` returns ``p(v = 1 | x_1)`` of its last sweep instead of ``v``.
    """

    def __init__(
        self,
        layer_sizes: Sequence[int],
        layer_epochs: Sequence[int] | None = None,
        data_shape: Sequence[int] | None = None,
        rbm: dict[str, Any] | None = None,
        lr: float = 0.001,
        lr_decay: str = "linear",
        momentum: float = 0.5,
        final_momentum: float = 0.9,
        momentum_epochs: int = 5,
        weight_decay: float = 2e-4,
        init_std: float = 0.01,
        num_chains: int = 100,
        gibbs_steps: int = 5,
        mean_field_steps: int = 10,
        eval_mean_field_steps: int = 50,
        mean_field_tol: float = 1e-6,
        sample_steps: int = 1000,
        sample_start: str = "noise",
        sample_mean: bool = False,
    ) -> None:
        num_rbms = len(layer_sizes) - 1
        epochs = list(layer_epochs) if layer_epochs is not None else [0] * num_rbms
        super().__init__(layer_sizes, epochs, data_shape, rbm, scales=pretraining_scales(max(num_rbms, 1)))
        self.save_hyperparameters()
        if lr_decay not in ("linear", "none"):
            raise ValueError(f"lr_decay must be one of linear, none; got {lr_decay!r}")
        if sample_start not in _STARTS:
            raise ValueError(f"sample_start must be one of {', '.join(_STARTS)}; got {sample_start!r}")
        if min(num_chains, gibbs_steps, mean_field_steps, eval_mean_field_steps) < 1:
            raise ValueError("num_chains, gibbs_steps and the mean-field steps must be at least 1")
        sizes = self.layer_sizes
        self.weights = nn.ParameterList(
            nn.Parameter(init_std * torch.randn(a, b)) for a, b in zip(sizes[:-1], sizes[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(n)) for n in sizes)
        #: Whether the weights hold the pretrained RBMs (set once, when joint training starts).
        self.register_buffer("composed", torch.tensor(False))
        #: Persistent chains of this process, every layer's states side by side, ``(num_chains, sum(sizes))``.
        self.persistent_chains: Tensor | None = None

    @property
    def num_layers(self) -> int:
        """Number of layers, the visible one included."""
        return len(self.layer_sizes)

    # ------------------------------------------------------------------ the model
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
        return torch.randint(0, 2, (num_chains, sum(self.layer_sizes)), device=self.device).to(self.weights[0].dtype)

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

    # ------------------------------------------------------------------ the contract
    @torch.no_grad()
    def energy(self, x: Tensor) -> Tensor:
        """The mean-field free energy ``F_MF(x) >= F(x)`` (Eq. 3), so ``-energy - log Z`` is the
        variational lower bound on ``log p(x)``."""
        v = self.flatten(x)
        hp = self.hparams
        return self.mean_field_free_energy(self.mean_field(v, hp.eval_mean_field_steps, hp.mean_field_tol))

    @torch.no_grad()
    def sample(self, num_samples: int, num_steps: int | None = None, start: str | None = None) -> Tensor:
        """``v`` after ``num_steps`` Gibbs sweeps over every layer, from ``noise`` or the persistent ``chains``."""
        steps = self.hparams.sample_steps if num_steps is None else num_steps
        start = self.hparams.sample_start if start is None else start
        if start not in _STARTS:
            raise ValueError(f"start must be one of {', '.join(_STARTS)}; got {start!r}")
        states = self.random_states(num_samples)
        if start == "chains" and self.persistent_chains is not None:
            chains = self.persistent_chains[:num_samples].to(states)
            states = torch.cat([chains, states[chains.shape[0] :]])
        states = block_gibbs(self.gibbs_sweep, states, steps)
        layers = self.split_layers(states)
        v = torch.sigmoid(self.layer_input(layers, 0)) if self.hparams.sample_mean else layers[0]
        return v.reshape(num_samples, *self.data_shape)

    # ------------------------------------------------------------------ joint training
    @property
    def has_later_phase(self) -> bool:
        return True

    @property
    def likelihood_ready(self) -> bool:
        """False until the pretrained layers are composed into the DBM (the AIS callback waits)."""
        return bool(self.composed) or self.pretraining_epochs == 0

    @torch.no_grad()
    def compose_pretrained(self) -> None:
        """The DBM's weights and biases from the pretrained RBMs (module docstring)."""
        rbms = self.rbms
        for layer, rbm in enumerate(rbms):
            self.weights[layer].copy_(rbm.W)
        self.biases[0].copy_(rbms[0].visible_bias)
        self.biases[-1].copy_(rbms[-1].hidden_bias)
        for layer in range(1, self.num_layers - 1):
            self.biases[layer].copy_((rbms[layer - 1].hidden_bias + rbms[layer].visible_bias) / 2)
        self.composed.fill_(True)

    def on_train_epoch_start(self) -> None:
        if self.current_layer is None and not self.composed:
            if self.pretraining_epochs > 0:
                self.compose_pretrained()
            self.composed.fill_(True)

    def on_train_end(self) -> None:
        if self.current_layer is None and not self.composed and self.pretraining_epochs > 0:
            self.compose_pretrained()

    def negative_phase(self) -> list[Tensor]:
        """The persistent chains after ``gibbs_steps`` more sweeps, split by layer."""
        if self.persistent_chains is None:
            self.persistent_chains = self.random_states(self.hparams.num_chains)
        self.persistent_chains = block_gibbs(self.gibbs_sweep, self.persistent_chains, self.hparams.gibbs_steps)
        return self.split_layers(self.persistent_chains)

    def stochastic_approximation_surrogate(self, data: Sequence[Tensor], model: Sequence[Tensor]) -> Tensor:
        """A loss whose gradient is minus the update of the module docstring,

            dW_l = -(<x_l x_{l+1}^T>_data - <x_l x_{l+1}^T>_model),   db_l = -(<x_l>_data - <x_l>_model),

        with the data term from the mean-field ``mu`` and the model term from the chains: the
        statistics are computed without autograd and returned as ``sum(theta * dtheta)``."""
        n, m = data[0].shape[0], model[0].shape[0]
        loss = torch.zeros((), device=data[0].device, dtype=data[0].dtype)
        with torch.no_grad():
            grads_W = [
                model[i].t() @ model[i + 1] / m - data[i].t() @ data[i + 1] / n for i in range(len(self.weights))
            ]
            grads_b = [model[i].mean(0) - data[i].mean(0) for i in range(self.num_layers)]
        for W, g in zip(self.weights, grads_W):
            loss = loss + (W * g).sum()
        for b, g in zip(self.biases, grads_b):
            loss = loss + (b * g).sum()
        return loss

    def after_pretraining_step(self, x: Tensor, batch_idx: int) -> None:
        hp = self.hparams
        optimizer = self._optimizer(len(self.rbms))
        epoch = self.current_epoch - self.pretraining_epochs
        for group in optimizer.param_groups:
            group["momentum"] = hp.momentum if epoch < hp.momentum_epochs else hp.final_momentum
            group["lr"] = hp.lr * self._lr_factor(epoch, batch_idx)
        v = self.flatten(x)
        with torch.no_grad():
            mu = self.mean_field(v, hp.mean_field_steps)
            model = self.negative_phase()
        optimizer.zero_grad()
        self.manual_backward(self.stochastic_approximation_surrogate(mu, model))
        optimizer.step()
        if self.should_log_step:
            with torch.no_grad():
                free_energy = self.mean_field_free_energy(mu).mean()
                metrics = {
                    "mean_field_free_energy": free_energy,
                    "energy_data": self.joint_energy(mu).mean(),
                    "energy_samples": self.joint_energy(model).mean(),
                    "lr": torch.tensor(optimizer.param_groups[0]["lr"]),
                }
            self.log_train_metrics(metrics, prog_bar=("mean_field_free_energy",))

    def _lr_factor(self, epoch: int, batch_idx: int) -> float:
        """``1 - t / T`` over the joint phase's ``T`` updates (``lr_decay: linear``), else 1."""
        max_epochs = self.trainer.max_epochs
        if self.hparams.lr_decay == "none" or max_epochs is None or max_epochs < 0:
            return 1.0
        return self.linear_decay(epoch, batch_idx, max_epochs - self.pretraining_epochs)

    @torch.no_grad()
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """During pretraining, the layer's RBM metrics; then the held-out mean-field free energy
        (``val/mean_field_free_energy``)."""
        if self.current_layer is not None:
            return super().validation_step(batch, batch_idx)
        x = self.batch_data(batch)
        self.log("val/mean_field_free_energy", self.energy(x).mean(), sync_dist=True, batch_size=x.shape[0])

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        joint = torch.optim.SGD(
            [
                {"params": list(self.weights), "weight_decay": hp.weight_decay},
                {"params": list(self.biases), "weight_decay": 0.0},
            ],
            lr=hp.lr,
            momentum=hp.momentum,
        )
        return [*super().configure_optimizers(), joint]

    # ------------------------------------------------------------------ per-process state
    def per_rank_state(self) -> dict[str, Tensor]:
        state = super().per_rank_state()
        if self.persistent_chains is not None:
            state["persistent_chains"] = self.persistent_chains
        return state

    def load_per_rank_state(self, state: dict[str, Tensor]) -> None:
        super().load_per_rank_state(state)
        if "persistent_chains" in state:
            self.persistent_chains = state["persistent_chains"].to(self.weights[0].dtype)
