"""Restricted Boltzmann machine trained with contrastive divergence (CD-k) or persistent CD (PCD).

Smolensky 1986; Hinton 2002 (CD); Tieleman 2008 (PCD); Hinton 2010, "A Practical Guide to Training
Restricted Boltzmann Machines" (the recipe); Cho, Ilin & Raiko 2011 (Gaussian-Bernoulli units with a
learned variance). Background: Baumann 2018, section 2; Tomczak, section 6.5.

Visible units ``v`` and binary hidden units ``h`` interact through ``W`` (visible x hidden):

    Bernoulli visible:  E(v, h) = -b^T v - c^T h - v^T W h
    Gaussian visible:   E(v, h) = sum_i (v_i - b_i)^2 / (2 sigma_i^2) - c^T h - (v / sigma^2)^T W h

and the hidden units sum out in closed form into the free energy (lower = more probable):

    F(v) = -b^T v - sum_j softplus(c_j + (W^T v)_j)                               (Bernoulli)
    F(v) = sum_i (v_i - b_i)^2 / (2 sigma_i^2) - sum_j softplus(c_j + (W^T (v / sigma^2))_j)   (Gaussian)

The layers are conditionally independent given each other, which is what block Gibbs sampling uses:

    p(h_j = 1 | v) = sigmoid(c_j + (W^T v)_j)        (v / sigma^2 for Gaussian units)
    p(v_i = 1 | h) = sigmoid(b_i + (W h)_i)          or   v_i | h ~ N(b_i + (W h)_i, sigma_i^2)

The log-likelihood gradient is ``-dF(v_data)/dtheta + E_model[dF(v)/dtheta]``. CD-k estimates the
model term with k Gibbs steps started at the data, PCD with persistent chains that carry over from
one update to the next. Either way the update is the gradient of ``mean F(v_data) - mean F(v_model)``
with ``v_model`` held fixed, which for ``W`` is the familiar ``<v p(h|v)>_data - <v p(h|v)>_model``.
This module writes that gradient in closed form, without autograd (tests check it against autograd
of the free-energy difference and against a hand-written SGD step), and SGD applies it. PCD's chains
keep their hidden states between updates (Tieleman 2008), so an update of PCD-1 or CD-1 costs five
batch-sized matrix products: ``p(h|v_data)``, ``p(v|h)``, ``p(h|v_model)`` and the two of the update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ebm.models.base import EnergyBasedModel
from lightning_ebm.samplers.gibbs import block_gibbs, sample_bernoulli, sample_gaussian


def _gradient_buffer(parameter: Tensor) -> Tensor:
    """``parameter.grad``, allocated once (the closed-form updates write into it)."""
    if parameter.grad is None or parameter.grad.shape != parameter.shape or parameter.grad.dtype != parameter.dtype:
        parameter.grad = torch.empty_like(parameter)
    return parameter.grad


_VISIBLE = ("bernoulli", "gaussian")
_METHODS = ("cd", "pcd")
_STARTS = ("noise", "chains")  # or a tensor of starting states


class RBM(EnergyBasedModel):
    """Restricted Boltzmann machine with binary hidden units.

    Args:
        n_visible: number of visible units (the flattened size of an example).
        n_hidden: number of hidden units.
        visible: ``bernoulli`` (binary data, or probabilities in [0, 1]) or ``gaussian``.
        sigma: standard deviation of Gaussian visible units (all units; the initial value when
            learned). Use 1 for standardised data.
        learn_sigma: learn ``log sigma^2`` per unit (Cho et al. 2011), kept within ``sigma_bounds``.
        sigma_bounds: the interval ``sigma`` is kept in.
        data_shape: shape of one example (default ``[n_visible]``); batches and samples have it.
        method: ``cd`` (contrastive divergence) or ``pcd`` (persistent contrastive divergence).
        k: Gibbs steps per update (CD-k / PCD-k).
        num_chains: persistent chains per process (PCD); default: the batch size.
        lr: learning rate of SGD; ``lr_decay`` ``linear`` decays it to 0 over the run (as PCD wants).
        momentum: momentum of the first ``momentum_epochs`` epochs, ``final_momentum`` after them.
        weight_decay: L2 penalty on ``W`` (not the biases), 2e-4 in Hinton's recipe.
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
        bottom_up_scale: multiplies ``W`` in the input of the hidden units, ``c + s W^T v``.
        top_down_scale: multiplies ``W`` in the input of the visible units, ``b + s W h``. Both are 1
            for an RBM; a deep Boltzmann machine pretrains its layers with 2 (Salakhutdinov & Hinton
            2009: the first RBM doubles the bottom-up input, the last the top-down one, the middle
            ones both), which stands in for the input the layer will get from the other side. With
            unequal scales there is no joint energy; the free energy is then that of ``s_up W``.
    """

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        visible: str = "bernoulli",
        sigma: float = 1.0,
        learn_sigma: bool = False,
        sigma_bounds: tuple[float, float] = (0.1, 1.1),
        data_shape: Sequence[int] | None = None,
        method: str = "cd",
        k: int = 1,
        num_chains: int | None = None,
        lr: float = 0.1,
        lr_decay: str = "none",
        momentum: float = 0.5,
        final_momentum: float = 0.9,
        momentum_epochs: int = 5,
        weight_decay: float = 2e-4,
        init_std: float = 0.01,
        init_visible_bias: bool = True,
        sparsity_target: float | None = None,
        sparsity_cost: float = 0.0,
        sparsity_decay: float = 0.95,
        sample_steps: int = 1000,
        sample_start: str = "noise",
        sample_mean: bool = False,
        num_filters: int = 100,
        bottom_up_scale: float = 1.0,
        top_down_scale: float = 1.0,
    ) -> None:
        shape = tuple(data_shape) if data_shape is not None else (n_visible,)
        super().__init__(shape)
        self.save_hyperparameters()
        self.automatic_optimization = False  # the update is written in closed form (cd_step)
        if math.prod(shape) != n_visible:
            raise ValueError(f"data_shape {list(shape)} has {math.prod(shape)} values, but n_visible is {n_visible}")
        for name, value, choices in (
            ("visible", visible, _VISIBLE),
            ("method", method, _METHODS),
            ("sample_start", sample_start, _STARTS),
            ("lr_decay", lr_decay, ("none", "linear")),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        if k < 1:
            raise ValueError(f"k (Gibbs steps per update) must be at least 1, got {k}")
        low, high = sigma_bounds
        if visible == "gaussian" and not 0 < low <= sigma <= high:
            raise ValueError(f"sigma ({sigma}) must lie within sigma_bounds {list(sigma_bounds)}")

        self.W = nn.Parameter(init_std * torch.randn(n_visible, n_hidden))
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))
        log_variance = torch.full((n_visible,), 2 * math.log(sigma))
        if visible == "gaussian" and learn_sigma:
            self.log_variance = nn.Parameter(log_variance)
        else:
            self.register_buffer("log_variance", log_variance)
        # Running mean activation of the hidden units (Hinton 2010, section 11), for the sparsity term.
        self.register_buffer("hidden_activity", torch.full((n_hidden,), sparsity_target or 0.0))
        self.persistent_chains = None  # PCD's chains (visible and hidden states), see the property

    # ------------------------------------------------------------------ the model
    @property
    def gaussian(self) -> bool:
        return self.hparams.visible == "gaussian"

    @property
    def variance(self) -> Tensor:
        """``sigma^2`` of the visible units, within ``sigma_bounds`` (all ones for Bernoulli units)."""
        if not self.gaussian:
            return torch.ones_like(self.log_variance)
        low, high = self.hparams.sigma_bounds
        return self.log_variance.clamp(2 * math.log(low), 2 * math.log(high)).exp()

    def flatten(self, x: Tensor) -> Tensor:
        """``(batch, *data_shape)`` to ``(batch, n_visible)``, in the parameters' dtype."""
        return x.reshape(x.shape[0], -1).to(self.W.dtype)

    def scaled_visible(self, v: Tensor) -> Tensor:
        """What the visible units send to the hidden ones: ``v``, or ``v / sigma^2`` for Gaussian units."""
        return v / self.variance if self.gaussian else v

    def hidden_input(self, v: Tensor) -> Tensor:
        """Total input of the hidden units, ``c + W^T v`` (``v / sigma^2`` for Gaussian units)."""
        return torch.addmm(self.hidden_bias, self.scaled_visible(v), self.W, alpha=self.hparams.bottom_up_scale)

    def hidden_probs(self, v: Tensor) -> Tensor:
        """``p(h = 1 | v)``."""
        return torch.sigmoid(self.hidden_input(v))

    def visible_input(self, h: Tensor) -> Tensor:
        """Total input of the visible units, ``b + W h``."""
        return torch.addmm(self.visible_bias, h, self.W.t(), alpha=self.hparams.top_down_scale)

    def visible_mean(self, h: Tensor) -> Tensor:
        """``E[v | h]``: ``sigmoid(b + W h)`` or ``b + W h``."""
        pre = self.visible_input(h)
        return pre if self.gaussian else torch.sigmoid(pre)

    def sample_hidden(self, v: Tensor) -> Tensor:
        return sample_bernoulli(self.hidden_probs(v))

    def sample_visible(self, h: Tensor) -> Tensor:
        mean = self.visible_mean(h)
        return sample_gaussian(mean, self.variance.sqrt()) if self.gaussian else sample_bernoulli(mean)

    def visible_energy(self, v: Tensor) -> Tensor:
        """The visible units' own term of the energy: ``-b^T v`` or ``sum_i (v_i - b_i)^2 / (2 sigma_i^2)``."""
        if self.gaussian:
            return ((v - self.visible_bias) ** 2 / (2 * self.variance)).sum(1)
        return -(v @ self.visible_bias)

    def free_energy(self, v: Tensor) -> Tensor:
        """``F(v) = -log sum_h exp(-E(v, h))`` of flattened ``v``, shape ``(batch,)``."""
        return self.visible_energy(v) - F.softplus(self.hidden_input(v)).sum(1)

    def joint_energy(self, v: Tensor, h: Tensor) -> Tensor:
        """``E(v, h)`` of flattened ``v`` and ``h``, shape ``(batch,)``."""
        coupling = (self.scaled_visible(v) @ self.W * h).sum(1) * self.hparams.bottom_up_scale
        return self.visible_energy(v) - h @ self.hidden_bias - coupling

    def gibbs_step(self, v: Tensor) -> Tensor:
        """One sweep ``v -> h ~ p(h | v) -> v' ~ p(v | h)``."""
        return self.sample_visible(self.sample_hidden(v))

    # ------------------------------------------------------------------ the contract
    def energy(self, x: Tensor) -> Tensor:
        """The free energy ``F(x)``, shape ``(batch,)``."""
        return self.free_energy(self.flatten(x))

    def random_visible(self, num_samples: int) -> Tensor:
        """Random visible states to start chains from: ``Bernoulli(1/2)`` or ``N(b, sigma^2)``."""
        shape = (num_samples, self.hparams.n_visible)
        if self.gaussian:
            return sample_gaussian(self.visible_bias.detach().expand(shape), self.variance.sqrt())
        return torch.randint(0, 2, shape, device=self.device).to(self.W.dtype)

    @torch.no_grad()
    def sample(self, num_samples: int, num_steps: int | None = None, start: str | Tensor | None = None) -> Tensor:
        """``num_samples`` samples after ``num_steps`` block-Gibbs sweeps.

        Args:
            num_samples: number of chains.
            num_steps: Gibbs sweeps (default ``sample_steps``).
            start: ``noise``, ``chains`` (the persistent chains, topped up with noise) or a tensor of
                starting states (e.g. data); default ``sample_start``.
        """
        steps = self.hparams.sample_steps if num_steps is None else num_steps
        start = self.hparams.sample_start if start is None else start
        if isinstance(start, Tensor):
            v = self.flatten(start.to(self.device))[:num_samples]
        elif start == "chains" and self.persistent_chains is not None:
            v = self.persistent_chains[:num_samples].to(self.device, self.W.dtype)
            if v.shape[0] < num_samples:
                v = torch.cat([v, self.random_visible(num_samples - v.shape[0])])
        elif start in ("noise", "chains"):
            v = self.random_visible(num_samples)
        else:
            raise ValueError(f"start must be one of {', '.join(_STARTS)} or a tensor, got {start!r}")
        if steps > 0:
            v = block_gibbs(self.gibbs_step, v, steps - 1)
            h = self.sample_hidden(v)
            v = self.visible_mean(h) if self.hparams.sample_mean else self.sample_visible(h)
        return v.reshape(v.shape[0], *self.data_shape)

    # ------------------------------------------------------------------ training
    @property
    def persistent_chains(self) -> Tensor | None:
        """The visible states of this process's persistent chains (PCD), ``(num_chains, n_visible)``.

        A plain attribute, not a buffer: under DDP each process keeps its own (buffers would be
        overwritten by rank 0's), and :meth:`on_save_checkpoint` gathers every process's chains into
        the checkpoint. Alongside them the chains keep their hidden states (:attr:`persistent_hidden`,
        drawn from ``p(h | v)`` at the end of the last update), from which the next update continues,
        as in Tieleman (2008). Assigning visible states drops the hidden ones: the next update then
        draws them from ``p(h | v)`` first."""
        return self._chains_visible

    @persistent_chains.setter
    def persistent_chains(self, value: Tensor | None) -> None:
        self._chains_visible = value
        self.persistent_hidden: Tensor | None = None

    def positive_phase(self, v_data: Tensor) -> Tensor:
        """``p(h | v_data)``, the data term's hidden probabilities (also where CD-k's chains start)."""
        return self.hidden_probs(v_data)

    def negative_phase(self, v_data: Tensor, p_data: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The model term: ``(v_model, p(h | v_model))`` after k Gibbs sweeps ``h -> v -> h``.

        CD-k starts from ``h ~ p(h | v_data)`` (``p_data``: the positive phase's probabilities, so
        the data's hidden input is computed once); PCD-k continues the persistent chains from their
        hidden states and keeps, for the next update, the last visible states and a hidden sample
        drawn from the last ``p(h | v)`` (computed here anyway: the model term needs it). Either way a
        sweep costs two matrix products, one of them shared with the update.
        """
        if self.hparams.method == "cd":
            h = sample_bernoulli(self.positive_phase(v_data) if p_data is None else p_data)
        else:
            h = self._chain_hidden_states(v_data)
        for step in range(self.hparams.k):
            v = self.sample_visible(h)
            p = self.hidden_probs(v)
            if step < self.hparams.k - 1:
                h = sample_bernoulli(p)
        if self.hparams.method == "pcd":
            self.persistent_chains = v
            self.persistent_hidden = sample_bernoulli(p)
        return v, p

    def _chain_hidden_states(self, v_data: Tensor) -> Tensor:
        """The persistent chains' hidden states: started from random visible states the first time,
        drawn from ``p(h | v)`` of given visible states (a checkpoint without hidden states, chains
        set by hand)."""
        if self.persistent_chains is None:
            self.persistent_chains = self.random_visible(self.hparams.num_chains or v_data.shape[0])
        if self.persistent_hidden is None:
            v = self.persistent_chains.to(v_data.device, v_data.dtype)
            self.persistent_chains = v
            self.persistent_hidden = self.sample_hidden(v)
        return self.persistent_hidden.to(v_data.device, v_data.dtype)

    def cd_loss(self, v_data: Tensor, v_model: Tensor) -> Tensor:
        """``mean F(v_data) - mean F(v_model)``: its gradient is the negative CD / PCD update.

        Both batches go through one free-energy evaluation (one larger matrix product forwards and
        one backwards instead of two each)."""
        n = v_data.shape[0]
        free_energy = self.free_energy(torch.cat([v_data, v_model.detach()]))
        return free_energy[:n].mean() - free_energy[n:].mean()

    @torch.no_grad()
    def cd_gradients(self, v_data: Tensor, p_data: Tensor, v_model: Tensor, p_model: Tensor) -> None:
        """Write the gradient of :meth:`cd_loss` into ``.grad`` of ``W``, ``b`` and ``c``, in closed form
        (Hinton 2010, Eq. 9-10; ``p = p(h | v)``, ``n`` and ``m`` the numbers of data and model states):

            dW = -(<v p^T>_data - <v p^T>_model),  db = -(<v>_data - <v>_model),  dc = -(<p>_data - <p>_model)

        (``v / sigma^2`` for Gaussian units). ``dW`` is two matrix products into the gradient buffer,
        ``mm`` then ``addmm_`` with ``beta = 1/m`` and ``alpha = -1/n``: no autograd graph and no
        temporary of ``W``'s size. Not for a learned variance (whose gradient this does not give):
        :meth:`cd_loss` then.
        """
        dtype = self.W.dtype  # under autocast the statistics may be bf16; the gradients are W's dtype
        n, m = v_data.shape[0], v_model.shape[0]
        x_data, x_model = self.scaled_visible(v_data).to(dtype), self.scaled_visible(v_model).to(dtype)
        p_data, p_model = p_data.to(dtype), p_model.to(dtype)
        grad_W = _gradient_buffer(self.W)
        torch.mm(x_model.t(), p_model, out=grad_W).addmm_(x_data.t(), p_data, beta=1.0 / m, alpha=-1.0 / n)
        torch.sub(x_model.mean(0), x_data.mean(0), out=_gradient_buffer(self.visible_bias))
        torch.sub(p_model.mean(0), p_data.mean(0), out=_gradient_buffer(self.hidden_bias))

    @torch.no_grad()
    def sparsity_gradients(self, v_data: Tensor, p_data: Tensor, world_size: int = 1) -> None:
        """Add the gradient of :meth:`sparsity_loss` to ``.grad`` of ``W`` and ``c`` in closed form:
        ``cost * (q - target)`` for ``c_j``, ``cost * s * mean(v_i) * (q_j - target)`` for ``W_ij``
        (``s`` the bottom-up scale); ``q`` is first updated with this batch's mean of ``p_data``."""
        hp = self.hparams
        excess = self.update_hidden_activity(p_data.to(self.W.dtype).mean(0), world_size)
        self.hidden_bias.grad.add_(excess, alpha=hp.sparsity_cost)
        x_mean = self.scaled_visible(v_data).to(self.W.dtype).mean(0)
        self.W.grad.addr_(x_mean, excess, alpha=hp.sparsity_cost * hp.bottom_up_scale)

    @torch.no_grad()
    def update_hidden_activity(self, activity: Tensor, world_size: int = 1) -> Tensor:
        """Fold this batch's mean hidden activity into the running estimate ``q`` (Hinton 2010,
        section 11; under DDP the global batch's: the processes' means are averaged first) and return
        ``q - target``."""
        hp = self.hparams
        if world_size > 1:
            torch.distributed.all_reduce(activity)
            activity = activity / world_size
        self.hidden_activity.mul_(hp.sparsity_decay).add_(activity, alpha=1 - hp.sparsity_decay)
        return self.hidden_activity - hp.sparsity_target

    def sparsity_loss(self, v_data: Tensor, world_size: int = 1) -> Tensor:
        """Hinton's sparsity term (2010, section 11): a surrogate whose gradient is
        ``cost * (q - target)`` for each hidden bias and ``cost * (q - target) * mean(v_i)`` for ``W_ij``,
        where ``q`` is the running mean activation of the hidden units (under DDP, of the global batch:
        each process's batch mean is averaged over the processes before it enters ``q``)."""
        x = self.hidden_input(v_data)
        excess = self.update_hidden_activity(torch.sigmoid(x.detach()).mean(0), world_size)
        return self.hparams.sparsity_cost * (x.mean(0) * excess).sum()

    def cd_step(self, v_data: Tensor, optimizer: Any, owner: EnergyBasedModel | None = None) -> tuple[Tensor, Tensor]:
        """One CD-k / PCD-k update of the parameters from the batch ``v_data``; returns the model
        term's ``(v_model, p(h | v_model))``.

        The gradient goes into ``.grad`` in closed form (:meth:`cd_gradients`), is averaged over the
        processes under DDP, and ``optimizer`` (SGD: momentum, weight decay and learning rate in its
        parameter groups, its state in the checkpoint) takes the step. With a learned variance the
        gradient comes from autograd through :meth:`cd_loss` instead.

        Args:
            v_data: the batch, flattened.
            optimizer: the optimiser of this RBM's parameters (Lightning's wrapper, which counts steps).
            owner: the LightningModule being trained, this RBM (default) or a stack it belongs to:
                its trainer gives the number of processes, its ``manual_backward`` the autograd path.
        """
        owner = self if owner is None else owner
        world_size = owner.trainer.world_size if owner._trainer is not None else 1
        with torch.no_grad():
            p_data = self.positive_phase(v_data)
            v_model, p_model = self.negative_phase(v_data, p_data)
        if self.gaussian and self.hparams.learn_sigma:
            loss = self.cd_loss(v_data, v_model)
            if self.hparams.sparsity_target is not None and self.hparams.sparsity_cost > 0:
                loss = loss + self.sparsity_loss(v_data, world_size)
            optimizer.zero_grad()
            owner.manual_backward(loss)
        else:
            self.cd_gradients(v_data, p_data, v_model, p_model)
            if self.hparams.sparsity_target is not None and self.hparams.sparsity_cost > 0:
                self.sparsity_gradients(v_data, p_data, world_size)
            if world_size > 1:
                owner.average_gradients([self.W, self.visible_bias, self.hidden_bias])
        optimizer.step()
        return v_model, p_model

    def training_step(self, batch: Any, batch_idx: int) -> None:
        v_data = self.flatten(self.batch_data(batch))
        optimizer = self.optimizers()
        v_model, _ = self.cd_step(v_data, optimizer)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        if self.should_log_step:
            with torch.no_grad():
                metrics = self.monitoring_metrics(v_data)
                metrics["free_energy_gap"] = self.free_energy(v_model).mean() - metrics["free_energy"]
                metrics["lr"] = torch.tensor(optimizer.param_groups[0]["lr"])
                if self.gaussian:
                    metrics["sigma_mean"] = self.variance.sqrt().mean()
            self.log_train_metrics(metrics, prog_bar=("reconstruction_error",))

    def monitoring_metrics(self, v: Tensor) -> dict[str, Tensor]:
        """Mean free energy, reconstruction error and (Bernoulli) pseudo-log-likelihood of ``v``."""
        reconstruction = self.visible_mean(self.hidden_probs(v))
        metrics = {
            "free_energy": self.free_energy(v).mean(),
            "reconstruction_error": (v - reconstruction).pow(2).sum(1).mean(),
        }
        if not self.gaussian:
            metrics["pseudo_log_likelihood"] = self.pseudo_log_likelihood(v).mean()
        return metrics

    def pseudo_log_likelihood(self, v: Tensor) -> Tensor:
        """Stochastic pseudo-log-likelihood of binary ``v``: ``n * log sigmoid(F(v~) - F(v))`` with one
        random unit of each example flipped in ``v~`` (the estimator of scikit-learn's BernoulliRBM)."""
        idx = torch.randint(0, v.shape[1], (v.shape[0], 1), device=v.device)
        flipped = v.clone()
        flipped.scatter_(1, idx, 1 - v.gather(1, idx))
        return v.shape[1] * F.logsigmoid(self.free_energy(flipped) - self.free_energy(v))

    @torch.no_grad()
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Held-out free energy, reconstruction error and pseudo-log-likelihood (``val/...``).

        The gap between held-out and training free energy (``val/free_energy`` minus
        ``train/free_energy``) is Hinton's over-fitting monitor; the AIS log-likelihood comes from the
        ``AISLogLikelihood`` callback.
        """
        v = self.flatten(self.batch_data(batch))
        for name, value in self.monitoring_metrics(v).items():
            self.log(f"val/{name}", value, sync_dist=True, batch_size=v.shape[0])

    test_step = validation_step

    def on_train_start(self) -> None:
        super().on_train_start()  # the run's own length sets the lr decay's clock (also when resumed)
        if self.hparams.init_visible_bias and self.global_step == 0:
            self.init_visible_bias_from(self.trainer)
        self._set_momentum()

    def on_train_epoch_start(self) -> None:
        self._set_momentum()

    def _set_momentum(self) -> None:
        self.set_momentum(self.trainer.optimizers[0], self.current_epoch)

    def set_momentum(self, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """The recipe's momentum for ``epoch`` (of this RBM's training): ``momentum`` for the first
        ``momentum_epochs``, then ``final_momentum``."""
        hp = self.hparams
        momentum = hp.momentum if epoch < hp.momentum_epochs else hp.final_momentum
        for group in optimizer.param_groups:
            group["momentum"] = momentum

    def init_visible_bias_from(self, trainer: Any) -> None:
        """:meth:`init_visible_bias` from ``trainer``'s training data: the data module's ``train_data``
        tensor if it has one (iterating the loader here would advance its epoch counter), else one
        pass over the training loader, averaged over the processes."""
        data = getattr(trainer.datamodule, "train_data", None)
        if isinstance(data, Tensor):
            self.init_visible_bias(data.split(1024))
        else:
            self.init_visible_bias(trainer.train_dataloader, strategy=trainer.strategy)

    @torch.no_grad()
    def init_visible_bias(self, data: Any, smoothing: float = 0.01, strategy: Any = None) -> None:
        """Set ``b`` from the mean ``p`` of the data: ``log(p / (1 - p))`` (Bernoulli, Hinton 2010,
        section 8; ``p`` pulled ``smoothing`` towards 1/2 so that no bias is infinite) or ``p`` (Gaussian).
        ``data`` is an iterable of batches; with the ``strategy`` of a DDP run whose processes each
        read their own share (the training loader), the means are taken over every share."""
        total = torch.zeros(self.hparams.n_visible, dtype=torch.float64, device=self.device)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        for batch in data:
            v = self.flatten(self.batch_data(batch).to(self.device))
            total += v.sum(0).double()
            count += v.shape[0]
        if strategy is not None and strategy.world_size > 1:
            total = strategy.reduce(total, reduce_op="sum")
            count = strategy.reduce(count, reduce_op="sum")
        mean = total / count.clamp_min(1)
        if not self.gaussian:
            p = (1 - smoothing) * mean + smoothing / 2
            mean = torch.log(p) - torch.log1p(-p)
        self.visible_bias.copy_(mean.to(self.visible_bias.dtype))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.gaussian and self.hparams.learn_sigma:  # keep sigma within its bounds (Cho et al. 2011)
            low, high = self.hparams.sigma_bounds
            with torch.no_grad():
                self.log_variance.clamp_(2 * math.log(low), 2 * math.log(high))

    def on_train_epoch_end(self) -> None:
        self.log_filters(self.trainer)

    def log_filters(self, trainer: Any, tag: str = "filters") -> None:
        """Draw the weights of the first ``num_filters`` hidden units as images (rank 0 of ``trainer``)."""
        n = min(self.hparams.num_filters, self.hparams.n_hidden)
        if n == 0 or trainer is None or not trainer.is_global_zero or len(self.data_shape) < 2:
            return
        from torchvision.utils import make_grid

        from lightning_ebm.callbacks.utils import log_image

        filters = self.W.detach()[:, :n].t().float().reshape(n, *self.data_shape)
        if filters.dim() == 3:
            filters = filters.unsqueeze(1)
        # Each filter scaled to [0, 1] by its own range, as filters are usually shown.
        low = filters.flatten(1).min(1).values.view(-1, 1, 1, 1)
        high = filters.flatten(1).max(1).values.view(-1, 1, 1, 1)
        filters = (filters - low) / (high - low).clamp_min(1e-8)
        log_image(trainer, tag, make_grid(filters.cpu(), nrow=int(math.ceil(math.sqrt(n))), padding=1))

    # ------------------------------------------------------------------ persistent chains in checkpoints
    def per_rank_state(self) -> dict[str, Tensor]:
        """This process's persistent chains (PCD): their visible and hidden states; the checkpoint
        holds every process's."""
        state = {}
        if self.persistent_chains is not None:
            state["persistent_chains"] = self.persistent_chains
            if self.persistent_hidden is not None:
                state["persistent_hidden"] = self.persistent_hidden
        return state

    def load_per_rank_state(self, state: dict[str, Tensor]) -> None:
        if "persistent_chains" in state:
            self.persistent_chains = state["persistent_chains"].to(self.W.dtype)
            if "persistent_hidden" in state:  # absent from older checkpoints: drawn from p(h | v) then
                self.persistent_hidden = state["persistent_hidden"].to(self.W.dtype)

    def build_optimizer(self) -> torch.optim.SGD:
        """SGD with momentum, the weight decay on ``W`` only; PyTorch's fused kernel where the
        parameters' device has one (one pass over each parameter per step)."""
        hp = self.hparams
        params = [p for name, p in self.named_parameters() if name != "W"]
        groups = [{"params": [self.W], "weight_decay": hp.weight_decay}, {"params": params, "weight_decay": 0.0}]
        try:
            return torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, fused=True)
        except (RuntimeError, TypeError):  # a device or dtype without the fused kernel
            return torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum)

    def configure_optimizers(self) -> Any:
        """The SGD of :meth:`build_optimizer`; ``lr_decay: linear`` adds a per-update linear decay to 0
        (the training step steps it: the RBM updates in closed form, with manual optimisation)."""
        hp = self.hparams
        optimizer = self.build_optimizer()
        if hp.lr_decay == "none":
            return optimizer
        return self.linear_lr_decay([optimizer], start=0.0)
