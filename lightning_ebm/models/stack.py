"""Greedy layer-wise training of a stack of RBMs, the first phase of a DBN and of a DBM.

Hinton, Osindero & Teh 2006 (deep belief nets); Salakhutdinov & Hinton 2009 (deep Boltzmann
machines). Layer ``l`` is an RBM between units ``x_l`` and ``x_{l+1}`` (``x_0`` the data). It trains,
for its own number of epochs, on the hidden probabilities of the trained layers below it,

    x_{l+1} = p(h = 1 | x_l) = sigmoid(c_l + s_l W_l^T x_l)

(the bottom-up pass; ``s_l`` is 1 for a DBN and 2 where a DBM doubles it), with the RBM's own
CD-k / PCD update and recipe (momentum schedule, weight decay on ``W``). All layers train within one
``fit``; the epoch decides the layer, so a resumed run continues in the layer it stopped in.

Subclasses (:class:`~lightning_ebm.models.DBN`, :class:`~lightning_ebm.models.DBM`) say what the
trained stack is and may add a phase after it (:meth:`GreedyRBMStack.after_pretraining_step`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lightning_ebm.models.base import EnergyBasedModel
from lightning_ebm.models.rbm import RBM


@contextmanager
def _own_hyperparameters() -> Iterator[None]:
    """While LightningCLI builds a model, every ``save_hyperparameters`` call receives that model's
    config; the stack's RBMs, built inside it, must record their own arguments."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # a Lightning without the mechanism
        yield
        return
    token = _given_hyperparameters.set(None)
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)


class GreedyRBMStack(EnergyBasedModel):
    """A stack of binary RBMs trained greedily, one layer after another (manual optimisation: one
    SGD optimiser per layer, and any the subclass adds after them).

    Args:
        layer_sizes: units per layer, the visible layer first, e.g. ``[784, 500, 500, 2000]``.
        layer_epochs: epochs of greedy training of each RBM (``len(layer_sizes) - 1`` numbers).
        data_shape: shape of one example (default ``[layer_sizes[0]]``).
        rbm: options of every layer's :class:`~lightning_ebm.models.RBM` (``method``, ``k``,
            ``num_chains``, ``lr``, ``lr_decay``, ``momentum``, ``final_momentum``,
            ``momentum_epochs``, ``weight_decay``, ``init_std``, ...). ``lr_decay`` and the momentum
            schedule count each layer's own epochs. The first layer's visible biases start from the
            data means (``init_visible_bias``).
        scales: ``(bottom_up_scale, top_down_scale)`` of each layer (default all 1).
    """

    ddp_find_unused_parameters = True  # a step updates one layer only

    def __init__(
        self,
        layer_sizes: Sequence[int],
        layer_epochs: Sequence[int],
        data_shape: Sequence[int] | None = None,
        rbm: dict[str, Any] | None = None,
        scales: Sequence[tuple[float, float]] | None = None,
    ) -> None:
        sizes = [int(n) for n in layer_sizes]
        super().__init__(tuple(data_shape) if data_shape is not None else (sizes[0],))
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
        options = dict(rbm or {})
        for reserved in ("n_visible", "n_hidden", "visible", "data_shape", "bottom_up_scale", "top_down_scale"):
            if reserved in options:
                raise ValueError(f"rbm.{reserved} is set by the stack, not in its rbm options")
        scales = list(scales) if scales is not None else [(1.0, 1.0)] * (len(sizes) - 1)
        self.automatic_optimization = False
        self.layer_sizes = sizes
        self.layer_epochs = [int(e) for e in layer_epochs]
        #: ``rbms[l]`` models layers ``l`` and ``l + 1``.
        with _own_hyperparameters():
            self.rbms = self._build_rbms(sizes, options, scales)

    def _build_rbms(
        self, sizes: list[int], options: dict[str, Any], scales: list[tuple[float, float]]
    ) -> nn.ModuleList:
        return nn.ModuleList(
            RBM(
                n_in,
                n_out,
                data_shape=self.data_shape if layer == 0 else None,
                **{**options, "init_visible_bias": layer == 0 and options.get("init_visible_bias", True)},
                bottom_up_scale=up,
                top_down_scale=down,
            )
            for layer, (n_in, n_out, (up, down)) in enumerate(zip(sizes[:-1], sizes[1:], scales))
        )

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

    # ------------------------------------------------------------------ the stack
    def flatten(self, x: Tensor) -> Tensor:
        """``(batch, *data_shape)`` to ``(batch, n_visible)`` in the parameters' dtype."""
        return self.rbms[0].flatten(x)

    def up_pass(self, x: Tensor, layer: int) -> Tensor:
        """The input of ``layer``: flattened data through the RBMs below it, ``p(h = 1 | x)`` each."""
        v = self.flatten(x)
        for rbm in self.rbms[:layer]:
            v = rbm.hidden_probs(v)
        return v

    # ------------------------------------------------------------------ training
    def _optimizer(self, index: int) -> Any:
        optimizers = self.optimizers()
        return optimizers[index] if isinstance(optimizers, list) else optimizers

    def training_step(self, batch: Any, batch_idx: int) -> None:
        layer = self.current_layer
        x = self.batch_data(batch)
        if layer is None:
            self.after_pretraining_step(x, batch_idx)
        else:
            self.pretraining_step(x, batch_idx, layer)

    def pretraining_step(self, x: Tensor, batch_idx: int, layer: int) -> None:
        """One CD / PCD update of ``layer`` on the up-passed batch; metrics under ``train/layer{l}/``."""
        rbm = self.rbms[layer]
        optimizer = self._optimizer(layer)
        epoch = self.current_epoch - self.layer_start(layer)
        rbm.set_momentum(optimizer, epoch)
        if rbm.hparams.lr_decay == "linear":
            for group in optimizer.param_groups:
                group["lr"] = rbm.hparams.lr * self.linear_decay(epoch, batch_idx, self.layer_epochs[layer])
        with torch.no_grad():
            v_data = self.up_pass(x, layer)
        v_model, _ = rbm.cd_step(v_data, optimizer, owner=self)
        if self.should_log_step:
            with torch.no_grad():
                metrics = rbm.monitoring_metrics(v_data)
                metrics["free_energy_gap"] = rbm.free_energy(v_model).mean() - metrics["free_energy"]
                metrics["lr"] = torch.tensor(optimizer.param_groups[0]["lr"])
            self.log_train_metrics({f"layer{layer}/{k}": v for k, v in metrics.items()})
            self.log("train/layer", float(layer), on_step=True, on_epoch=False, prog_bar=True)

    def linear_decay(self, epoch: int, batch_idx: int, epochs: int) -> float:
        """``1 - t / T`` for update ``t`` (batch ``batch_idx`` of ``epoch``) of a phase of ``epochs`` epochs."""
        per_epoch = max(1, int(self.trainer.num_training_batches))
        return max(0.0, 1 - (epoch * per_epoch + batch_idx) / max(1, epochs * per_epoch))

    def after_pretraining_step(self, x: Tensor, batch_idx: int) -> None:
        """A step after greedy training (a DBM's joint training); the stack alone has none."""

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
        if not self.has_later_phase and self.current_layer is None:  # e.g. resumed after the last layer
            warnings.warn("every layer of the stack is already trained: nothing to do", stacklevel=2)
            self.trainer.should_stop = True
        first = self.rbms[0]
        if self.global_step == 0 and first.hparams.init_visible_bias and self.layer_epochs[0] > 0:
            first.init_visible_bias_from(self.trainer)

    def on_train_epoch_end(self) -> None:
        layer = self.current_layer
        if layer is not None:
            self.rbms[layer].log_filters(self.trainer, tag=f"layer{layer}/filters")
        if not self.has_later_phase and self.layer_at(self.current_epoch + 1) is None:
            self.trainer.should_stop = True  # every layer is trained

    @torch.no_grad()
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """The current layer's monitoring metrics on held-out data (``val/layer{l}/...``)."""
        layer = self.current_layer
        if layer is None:
            return
        v = self.up_pass(self.batch_data(batch), layer)
        for name, value in self.rbms[layer].monitoring_metrics(v).items():
            self.log(f"val/layer{layer}/{name}", value, sync_dist=True, batch_size=v.shape[0])

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [rbm.build_optimizer() for rbm in self.rbms]

    # ------------------------------------------------------------------ per-process state
    def per_rank_state(self) -> dict[str, Tensor]:
        """Every layer's persistent chains (PCD), visible and hidden states."""
        return {
            f"rbms.{i}.{name}": value for i, rbm in enumerate(self.rbms) for name, value in rbm.per_rank_state().items()
        }

    def load_per_rank_state(self, state: dict[str, Tensor]) -> None:
        for i, rbm in enumerate(self.rbms):
            rbm.load_per_rank_state({k.split(".")[-1]: v for k, v in state.items() if k.startswith(f"rbms.{i}.")})
