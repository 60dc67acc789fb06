"""Greedy layer-wise training of a stack of RBMs, the first phase of a DBN and of a DBM.

Hinton, Osindero & Teh 2006 (deep belief nets); Salakhutdinov & Hinton 2009 (deep Boltzmann
machines). Layer ``l`` is an :class:`~lightning_ebm.nn.RBMLayer` between units ``x_l`` and ``x_{l+1}``
(``x_0`` the data). It trains, for its own number of epochs, on the hidden probabilities of the
trained layers below it,

    x_{l+1} = p(h = 1 | x_l) = sigmoid(c_l + s_l W_l^T x_l)

(the bottom-up pass; ``s_l`` is 1 for a DBN and 2 where a DBM doubles it), with the RBM's own
CD-k / PCD update (:class:`~lightning_ebm.models.rbm.ContrastiveDivergence`) and recipe (momentum
schedule, weight decay on ``W``). All layers train within one ``fit``; the epoch decides the layer,
so a resumed run continues in the layer it stopped in.

Subclasses (:class:`~lightning_ebm.models.DBN`, :class:`~lightning_ebm.models.DBM`) say what the
trained stack is and may add a phase after it (:meth:`GreedyRBMStack.joint_update`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_ebm.models.base import EnergyBasedModel
from lightning_ebm.models.rbm import (
    MOMENTUM_SCHEDULE,
    SGD_RECIPE,
    ContrastiveDivergence,
    init_visible_bias_from,
    log_filters,
    monitoring_metrics,
    weight_decay_on_weights_only,
)
from lightning_ebm.nn.rbm import RBMLayer
from lightning_ebm.optim import LRSchedulerCallable, OptimizerCallable, build_optimizer
from lightning_ebm.utils import check_bounds, check_choices


class GreedyRBMStack(EnergyBasedModel):
    """A stack of binary RBM layers trained greedily, one after another (manual optimisation: one
    optimiser per layer, and any the subclass adds after them).

    Args:
        layer_sizes: units per layer, the visible layer first, e.g. ``[784, 500, 500, 2000]``.
        layer_epochs: epochs of greedy training of each RBM (``len(layer_sizes) - 1`` numbers).
        data_shape: shape of one example (default ``[layer_sizes[0]]``).
        method: ``cd`` or ``pcd``, and ``k`` Gibbs sweeps per update, ``num_chains`` persistent
            chains per process (PCD), for every layer.
        layer_optimizer: every layer's optimiser (weight decay on ``W`` only); ``layer_schedule`` its
            schedule, which counts the layer's own epochs and updates (momentum, linear decay).
        init_std: standard deviation of the initial weights.
        init_visible_bias: start the first layer's visible biases from the data means.
        num_filters: hidden units of the layer in training drawn as images every epoch.
        scales: ``(bottom_up_scale, top_down_scale)`` of each layer (default all 1).
        fused_step: run each training step as one captured CUDA graph on a GPU (:mod:`lightning_ebm.fused`).
    """

    ddp_find_unused_parameters = True  # a step updates one layer only

    def __init__(
        self,
        layer_sizes: Sequence[int],
        layer_epochs: Sequence[int],
        data_shape: Sequence[int] | None = None,
        method: Literal["cd", "pcd"] = "cd",
        k: int = 1,
        num_chains: int | None = None,
        layer_optimizer: OptimizerCallable = SGD_RECIPE,
        layer_schedule: LRSchedulerCallable | None = MOMENTUM_SCHEDULE,
        init_std: float = 0.01,
        init_visible_bias: bool = True,
        num_filters: int = 100,
        scales: Sequence[tuple[float, float]] | None = None,
        fused_step: bool = False,
    ) -> None:
        sizes = [int(n) for n in layer_sizes]
        super().__init__(tuple(data_shape) if data_shape is not None else (sizes[0],), fused_step)
        check_choices(GreedyRBMStack.__init__, {"method": method})
        check_bounds(
            positive=dict(num_chains=num_chains), non_negative=dict(init_std=init_std, num_filters=num_filters)
        )
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"layer_sizes needs the visible layer and at least one hidden layer, got {sizes}")
        if math.prod(self.data_shape) != sizes[0]:
            raise ValueError(
                f"data_shape {list(self.data_shape)} has {math.prod(self.data_shape)} values, not {sizes[0]}"
            )
        if len(layer_epochs) != len(sizes) - 1 or min(layer_epochs) < 0:
            raise ValueError(
                f"layer_epochs needs one number of epochs (>= 0) per RBM, {len(sizes) - 1} for layer_sizes "
                f"{sizes}; got {list(layer_epochs)}"
            )
        scales = list(scales) if scales is not None else [(1.0, 1.0)] * (len(sizes) - 1)
        self.automatic_optimization = False
        self.layer_sizes = sizes
        self.layer_epochs = [int(e) for e in layer_epochs]
        self.stack_options = dict(
            layer_optimizer=layer_optimizer, layer_schedule=layer_schedule, init_visible_bias=init_visible_bias,
            num_filters=num_filters,
        )  # fmt: skip
        #: ``layers[l]`` models units ``l`` and ``l + 1``; ``cd[l]`` trains it (and holds its chains).
        self.layers = nn.ModuleList(
            RBMLayer(n_in, n_out, init_std=init_std, bottom_up_scale=up, top_down_scale=down)
            for n_in, n_out, (up, down) in zip(sizes[:-1], sizes[1:], scales)
        )
        self.cd = [ContrastiveDivergence(method, k, num_chains) for _ in self.layers]

    # ------------------------------------------------------------------ the schedule
    @property
    def pretraining_epochs(self) -> int:
        return sum(self.layer_epochs)

    def layer_at(self, epoch: int) -> int | None:
        """The layer that greedy training works on in ``epoch`` (None once every layer is trained)."""
        start = 0
        for layer, epochs in enumerate(self.layer_epochs):
            if epoch < start + epochs:
                return layer
            start += epochs
        return None

    def layer_start(self, layer: int) -> int:
        """The first epoch of ``layer``'s greedy training."""
        return sum(self.layer_epochs[:layer])

    @property
    def current_layer(self) -> int | None:
        return self.layer_at(self.current_epoch)

    def schedule_phase(self, index: int) -> tuple[int, int]:
        """A layer's schedule runs over its own epochs of updates (and a subclass's later phase after them)."""
        per_epoch = max(1, int(self.trainer.num_training_batches))
        if index < len(self.layers):
            return max(1, self.layer_epochs[index] * per_epoch), self.layer_start(index)
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs is not None else -1
        if max_epochs < 0:  # no end: a linear decay never starts
            return 1 << 62, self.pretraining_epochs
        return max(1, (max_epochs - self.pretraining_epochs) * per_epoch), self.pretraining_epochs

    # ------------------------------------------------------------------ the stack
    def flatten(self, x: Tensor) -> Tensor:
        """``(batch, *data_shape)`` to ``(batch, n_visible)`` in the parameters' dtype."""
        return x.reshape(x.shape[0], -1).to(self.layers[0].W.dtype)

    def up_pass(self, x: Tensor, layer: int) -> Tensor:
        """The input of ``layer``: flattened data through the layers below it, ``p(h = 1 | x)`` each."""
        v = self.flatten(x)
        for below in self.layers[:layer]:
            v = below.hidden_probs(v)
        return v

    # ------------------------------------------------------------------ training
    train_progress_bar = ("layer", "mean_field_free_energy")

    def update_key(self) -> tuple:
        """The layer in greedy training (None after it)."""
        return (self.current_layer,)

    def update(self, batch: Any, key: tuple, log: bool) -> dict[str, Tensor]:
        (layer,) = key
        x = self.batch_data(batch)
        if layer is None:
            return self.joint_update(x, log)
        return self.pretraining_update(x, layer, log)

    def pretraining_update(self, x: Tensor, layer: int, log: bool) -> dict[str, Tensor]:
        """One CD / PCD update of ``layer`` on the up-passed batch; metrics under ``layer{l}/``."""
        rbm = self.layers[layer]
        optimizer = self.update_optimizers()[layer]
        with torch.no_grad():
            v_data = self.up_pass(x, layer)
        v_model, _ = self.cd[layer].update(rbm, v_data, optimizer, self)
        if not log:
            return {}
        with torch.no_grad():
            metrics = monitoring_metrics(rbm, v_data)
            metrics["free_energy_gap"] = rbm.free_energy(v_model).mean() - metrics["free_energy"]
        return {f"layer{layer}/{k}": v for k, v in metrics.items()}

    def joint_update(self, x: Tensor, log: bool) -> dict[str, Tensor]:
        """An update after greedy training (a DBM's joint training); the stack alone has none."""
        return {}

    def _player(self) -> int:
        """The optimiser (and schedule) in use: the layer in training, or the later phase's after them."""
        layer = self.current_layer
        return layer if layer is not None else len(self.layers)

    def after_update(self) -> None:
        if self._player() < len(self.schedulers()):
            self.step_schedules([self._player()])

    def host_metrics(self) -> dict[str, Any]:
        layer, index = self.current_layer, self._player()
        lr = self.update_optimizers()[index].param_groups[0]["lr"]
        return {"lr": lr} if layer is None else {f"layer{layer}/lr": lr, "layer": float(layer)}

    @property
    def has_later_phase(self) -> bool:
        """Whether training goes on after the greedy phase (a DBM's joint training)."""
        return False

    @property
    def likelihood_ready(self) -> bool:
        """Whether the model's likelihood means something yet (the AIS callback waits until it does)."""
        return True

    def on_fit_start(self) -> None:
        super().on_fit_start()
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and 0 <= max_epochs < self.pretraining_epochs:
            untrained = self.layer_at(max_epochs)
            warnings.warn(
                f"trainer.max_epochs={max_epochs} ends before greedy training is done (layer_epochs "
                f"{self.layer_epochs} sum to {self.pretraining_epochs}): layers {untrained} and above stay untrained",
                stacklevel=2,
            )

    def on_train_start(self) -> None:
        super().on_train_start()
        if not self.has_later_phase and self.current_layer is None:  # e.g. resumed after the last layer
            warnings.warn("every layer of the stack is already trained: nothing to do", stacklevel=2)
            self.trainer.should_stop = True
        if self.global_step == 0 and self.stack_options["init_visible_bias"] and self.layer_epochs[0] > 0:
            init_visible_bias_from(self.layers[0], self.trainer, self.flatten)

    def on_train_epoch_end(self) -> None:
        layer = self.current_layer
        if layer is not None:
            num = self.stack_options["num_filters"]
            shape = self.data_shape if layer == 0 else (self.layer_sizes[layer],)
            log_filters(self.layers[layer], self.trainer, shape, num, f"layer{layer}/filters")
        if not self.has_later_phase and self.layer_at(self.current_epoch + 1) is None:
            self.trainer.should_stop = True  # every layer is trained

    @torch.no_grad()
    def evaluation_metrics(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """The monitoring metrics of the layer in training (``layer{l}/...``), or of the top layer once
        every layer is trained, on held-out data."""
        layer = self.current_layer if self.current_layer is not None else len(self.layers) - 1
        v = self.up_pass(self.batch_data(batch), layer)
        return {f"layer{layer}/{k}": value for k, value in monitoring_metrics(self.layers[layer], v).items()}

    def players(self) -> list[tuple[torch.optim.Optimizer, Any]]:
        """Each layer's optimiser (weight decay on ``W`` only) and schedule; a subclass appends its own."""
        options = self.stack_options
        return [
            (build_optimizer(options["layer_optimizer"], weight_decay_on_weights_only(layer)),
             options["layer_schedule"])
            for layer in self.layers
        ]  # fmt: skip

    def configure_optimizers(self) -> Any:
        return self.with_schedules(self.players())

    # ------------------------------------------------------------------ per-process state
    def per_rank_state(self) -> dict[str, Tensor]:
        """Every layer's persistent chains (PCD), visible and hidden states."""
        return {k: v for i, cd in enumerate(self.cd) for k, v in cd.state(f"layers.{i}.").items()}

    def load_per_rank_state(self, state: dict[str, Tensor]) -> None:
        for i, cd in enumerate(self.cd):
            cd.load_state(state, self.layers[i].W.dtype, f"layers.{i}.")
