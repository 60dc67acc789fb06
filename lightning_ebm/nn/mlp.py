"""Fully connected networks: the toy and MNIST feature nets and generators."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_ebm.nn.base import Network

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "swish": nn.SiLU,
}


def make_activation(name: str | None) -> nn.Module:
    """An activation module by name (``None`` or ``"identity"`` for none)."""
    if name is None or name == "identity":
        return nn.Identity()
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class GaussianNoise(nn.Module):
    """Adds N(0, std^2) noise in training mode only (pre-batch-norm noise of the DEM generator)."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.std > 0:
            return x + self.std * torch.randn_like(x)
        return x


class MLP(Network):
    """``in_features -> hidden[0] -> ... -> out_features`` with an optional batch norm per hidden layer.

    Args:
        in_features: input size; inputs of any shape ``(batch, ...)`` are flattened.
        hidden: widths of the hidden layers.
        out_features: output size.
        activation: hidden activation (``relu``, ``leaky_relu``, ``elu``, ``softplus``, ``tanh``, ``swish``).
        output_activation: activation after the last layer (``None`` for a linear output).
        batch_norm: batch norm (with learnable scale ``gamma``) after each hidden linear layer; the
            DEM generator's entropy regulariser (Kim & Bengio 2016, Eq. 15) reads these scales.
        noise_std: Gaussian noise added before each batch norm while training.
        out_shape: reshape the output to ``(batch, *out_shape)`` (e.g. ``[1, 28, 28]``).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
        output_activation: str | None = None,
        batch_norm: bool = False,
        noise_std: float = 0.0,
        out_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if noise_std > 0:
                layers.append(GaussianNoise(noise_std))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(make_activation(activation))
            width = h
        layers.append(nn.Linear(width, out_features))
        layers.append(make_activation(output_activation))
        self.net = nn.Sequential(*layers)
        self.out_features = out_features
        self.out_shape = tuple(out_shape) if out_shape is not None else (out_features,)
        if int(torch.tensor(self.out_shape).prod()) != out_features:
            raise ValueError(f"out_shape {self.out_shape} does not hold {out_features} values")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).view(-1, *self.out_shape)


class StatisticsMLP(Network):
    """MEG's statistics network ``T(x, z)`` for vectors: an MLP on the concatenation ``[x, z]``.

    Args:
        data_features: size of a flattened example (2 for toys, 121 for KDD99).
        latent_dim: size of ``z``.
        hidden: hidden widths (toys: three of 512; KDD99: 256, 128, 128).
        activation: hidden activation (LeakyReLU(0.2) in the paper's code).
    """

    def __init__(self, data_features: int, latent_dim: int, hidden: list[int], activation: str = "leaky_relu") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = data_features + latent_dim
        for h in hidden:
            layers += [nn.Linear(width, h), make_activation(activation)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.net(torch.cat([x.flatten(1), z], dim=1)).squeeze(-1)
