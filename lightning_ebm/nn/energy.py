"""Energy heads that turn a feature network into a scalar energy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ebm.utils import eval_mode


class ProductOfExpertsEnergy(nn.Module):
    """Product-of-experts energy on deep features (Kim & Bengio 2016, Eq. 11)::

        E(x) = ||x||^2 / sigma^2 - b^T x - sum_i softplus(w_i^T f(x) + c_i)

    The quadratic and linear terms capture the global mean and variance of the data; each expert
    ``softplus(w_i^T f(x) + c_i)`` is the free energy of one binary hidden unit of a Gaussian RBM
    whose input is ``f(x)``. With ``f`` bounded (or growing at most linearly), the quadratic term
    dominates far from the data and ``exp(-E)`` is integrable.

    Args:
        feature_net: ``f``, mapping ``(batch, *data_shape)`` to ``(batch, features)``.
        data_shape: shape of one example (``[2]`` for 2D toys, ``[3, 64, 64]`` for images).
        num_experts: number of experts ``(w_i, c_i)``.
        sigma: initial (or fixed) global scale ``sigma``.
        learn_sigma: learn ``log sigma`` together with the other parameters.
    """

    def __init__(
        self,
        feature_net: nn.Module,
        data_shape: Sequence[int],
        num_experts: int,
        sigma: float = 1.0,
        learn_sigma: bool = False,
    ) -> None:
        super().__init__()
        self.feature_net = feature_net
        data_dim = math.prod(data_shape)
        with torch.no_grad(), eval_mode(feature_net):
            try:
                feature_dim = feature_net(torch.zeros(2, *data_shape)).flatten(1).shape[1]
            except RuntimeError as exc:
                reason = str(exc).strip().splitlines()[0][:200]
                raise ValueError(
                    f"the feature network does not take examples shaped data_shape {list(data_shape)} ({reason}): "
                    "make its input fit data_shape"
                ) from None
        self.experts = nn.Linear(feature_dim, num_experts)  # rows w_i, biases c_i
        self.visible_bias = nn.Parameter(torch.zeros(data_dim))  # b
        log_sigma = torch.tensor(math.log(sigma))
        if learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    def expert_terms(self, x: Tensor) -> Tensor:
        """``softplus(w_i^T f(x) + c_i)`` for every expert: ``(batch, num_experts)``."""
        return F.softplus(self.experts(self.feature_net(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        quadratic = flat.pow(2).sum(1) * torch.exp(-2 * self.log_sigma)
        linear = flat @ self.visible_bias
        return quadratic - linear - self.expert_terms(x).sum(1)  # Eq. 11
