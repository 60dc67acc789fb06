"""Deep Boltzmann machine: layer-wise pretraining, then joint training with mean-field inference
for the data term and persistent Gibbs chains for the model term.

Salakhutdinov & Hinton 2009, "Deep Boltzmann machines"; Salakhutdinov & Larochelle 2010.
Background: Baumann 2018, section 4.

The network, its energy (1), conditionals (2), mean-field bound (3), exact ``log Z`` and AIS path
are :class:`~lightning_ebm.nn.DBMNet`'s (equation numbers as there).

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
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_ebm.models.stack import GreedyRBMStack
from lightning_ebm.nn.boltzmann import MAX_ENUMERATED_UNITS
from lightning_ebm.nn.dbm import DBMAnnealingPath, DBMNet
from lightning_ebm.optim import LRSchedulerCallable, OptimizerCallable, build_optimizer, spec
from lightning_ebm.samplers.gibbs import block_gibbs
from lightning_ebm.utils import check_bounds

#: Joint training (Salakhutdinov & Hinton 2009): SGD at 0.001 with momentum 0.5 then 0.9, weight decay
#: 2e-4 on the weights, the learning rate decreased linearly to 0 over the joint phase.
JOINT_SGD = spec("torch.optim.SGD", lr=0.001, momentum=0.5, weight_decay=2e-4)
JOINT_SCHEDULE = spec("lightning_ebm.optim.Schedule", linear_decay_start=0.0, final_momentum=0.9, momentum_epochs=5)


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
        optimizer: the optimiser of joint training (weight decay on the weights only);
            ``lr_schedule`` its schedule over the joint phase (the paper: linear decay to 0 and momentum
            0.9 after 5 epochs).
        init_std: standard deviation of the initial weights.
        num_chains: persistent chains per process (the fantasy particles) of joint training.
        gibbs_steps: Gibbs sweeps of the chains per update.
        mean_field_steps: fixed-point iterations of the data term in training.
        eval_mean_field_steps: at most this many iterations for :meth:`energy`, stopping when no
            ``mu`` moves more than ``mean_field_tol``.
        sample_steps: Gibbs sweeps of :meth:`sample`; ``sample_start`` ``noise`` or ``chains``.
        sample_mean: :meth:`sample` returns ``p(v = 1 | x_1)`` of its last sweep instead of ``v``.
        layer_num_chains: persistent chains per process of PCD pretraining (default: the batch size).
        stack_options: the rest of the pretraining of every layer (``method``, ``k``, ``layer_optimizer``,
            ``layer_schedule``, ...: :class:`~lightning_ebm.models.stack.GreedyRBMStack`).
    """

    def __init__(
        self,
        layer_sizes: Sequence[int],
        layer_epochs: Sequence[int] | None = None,
        data_shape: Sequence[int] | None = None,
        optimizer: OptimizerCallable = JOINT_SGD,
        lr_schedule: LRSchedulerCallable | None = JOINT_SCHEDULE,
        init_std: float = 0.01,
        num_chains: int = 100,
        gibbs_steps: int = 5,
        mean_field_steps: int = 10,
        eval_mean_field_steps: int = 50,
        mean_field_tol: float = 1e-6,
        sample_steps: int = 1000,
        sample_start: Literal["noise", "chains"] = "noise",
        sample_mean: bool = False,
        layer_num_chains: int | None = None,
        **stack_options: Any,
    ) -> None:
        num_rbms = len(layer_sizes) - 1
        epochs = list(layer_epochs) if layer_epochs is not None else [0] * num_rbms
        scales = pretraining_scales(max(num_rbms, 1))
        super().__init__(
            layer_sizes, epochs, data_shape, num_chains=layer_num_chains, init_std=init_std, scales=scales,
            **stack_options,
        )  # fmt: skip
        self.save_hyperparameters()
        check_bounds(
            positive=dict(num_chains=num_chains, gibbs_steps=gibbs_steps, mean_field_steps=mean_field_steps,
                          eval_mean_field_steps=eval_mean_field_steps, layer_num_chains=layer_num_chains),
            non_negative=dict(init_std=init_std, mean_field_tol=mean_field_tol, sample_steps=sample_steps),
        )  # fmt: skip
        self.net = DBMNet(self.layer_sizes, init_std)
        #: Whether the weights hold the pretrained RBMs (set once, when joint training starts).
        self.register_buffer("composed", torch.tensor(False))
        #: Persistent chains of this process, every layer's states side by side, ``(num_chains, sum(sizes))``.
        self.persistent_chains: Tensor | None = None

    # ------------------------------------------------------------------ the contract
    @torch.no_grad()
    def energy(self, x: Tensor) -> Tensor:
        """The mean-field free energy ``F_MF(x) >= F(x)`` (Eq. 3), so ``-energy - log Z`` is the
        variational lower bound on ``log p(x)``."""
        hp = self.hparams
        mu = self.net.mean_field(self.flatten(x), hp.eval_mean_field_steps, hp.mean_field_tol)
        return self.net.mean_field_free_energy(mu)

    @torch.no_grad()
    def sample(self, num_samples: int, num_steps: int | None = None, start: str | None = None) -> Tensor:
        """``v`` after ``num_steps`` Gibbs sweeps over every layer, from ``noise`` or the persistent ``chains``."""
        net = self.net
        steps = self.hparams.sample_steps if num_steps is None else num_steps
        start = self.hparams.sample_start if start is None else start
        if start not in ("noise", "chains"):
            raise ValueError(f"start must be 'noise' or 'chains'; got {start!r}")
        states = net.random_states(num_samples)
        if start == "chains" and self.persistent_chains is not None:
            chains = self.persistent_chains[:num_samples].to(states)
            states = torch.cat([chains, states[chains.shape[0] :]])
        states = block_gibbs(net.gibbs_sweep, states, steps)
        layers = net.split_layers(states)
        v = torch.sigmoid(net.layer_input(layers, 0)) if self.hparams.sample_mean else layers[0]
        return v.reshape(num_samples, *self.data_shape)

    # ------------------------------------------------------------------ exact and AIS likelihood
    def flatten(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1).to(self.net.weights[0].dtype) if hasattr(self, "net") else super().flatten(x)

    def exact_log_partition(self, max_units: int = MAX_ENUMERATED_UNITS) -> float:
        return self.net.exact_log_partition(max_units)

    def exact_log_likelihood(self, x: Tensor, max_units: int = MAX_ENUMERATED_UNITS) -> Tensor:
        return self.net.exact_log_likelihood(self.flatten(x.to(self.device)), max_units)

    def annealing_path(self, data: Tensor | None = None) -> DBMAnnealingPath:
        return self.net.annealing_path(None if data is None else self.flatten(data.to(self.device)))

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
        rbms, net = self.layers, self.net
        for i, rbm in enumerate(rbms):
            net.weights[i].copy_(rbm.W)
        net.biases[0].copy_(rbms[0].visible_bias)
        net.biases[-1].copy_(rbms[-1].hidden_bias)
        for i in range(1, net.num_layers - 1):
            net.biases[i].copy_((rbms[i - 1].hidden_bias + rbms[i].visible_bias) / 2)
        self.composed.fill_(True)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.current_layer is None and not self.composed:
            if self.pretraining_epochs > 0:
                self.compose_pretrained()
            self.composed.fill_(True)

    def on_train_end(self) -> None:
        if self.current_layer is None and not self.composed and self.pretraining_epochs > 0:
            self.compose_pretrained()

    def negative_phase(self) -> list[Tensor]:
        """The persistent chains after ``gibbs_steps`` more sweeps, split by layer."""
        net = self.net
        if self.persistent_chains is None:
            self.persistent_chains = net.random_states(self.hparams.num_chains)
        chains = block_gibbs(net.gibbs_sweep, self.persistent_chains, self.hparams.gibbs_steps)
        self.persistent_chains.copy_(chains)  # in place, so that a captured update carries them on
        return net.split_layers(self.persistent_chains)

    def stochastic_approximation_surrogate(self, data: Sequence[Tensor], model: Sequence[Tensor]) -> Tensor:
        """A loss whose gradient is minus the update of the module docstring,

            dW_l = -(<x_l x_{l+1}^T>_data - <x_l x_{l+1}^T>_model),   db_l = -(<x_l>_data - <x_l>_model),

        with the data term from the mean-field ``mu`` and the model term from the chains: the
        statistics are computed without autograd and returned as ``sum(theta * dtheta)``."""
        net = self.net
        n, m = data[0].shape[0], model[0].shape[0]
        loss = torch.zeros((), device=data[0].device, dtype=data[0].dtype)
        with torch.no_grad():
            grads_W = [model[i].t() @ model[i + 1] / m - data[i].t() @ data[i + 1] / n for i in range(len(net.weights))]
            grads_b = [model[i].mean(0) - data[i].mean(0) for i in range(net.num_layers)]
        for W, g in zip(net.weights, grads_W):
            loss = loss + (W * g).sum()
        for b, g in zip(net.biases, grads_b):
            loss = loss + (b * g).sum()
        return loss

    def joint_update(self, x: Tensor, log: bool) -> dict[str, Tensor]:
        """Stochastic approximation: the data term by mean field, the model term by the persistent chains."""
        hp, net = self.hparams, self.net
        optimizer = self.update_optimizers()[len(self.layers)]
        v = self.flatten(x)
        with torch.no_grad():
            mu = net.mean_field(v, hp.mean_field_steps)
            model = self.negative_phase()
        optimizer.zero_grad()
        self.backward_loss(self.stochastic_approximation_surrogate(mu, model))
        optimizer.step()
        if not log:
            return {}
        with torch.no_grad():
            return {
                "mean_field_free_energy": net.mean_field_free_energy(mu).mean(),
                "energy_data": net.joint_energy(mu).mean(),
                "energy_samples": net.joint_energy(model).mean(),
            }

    @torch.no_grad()
    def evaluation_metrics(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """During pretraining, the layer's RBM metrics; then the held-out mean-field free energy."""
        if self.current_layer is not None:
            return super().evaluation_metrics(batch, batch_idx)
        return {"mean_field_free_energy": self.energy(self.batch_data(batch)).mean()}

    def players(self) -> list[tuple[torch.optim.Optimizer, Any]]:
        """The layers' optimisers, then joint training's (weight decay on the weights only)."""
        net, hp = self.net, self.hparams
        groups = [{"params": list(net.weights)}, {"params": list(net.biases), "weight_decay": 0.0}]
        return [*super().players(), (build_optimizer(hp.optimizer, groups), hp.lr_schedule)]

    # ------------------------------------------------------------------ per-process state
    def per_rank_state(self) -> dict[str, Tensor]:
        state = super().per_rank_state()
        if self.persistent_chains is not None:
            state["persistent_chains"] = self.persistent_chains
        return state

    def load_per_rank_state(self, state: dict[str, Tensor]) -> None:
        super().load_per_rank_state(state)
        if "persistent_chains" in state:
            self.persistent_chains = state["persistent_chains"].to(self.net.weights[0].dtype)
