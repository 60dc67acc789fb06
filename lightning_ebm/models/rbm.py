"""Restricted Boltzmann machine trained with contrastive divergence (CD-k) or persistent CD (PCD).

Smolensky 1986; Hinton 2002 (CD); Tieleman 2008 (PCD); Hinton 2010, "A Practical Guide to Training
Restricted Boltzmann Machines" (the recipe); Cho, Ilin & Raiko 2011 (Gaussian-Bernoulli units with a
learned variance). Background: Baumann 2018, section 2; Tomczak, section 6.5.

The model is an :class:`~lightning_ebm.nn.RBMLayer` (its energies and conditionals are written
there). The log-likelihood gradient is ``-dF(v_data)/dtheta + E_model[dF(v)/dtheta]``. CD-k estimates
the model term with k Gibbs steps started at the data, PCD with persistent chains that carry over
from one update to the next. Either way the update is the gradient of ``mean F(v_data) - mean
F(v_model)`` with ``v_model`` held fixed, which for ``W`` is the familiar ``<v p(h|v)>_data -
<v p(h|v)>_model``. :class:`ContrastiveDivergence` writes that gradient in closed form, without
autograd (tests check it against autograd of the free-energy difference and against a hand-written
SGD step), and the injected optimiser (Hinton's SGD with momentum and weight decay on ``W``) applies
it. PCD's chains keep their hidden states between updates (Tieleman 2008), so an update of PCD-1 or
CD-1 costs five batch-sized matrix products: ``p(h|v_data)``, ``p(v|h)``, ``p(h|v_model)`` and the
two of the update. The DBN and DBM train their layers with the same :class:`ContrastiveDivergence`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_ebm.models.base import EnergyBasedModel
from lightning_ebm.nn.boltzmann import MAX_ENUMERATED_UNITS
from lightning_ebm.nn.rbm import RBMAnnealingPath, RBMLayer
from lightning_ebm.optim import LRSchedulerCallable, OptimizerCallable, build_optimizer, spec
from lightning_ebm.samplers.gibbs import block_gibbs, sample_bernoulli
from lightning_ebm.utils import check_bounds

#: Hinton's (2010) recipe: SGD, learning rate 0.1, momentum 0.5 then 0.9 after 5 epochs, weight decay
#: 2e-4 on ``W`` (the methods put the biases in a group without decay).
SGD_RECIPE = spec("torch.optim.SGD", lr=0.1, momentum=0.5, weight_decay=2e-4, fused=True)
MOMENTUM_SCHEDULE = spec("lightning_ebm.optim.Schedule", final_momentum=0.9, momentum_epochs=5)


def weight_decay_on_weights_only(layer: RBMLayer) -> list[dict[str, Any]]:
    """Parameter groups of a layer: ``W`` with the optimiser's weight decay, the rest without."""
    others = [p for name, p in layer.named_parameters() if name != "W"]
    return [{"params": [layer.W]}, {"params": others, "weight_decay": 0.0}]


class ContrastiveDivergence:
    """CD-k or PCD-k updates of an :class:`~lightning_ebm.nn.RBMLayer`, and PCD's persistent chains.

    The chains are this process's state (plain tensors, not buffers: under DDP each process keeps
    its own; the method puts them in its checkpoints). Alongside the visible states the chains keep
    their hidden states, drawn from ``p(h | v)`` at the end of the last update, from which the next
    update continues (Tieleman 2008).

    Args:
        method: ``cd`` (chains start at the data) or ``pcd`` (persistent chains).
        k: Gibbs sweeps per update.
        num_chains: persistent chains of this process (PCD); default: the batch size.
    """

    def __init__(self, method: Literal["cd", "pcd"] = "cd", k: int = 1, num_chains: int | None = None) -> None:
        if k < 1:
            raise ValueError(f"k (Gibbs steps per update) must be at least 1, got {k}")
        self.method, self.k, self.num_chains = method, int(k), num_chains
        self.visible: Tensor | None = None
        self.hidden: Tensor | None = None

    def set_chains(self, visible: Tensor | None) -> None:
        """Set the chains' visible states; their hidden states are then drawn from ``p(h | v)`` first."""
        self.visible, self.hidden = visible, None

    def negative_phase(self, layer: RBMLayer, v_data: Tensor, p_data: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The model term: ``(v_model, p(h | v_model))`` after k Gibbs sweeps ``h -> v -> h``.

        CD-k starts from ``h ~ p(h | v_data)`` (``p_data``: the positive phase's probabilities, so
        the data's hidden input is computed once); PCD-k continues the persistent chains from their
        hidden states and keeps, for the next update, the last visible states and a hidden sample
        drawn from the last ``p(h | v)`` (computed here anyway: the model term needs it)."""
        if self.method == "cd":
            h = sample_bernoulli(layer.hidden_probs(v_data) if p_data is None else p_data)
        else:
            h = self._chain_hidden_states(layer, v_data)
        for step in range(self.k):
            v = layer.sample_visible(h)
            p = layer.hidden_probs(v)
            if step < self.k - 1:
                h = sample_bernoulli(p)
        if self.method == "pcd":  # in place, so that a captured update (lightning_ebm.fused) carries them on
            self._keep(v, sample_bernoulli(p))
        return v, p

    def _keep(self, visible: Tensor, hidden: Tensor) -> None:
        if self.visible is not None and self.hidden is not None and self.visible.shape == visible.shape:
            self.visible.copy_(visible)
            self.hidden.copy_(hidden)
        else:
            self.visible, self.hidden = visible, hidden

    def _chain_hidden_states(self, layer: RBMLayer, v_data: Tensor) -> Tensor:
        """The persistent chains' hidden states: started from random visible states the first time,
        drawn from ``p(h | v)`` of given visible states (a checkpoint without hidden states, chains
        set by hand)."""
        if self.visible is None:
            self.visible = layer.random_visible(self.num_chains or v_data.shape[0])
        if self.hidden is None:
            self.visible = self.visible.to(v_data.device, v_data.dtype)
            self.hidden = layer.sample_hidden(self.visible)
        return self.hidden.to(v_data.device, v_data.dtype)

    def update(
        self, layer: RBMLayer, v_data: Tensor, optimizer: Any, module: EnergyBasedModel
    ) -> tuple[Tensor, Tensor]:
        """One CD-k / PCD-k update of ``layer`` from the batch ``v_data`` (flattened); returns the model
        term's ``(v_model, p(h | v_model))``.

        The gradient goes into ``.grad`` in closed form (:meth:`RBMLayer.cd_gradients`), is averaged
        over the processes under DDP, and ``optimizer`` takes the step. With a learned variance the
        gradient comes from autograd through :meth:`RBMLayer.cd_loss` (``module.backward_loss``).
        """
        world_size = module.trainer.world_size if module._trainer is not None else 1
        with torch.no_grad():
            p_data = layer.hidden_probs(v_data)
            v_model, p_model = self.negative_phase(layer, v_data, p_data)
        if layer.learn_sigma:
            loss = layer.cd_loss(v_data, v_model)
            if layer.sparse:
                loss = loss + layer.sparsity_loss(v_data, world_size)
            optimizer.zero_grad()
            module.backward_loss(loss)
        else:
            layer.cd_gradients(v_data, p_data, v_model, p_model)
            if layer.sparse:
                layer.sparsity_gradients(v_data, p_data, world_size)
            if world_size > 1:
                module.average_gradients([layer.W, layer.visible_bias, layer.hidden_bias])
        optimizer.step()
        layer.clamp_variance_()
        return v_model, p_model

    def state(self, prefix: str = "") -> dict[str, Tensor]:
        """The chains by name (none for CD, or before the first update)."""
        state = {}
        if self.visible is not None:
            state[f"{prefix}persistent_chains"] = self.visible
            if self.hidden is not None:
                state[f"{prefix}persistent_hidden"] = self.hidden
        return state

    def load_state(self, state: dict[str, Tensor], dtype: torch.dtype, prefix: str = "") -> None:
        if f"{prefix}persistent_chains" in state:
            self.set_chains(state[f"{prefix}persistent_chains"].to(dtype))
            if f"{prefix}persistent_hidden" in state:  # else drawn from p(h | v) at the next update
                self.hidden = state[f"{prefix}persistent_hidden"].to(dtype)


def monitoring_metrics(layer: RBMLayer, v: Tensor) -> dict[str, Tensor]:
    """Mean free energy, reconstruction error and (Bernoulli) pseudo-log-likelihood of ``v``."""
    reconstruction = layer.visible_mean(layer.hidden_probs(v))
    metrics = {
        "free_energy": layer.free_energy(v).mean(),
        "reconstruction_error": (v - reconstruction).pow(2).sum(1).mean(),
    }
    if not layer.gaussian:
        metrics["pseudo_log_likelihood"] = pseudo_log_likelihood(layer, v).mean()
    return metrics


def pseudo_log_likelihood(layer: RBMLayer, v: Tensor) -> Tensor:
    """Stochastic pseudo-log-likelihood of binary ``v``: ``n * log sigmoid(F(v~) - F(v))`` with one
    random unit of each example flipped in ``v~`` (the estimator of scikit-learn's BernoulliRBM)."""
    idx = torch.randint(0, v.shape[1], (v.shape[0], 1), device=v.device)
    flipped = v.clone()
    flipped.scatter_(1, idx, 1 - v.gather(1, idx))
    return v.shape[1] * F.logsigmoid(layer.free_energy(flipped) - layer.free_energy(v))


@torch.no_grad()
def init_visible_bias(
    layer: RBMLayer, batches: Any, flatten: Any, smoothing: float = 0.01, strategy: Any = None
) -> None:
    """Set ``b`` from the mean ``p`` of the data: ``log(p / (1 - p))`` (Bernoulli, Hinton 2010,
    section 8; ``p`` pulled ``smoothing`` towards 1/2 so that no bias is infinite) or ``p`` (Gaussian).
    ``batches`` is an iterable of batches (``flatten`` maps one to ``(n, n_visible)``); with the
    ``strategy`` of a DDP run whose processes each read their own share, the means are over every share."""
    device = layer.W.device
    total = torch.zeros(layer.n_visible, dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for batch in batches:
        v = flatten(EnergyBasedModel.batch_data(batch).to(device))
        total += v.sum(0).double()
        count += v.shape[0]
    if strategy is not None and strategy.world_size > 1:
        total = strategy.reduce(total, reduce_op="sum")
        count = strategy.reduce(count, reduce_op="sum")
    mean = total / count.clamp_min(1)
    if not layer.gaussian:
        p = (1 - smoothing) * mean + smoothing / 2
        mean = torch.log(p) - torch.log1p(-p)
    layer.visible_bias.copy_(mean.to(layer.visible_bias.dtype))


def init_visible_bias_from(layer: RBMLayer, trainer: Any, flatten: Any) -> None:
    """:func:`init_visible_bias` from ``trainer``'s training data: the data module's ``train_data``
    tensor if it has one (iterating the loader here would advance its epoch counter), else one pass
    over the training loader, averaged over the processes."""
    data = getattr(trainer.datamodule, "train_data", None)
    if isinstance(data, Tensor):
        init_visible_bias(layer, data.split(1024), flatten)
    else:
        init_visible_bias(layer, trainer.train_dataloader, flatten, strategy=trainer.strategy)


def log_filters(layer: RBMLayer, trainer: Any, data_shape: Sequence[int], num_filters: int, tag: str) -> None:
    """Draw the weights of the first ``num_filters`` hidden units as images (rank 0 of ``trainer``)."""
    n = min(num_filters, layer.n_hidden)
    if n == 0 or trainer is None or not trainer.is_global_zero or len(data_shape) < 2:
        return
    from torchvision.utils import make_grid

    from lightning_ebm.callbacks.utils import log_image

    filters = layer.W.detach()[:, :n].t().float().reshape(n, *data_shape)
    if filters.dim() == 3:
        filters = filters.unsqueeze(1)
    # Each filter scaled to [0, 1] by its own range, as filters are usually shown.
    low = filters.flatten(1).min(1).values.view(-1, 1, 1, 1)
    high = filters.flatten(1).max(1).values.view(-1, 1, 1, 1)
    filters = (filters - low) / (high - low).clamp_min(1e-8)
    log_image(trainer, tag, make_grid(filters.cpu(), nrow=int(math.ceil(math.sqrt(n))), padding=1))


class RBM(EnergyBasedModel):
    """Restricted Boltzmann machine with binary hidden units, trained by CD-k or PCD-k.

    Args:
        n_visible: number of visible units (the flattened size of an example).
        n_hidden: number of hidden units.
        visible: ``bernoulli`` (binary data, or probabilities in [0, 1]) or ``gaussian``.
        sigma: standard deviation of Gaussian visible units (the initial value when learned). Use 1
            for standardised data.
        learn_sigma: learn ``log sigma^2`` per unit (Cho et al. 2011), kept within ``sigma_bounds``.
        sigma_bounds: the interval ``sigma`` is kept in.
        data_shape: shape of one example (default ``[n_visible]``); batches and samples have it.
        method: ``cd`` (contrastive divergence) or ``pcd`` (persistent contrastive divergence).
        k: Gibbs steps per update (CD-k / PCD-k).
        num_chains: persistent chains per process (PCD); default: the batch size.
        optimizer: the optimiser (Hinton's recipe: SGD, learning rate 0.1, momentum 0.5, weight decay
            2e-4, which applies to ``W`` only).
        lr_schedule: learning rate and momentum schedule (the recipe: momentum 0.9 after 5 epochs;
            PCD wants ``linear_decay_start: 0``, a linear decay to 0 over the run).
        init_std: standard deviation of the initial weights.
        init_visible_bias: set ``b`` from the training data at the start of training:
            ``log(p / (1 - p))`` of the smoothed means for Bernoulli units, the means for Gaussian.
        sparsity_target: desired mean activation ``q`` of the hidden units (None: no sparsity);
            ``sparsity_cost`` its weight, ``sparsity_decay`` the decay of the running estimate.
        sample_steps: Gibbs steps of :meth:`sample`; ``sample_start`` where its chains start:
            ``noise`` (random visible states), ``chains`` (the persistent chains, then noise).
        sample_mean: :meth:`sample` returns the mean of ``p(v | h)`` at its last step instead of a
            sample (smoother images).
        num_filters: hidden units whose weights are drawn as images every epoch (0 disables it).
        fused_step: run each training step as one captured CUDA graph on a GPU (:mod:`lightning_ebm.fused`);
            the eager step otherwise.
    """

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        visible: Literal["bernoulli", "gaussian"] = "bernoulli",
        sigma: float = 1.0,
        learn_sigma: bool = False,
        sigma_bounds: tuple[float, float] = (0.1, 1.1),
        data_shape: Sequence[int] | None = None,
        method: Literal["cd", "pcd"] = "cd",
        k: int = 1,
        num_chains: int | None = None,
        optimizer: OptimizerCallable = SGD_RECIPE,
        lr_schedule: LRSchedulerCallable | None = MOMENTUM_SCHEDULE,
        init_std: float = 0.01,
        init_visible_bias: bool = True,
        sparsity_target: float | None = None,
        sparsity_cost: float = 0.0,
        sparsity_decay: float = 0.95,
        sample_steps: int = 1000,
        sample_start: Literal["noise", "chains"] = "noise",
        sample_mean: bool = False,
        num_filters: int = 100,
        fused_step: bool = False,
    ) -> None:
        shape = tuple(data_shape) if data_shape is not None else (n_visible,)
        super().__init__(shape, fused_step)
        self.save_hyperparameters()
        self.automatic_optimization = False  # the update is written in closed form
        if math.prod(shape) != n_visible:
            raise ValueError(f"data_shape {list(shape)} has {math.prod(shape)} values, but n_visible is {n_visible}")
        check_bounds(
            positive=dict(n_visible=n_visible, n_hidden=n_hidden, sigma=sigma, num_chains=num_chains),
            non_negative=dict(init_std=init_std, sparsity_cost=sparsity_cost, sample_steps=sample_steps,
                              num_filters=num_filters),
            probability=dict(sparsity_target=sparsity_target, sparsity_decay=sparsity_decay),
        )  # fmt: skip
        self.layer = RBMLayer(
            n_visible, n_hidden, visible, sigma, learn_sigma, sigma_bounds, init_std,
            sparsity_target=sparsity_target, sparsity_cost=sparsity_cost, sparsity_decay=sparsity_decay,
        )  # fmt: skip
        self.cd = ContrastiveDivergence(method, k, num_chains)

    def flatten(self, x: Tensor) -> Tensor:
        """``(batch, *data_shape)`` to ``(batch, n_visible)``, in the parameters' dtype."""
        return x.reshape(x.shape[0], -1).to(self.layer.W.dtype)

    # ------------------------------------------------------------------ the contract
    def energy(self, x: Tensor) -> Tensor:
        """The free energy ``F(x)``, shape ``(batch,)``."""
        return self.layer.free_energy(self.flatten(x))

    @torch.no_grad()
    def sample(self, num_samples: int, num_steps: int | None = None, start: str | Tensor | None = None) -> Tensor:
        """``num_samples`` samples after ``num_steps`` block-Gibbs sweeps.

        Args:
            num_samples: number of chains.
            num_steps: Gibbs sweeps (default ``sample_steps``).
            start: ``noise``, ``chains`` (the persistent chains, topped up with noise) or a tensor of
                starting states (e.g. data); default ``sample_start``.
        """
        layer, hp = self.layer, self.hparams
        steps = hp.sample_steps if num_steps is None else num_steps
        start = hp.sample_start if start is None else start
        if isinstance(start, Tensor):
            v = self.flatten(start.to(self.device))[:num_samples]
        elif start == "chains" and self.cd.visible is not None:
            v = self.cd.visible[:num_samples].to(self.device, layer.W.dtype)
            if v.shape[0] < num_samples:
                v = torch.cat([v, layer.random_visible(num_samples - v.shape[0])])
        elif start in ("noise", "chains"):
            v = layer.random_visible(num_samples)
        else:
            raise ValueError(f"start must be 'noise', 'chains' or a tensor, got {start!r}")
        if steps > 0:
            v = block_gibbs(layer.gibbs_step, v, steps - 1)
            h = layer.sample_hidden(v)
            v = layer.visible_mean(h) if hp.sample_mean else layer.sample_visible(h)
        return v.reshape(v.shape[0], *self.data_shape)

    # ------------------------------------------------------------------ exact and AIS likelihood
    def exact_log_partition(self, max_units: int = MAX_ENUMERATED_UNITS) -> float:
        return self.layer.exact_log_partition(max_units)

    def exact_log_likelihood(self, x: Tensor, max_units: int = MAX_ENUMERATED_UNITS) -> Tensor:
        return self.layer.exact_log_likelihood(self.flatten(x.to(self.device)), max_units)

    def annealing_path(self, data: Tensor | None = None) -> RBMAnnealingPath:
        return self.layer.annealing_path(None if data is None else self.flatten(data.to(self.device)))

    # ------------------------------------------------------------------ training
    train_progress_bar = ("reconstruction_error",)

    def update(self, batch: Any, key: tuple, log: bool) -> dict[str, Tensor]:
        """One CD-k / PCD-k update (:class:`ContrastiveDivergence`), and the monitoring metrics."""
        v_data = self.flatten(self.batch_data(batch))
        (optimizer,) = self.update_optimizers()
        v_model, _ = self.cd.update(self.layer, v_data, optimizer, self)
        if not log:
            return {}
        with torch.no_grad():
            metrics = monitoring_metrics(self.layer, v_data)
            metrics["free_energy_gap"] = self.layer.free_energy(v_model).mean() - metrics["free_energy"]
            if self.layer.gaussian:
                metrics["sigma_mean"] = self.layer.variance.sqrt().mean()
        return metrics

    def host_metrics(self) -> dict[str, Any]:
        return {"lr": self.update_optimizers()[0].param_groups[0]["lr"]}

    @torch.no_grad()
    def evaluation_metrics(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Held-out free energy, reconstruction error and pseudo-log-likelihood.

        The gap between held-out and training free energy (``val/free_energy`` minus
        ``train/free_energy``) is Hinton's over-fitting monitor; the AIS log-likelihood comes from the
        ``AISLogLikelihood`` callback."""
        return monitoring_metrics(self.layer, self.flatten(self.batch_data(batch)))

    def on_train_start(self) -> None:
        super().on_train_start()  # the run's own length and epoch set the schedule's clock
        if self.hparams.init_visible_bias and self.global_step == 0:
            init_visible_bias_from(self.layer, self.trainer, self.flatten)

    def on_train_epoch_end(self) -> None:
        log_filters(self.layer, self.trainer, self.data_shape, self.hparams.num_filters, "filters")

    def configure_optimizers(self) -> Any:
        """The injected optimiser (weight decay on ``W`` only) and its schedule, stepped once per update."""
        optimizer = build_optimizer(self.hparams.optimizer, weight_decay_on_weights_only(self.layer))
        return self.with_schedules([(optimizer, self.hparams.lr_schedule)])

    # ------------------------------------------------------------------ persistent chains in checkpoints
    def per_rank_state(self) -> dict[str, Tensor]:
        """This process's persistent chains (PCD), visible and hidden states."""
        return self.cd.state()

    def load_per_rank_state(self, state: dict[str, Tensor]) -> None:
        self.cd.load_state(state, self.layer.W.dtype)
