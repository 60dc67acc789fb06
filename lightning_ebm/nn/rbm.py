"""The restricted Boltzmann machine as a layer: energies, conditionals, the CD gradient in closed form,
exact ``log Z`` and its AIS annealing path. The RBM, DBN and DBM methods hold such layers.

Visible units ``v`` and binary hidden units ``h`` interact through ``W`` (visible x hidden):

    Bernoulli visible:  E(v, h) = -b^T v - c^T h - v^T W h
    Gaussian visible:   E(v, h) = sum_i (v_i - b_i)^2 / (2 sigma_i^2) - c^T h - (v / sigma^2)^T W h

and the hidden units sum out in closed form into the free energy (lower = more probable):

    F(v) = -b^T v - sum_j softplus(c_j + (W^T v)_j)                                          (Bernoulli)
    F(v) = sum_i (v_i - b_i)^2 / (2 sigma_i^2) - sum_j softplus(c_j + (W^T (v / sigma^2))_j)   (Gaussian)

The layers are conditionally independent given each other (block Gibbs sampling):

    p(h_j = 1 | v) = sigmoid(c_j + (W^T v)_j)        (v / sigma^2 for Gaussian units)
    p(v_i = 1 | h) = sigmoid(b_i + (W h)_i)          or   v_i | h ~ N(b_i + (W h)_i, sigma_i^2)

``log Z`` enumerates the smaller layer (the other sums or integrates out):

    log Z = logsumexp_v [b^T v + sum_j softplus(c_j + (W^T v)_j)]          (enumerating v)
          = logsumexp_h [c^T h + sum_i softplus(b_i + (W h)_i)]            (enumerating h)
          = logsumexp_h [c^T h + sum_i (1/2 log(2 pi sigma_i^2) + ((b_i + (W h)_i)^2 - b_i^2) / (2 sigma_i^2))]
                                                                            (Gaussian visible units)

The AIS path (Salakhutdinov & Murray 2008) anneals from a base model ``A`` with the same visible
units, biases ``b_A`` and no coupling, to the RBM: ``log f_beta(v) = (1 - beta) b_A^T v + beta b^T v +
sum_j softplus(beta (c_j + (W^T v)_j))`` (Bernoulli), whose Gibbs transition samples
``h ~ sigmoid(beta (c + W^T v))`` then ``v ~ sigmoid((1 - beta) b_A + beta (b + W h))`` (Gaussian:
``N((1 - beta) b_A + beta (b + W h), sigma^2)``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ebm.nn.boltzmann import (
    MAX_ENUMERATED_UNITS,
    bernoulli_base_rate,
    logsumexp_over_states,
    refuse_above,
)
from lightning_ebm.samplers.gibbs import sample_bernoulli, sample_gaussian
from lightning_ebm.utils import check_choices


def _gradient_buffer(parameter: Tensor) -> Tensor:
    """``parameter.grad``, allocated once (the closed-form updates write into it)."""
    if parameter.grad is None or parameter.grad.shape != parameter.shape or parameter.grad.dtype != parameter.dtype:
        parameter.grad = torch.empty_like(parameter)
    return parameter.grad


class RBMLayer(nn.Module):
    """An RBM with binary hidden units between ``n_visible`` and ``n_hidden`` units (module docstring).

    Args:
        n_visible: visible units.
        n_hidden: hidden units.
        visible: ``bernoulli`` (binary data, or probabilities in [0, 1]) or ``gaussian``.
        sigma: standard deviation of Gaussian visible units (the initial value when learned).
        learn_sigma: learn ``log sigma^2`` per unit (Cho et al. 2011), kept within ``sigma_bounds``.
        sigma_bounds: the interval ``sigma`` is kept in.
        init_std: standard deviation of the initial weights.
        bottom_up_scale: multiplies ``W`` in the hidden units' input, ``c + s W^T v``;
            ``top_down_scale`` in the visible units', ``b + s W h``. Both 1 for an RBM; a DBM pretrains
            its layers with 2 where the layer will also get input from the other side (Salakhutdinov &
            Hinton 2009). With unequal scales there is no joint energy; the free energy is that of ``s_up W``.
        sparsity_target: desired mean activation ``q`` of the hidden units (None: no sparsity term);
            ``sparsity_cost`` its weight, ``sparsity_decay`` the decay of the running estimate
            (Hinton 2010, section 11).
    """

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        visible: Literal["bernoulli", "gaussian"] = "bernoulli",
        sigma: float = 1.0,
        learn_sigma: bool = False,
        sigma_bounds: tuple[float, float] = (0.1, 1.1),
        init_std: float = 0.01,
        bottom_up_scale: float = 1.0,
        top_down_scale: float = 1.0,
        sparsity_target: float | None = None,
        sparsity_cost: float = 0.0,
        sparsity_decay: float = 0.95,
    ) -> None:
        super().__init__()
        check_choices(RBMLayer.__init__, {"visible": visible})
        low, high = sigma_bounds
        if visible == "gaussian" and not 0 < low <= sigma <= high:
            raise ValueError(f"sigma ({sigma}) must lie within sigma_bounds {list(sigma_bounds)}")
        self.n_visible, self.n_hidden = int(n_visible), int(n_hidden)
        self.gaussian = visible == "gaussian"
        self.learn_sigma = self.gaussian and learn_sigma
        self.sigma_bounds = (float(low), float(high))
        self.bottom_up_scale, self.top_down_scale = float(bottom_up_scale), float(top_down_scale)
        self.sparsity_target, self.sparsity_cost, self.sparsity_decay = sparsity_target, sparsity_cost, sparsity_decay
        self.W = nn.Parameter(init_std * torch.randn(n_visible, n_hidden))
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))
        log_variance = torch.full((n_visible,), 2 * math.log(sigma))
        if self.learn_sigma:
            self.log_variance = nn.Parameter(log_variance)
        else:
            self.register_buffer("log_variance", log_variance)
        # Running mean activation of the hidden units (Hinton 2010, section 11), for the sparsity term.
        self.register_buffer("hidden_activity", torch.full((n_hidden,), sparsity_target or 0.0))

    @property
    def sparse(self) -> bool:
        return self.sparsity_target is not None and self.sparsity_cost > 0

    # ------------------------------------------------------------------ the model
    @property
    def variance(self) -> Tensor:
        """``sigma^2`` of the visible units, within ``sigma_bounds`` (all ones for Bernoulli units)."""
        if not self.gaussian:
            return torch.ones_like(self.log_variance)
        low, high = self.sigma_bounds
        return self.log_variance.clamp(2 * math.log(low), 2 * math.log(high)).exp()

    def clamp_variance_(self) -> None:
        """Keep a learned ``sigma`` within its bounds (Cho et al. 2011)."""
        if self.learn_sigma:
            low, high = self.sigma_bounds
            with torch.no_grad():
                self.log_variance.clamp_(2 * math.log(low), 2 * math.log(high))

    def scaled_visible(self, v: Tensor) -> Tensor:
        """What the visible units send to the hidden ones: ``v``, or ``v / sigma^2`` for Gaussian units."""
        return v / self.variance if self.gaussian else v

    def hidden_input(self, v: Tensor) -> Tensor:
        """Total input of the hidden units, ``c + s W^T v`` (``v / sigma^2`` for Gaussian units)."""
        return torch.addmm(self.hidden_bias, self.scaled_visible(v), self.W, alpha=self.bottom_up_scale)

    def hidden_probs(self, v: Tensor) -> Tensor:
        """``p(h = 1 | v)``."""
        return torch.sigmoid(self.hidden_input(v))

    def visible_input(self, h: Tensor) -> Tensor:
        """Total input of the visible units, ``b + s W h``."""
        return torch.addmm(self.visible_bias, h, self.W.t(), alpha=self.top_down_scale)

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
        """``F(v) = -log sum_h exp(-E(v, h))``, shape ``(batch,)``."""
        return self.visible_energy(v) - F.softplus(self.hidden_input(v)).sum(1)

    def joint_energy(self, v: Tensor, h: Tensor) -> Tensor:
        """``E(v, h)``, shape ``(batch,)``."""
        coupling = (self.scaled_visible(v) @ self.W * h).sum(1) * self.bottom_up_scale
        return self.visible_energy(v) - h @ self.hidden_bias - coupling

    def gibbs_step(self, v: Tensor) -> Tensor:
        """One sweep ``v -> h ~ p(h | v) -> v' ~ p(v | h)``."""
        return self.sample_visible(self.sample_hidden(v))

    def random_visible(self, num_samples: int) -> Tensor:
        """Random visible states to start chains from: ``Bernoulli(1/2)`` or ``N(b, sigma^2)``."""
        shape = (num_samples, self.n_visible)
        if self.gaussian:
            return sample_gaussian(self.visible_bias.detach().expand(shape), self.variance.sqrt())
        return torch.randint(0, 2, shape, device=self.W.device).to(self.W.dtype)

    # ------------------------------------------------------------------ the CD / PCD gradient
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
        excess = self.update_hidden_activity(p_data.to(self.W.dtype).mean(0), world_size)
        self.hidden_bias.grad.add_(excess, alpha=self.sparsity_cost)
        x_mean = self.scaled_visible(v_data).to(self.W.dtype).mean(0)
        self.W.grad.addr_(x_mean, excess, alpha=self.sparsity_cost * self.bottom_up_scale)

    @torch.no_grad()
    def update_hidden_activity(self, activity: Tensor, world_size: int = 1) -> Tensor:
        """Fold this batch's mean hidden activity into the running estimate ``q`` (under DDP the global
        batch's: the processes' means are averaged first) and return ``q - target``."""
        if world_size > 1:
            torch.distributed.all_reduce(activity)
            activity = activity / world_size
        self.hidden_activity.mul_(self.sparsity_decay).add_(activity, alpha=1 - self.sparsity_decay)
        return self.hidden_activity - self.sparsity_target

    def sparsity_loss(self, v_data: Tensor, world_size: int = 1) -> Tensor:
        """Hinton's sparsity term (2010, section 11): a surrogate whose gradient is
        ``cost * (q - target)`` for each hidden bias and ``cost * (q - target) * mean(v_i)`` for ``W_ij``,
        ``q`` the running mean activation of the hidden units."""
        x = self.hidden_input(v_data)
        excess = self.update_hidden_activity(torch.sigmoid(x.detach()).mean(0), world_size)
        return self.sparsity_cost * (x.mean(0) * excess).sum()

    # ------------------------------------------------------------------ partition function
    @torch.no_grad()
    def exact_log_partition(self, max_units: int = MAX_ENUMERATED_UNITS) -> float:
        """``log Z`` by enumerating the smaller layer (the hidden one for Gaussian units), float64."""
        W = self.W.detach().double()
        b, c = self.visible_bias.detach().double(), self.hidden_bias.detach().double()
        enumerate_hidden = self.gaussian or self.n_hidden <= self.n_visible
        units = self.n_hidden if enumerate_hidden else self.n_visible
        refuse_above(units, max_units, f"the {'hidden' if enumerate_hidden else 'visible'} layer")
        if self.gaussian:
            var = self.variance.detach().double()
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

        return logsumexp_over_states(units, log_f, W.device)

    @torch.no_grad()
    def exact_log_likelihood(self, v: Tensor, max_units: int = MAX_ENUMERATED_UNITS) -> Tensor:
        """``log p(v) = -F(v) - log Z``, float64 (exact whatever the size of the other layer)."""
        return -self.free_energy(v.to(self.W.dtype)).double() - self.exact_log_partition(max_units)

    def base_rate(self, v: Tensor | None, pseudo_count: float = 5.0) -> Tensor:
        """Visible biases of the AIS base model: the base rate of the data ``v`` (Bernoulli,
        :func:`~lightning_ebm.nn.boltzmann.bernoulli_base_rate`), its means (Gaussian); without data
        zeros (Bernoulli) or the model's ``b`` (Gaussian)."""
        b = self.visible_bias.detach()
        if v is None:
            return b.clone() if self.gaussian else torch.zeros_like(b)
        v = v.to(b.device)
        return (v.double().mean(0) if self.gaussian else bernoulli_base_rate(v, pseudo_count)).to(b.dtype)

    def annealing_path(self, data: Tensor | None = None) -> RBMAnnealingPath:
        """The AIS path from the base-rate model of ``data`` (flattened visible states) to this RBM."""
        return RBMAnnealingPath(self, self.base_rate(data))


class RBMAnnealingPath:
    """AIS path from a base-rate model (visible biases ``base_bias``, no coupling) to an RBM
    (:class:`~lightning_ebm.samplers.ais.AnnealingPath`; module docstring)."""

    def __init__(self, rbm: RBMLayer, base_bias: Tensor) -> None:
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
