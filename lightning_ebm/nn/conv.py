"""Convolutional energy, generator and statistics networks of MEG (Kumar et al. 2019) for small images.

Two layouts, as in the paper's experiments (``width`` = maps of the widest layer, 512 there):

* ``mnist`` (28 x 28, MNIST anomaly detection and StackedMNIST with one channel per stacked digit):
  four 5x5 convolutions with stride 2 (28 -> 14 -> 7 -> 4 -> 2) with ``width/8 ... width`` maps and
  LeakyReLU(0.2); the generator mirrors them with transposed convolutions and batch norm.
* ``cifar`` (32 x 32, CIFAR-10): 3x3 stride-1 convolutions alternating with 4x4 stride-2 ones
  (32 -> 16 -> 8 -> 4), ``width/8 ... width`` maps, LeakyReLU(0.1); the generator is linear to
  4 x 4 x ``width`` and three 4x4 transposed convolutions with batch norm, then a 3x3 convolution.

Weights of convolutions start from N(0, 0.02^2) and batch-norm scales from N(1, 0.02^2) (DCGAN).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_ebm.nn.base import Network
from lightning_ebm.nn.mlp import make_activation

LAYOUTS = ("mnist", "cifar")
_SIZE = {"mnist": 28, "cifar": 32}
_SIDE = {"mnist": 2, "cifar": 4}  # side of the last feature map


def _check_layout(layout: str, width: int) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if width % 8:
        raise ValueError(f"width must be a multiple of 8, got {width}")


def _dcgan_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def conv_trunk(layout: str, in_channels: int, width: int) -> nn.Sequential:
    """The convolutional part shared by the energy and the statistics network: images to
    ``(batch, width * side * side)`` features (side 2 for ``mnist``, 4 for ``cifar``)."""
    _check_layout(layout, width)
    maps = [width // 8, width // 4, width // 2, width]
    layers: list[nn.Module] = []
    channels = in_channels
    if layout == "mnist":
        for out in maps:
            layers += [nn.Conv2d(channels, out, 5, stride=2, padding=2), nn.LeakyReLU(0.2)]
            channels = out
    else:
        for i, out in enumerate(maps):
            layers += [nn.Conv2d(channels, out, 3, stride=1, padding=1), nn.LeakyReLU(0.1)]
            channels = out
            if i < len(maps) - 1:
                layers += [nn.Conv2d(out, out, 4, stride=2, padding=1), nn.LeakyReLU(0.1)]
    layers.append(nn.Flatten())
    trunk = nn.Sequential(*layers)
    _dcgan_init(trunk)
    return trunk


class ConvEnergy(Network):
    """``E(x)``: the convolutional trunk and a linear map to one number per image.

    Args:
        layout: ``mnist`` (28 x 28) or ``cifar`` (32 x 32).
        in_channels: image channels (the number of stacked digits for StackedMNIST).
        width: maps of the last convolution (512 in the paper).
    """

    def __init__(self, layout: str = "cifar", in_channels: int = 3, width: int = 512) -> None:
        super().__init__()
        self.trunk = conv_trunk(layout, in_channels, width)
        self.head = nn.Linear(width * _SIDE[layout] ** 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x)).squeeze(-1)


class ConvGenerator(Network):
    """``G(z)``: linear to the smallest feature map, transposed convolutions with batch norm, tanh.

    Args:
        layout: ``mnist`` (28 x 28 output) or ``cifar`` (32 x 32).
        latent_dim: size of ``z`` (128 in the paper).
        out_channels: image channels.
        width: maps of the first feature map (512 in the paper).
        output_activation: ``tanh`` for data in [-1, 1], ``sigmoid`` for [0, 1].
    """

    def __init__(
        self,
        layout: str = "cifar",
        latent_dim: int = 128,
        out_channels: int = 3,
        width: int = 512,
        output_activation: str = "tanh",
    ) -> None:
        super().__init__()
        _check_layout(layout, width)
        self.width, self.side = width, _SIDE[layout]
        self.project = nn.Linear(latent_dim, width * self.side**2)
        maps = [width, width // 2, width // 4, width // 8]
        layers: list[nn.Module] = []
        if layout == "mnist":  # 2 -> 4 -> 7 -> 14 -> 28
            layers += [nn.BatchNorm2d(width), nn.ReLU()]
            for i, (cin, cout) in enumerate(zip(maps, maps[1:] + [out_channels])):
                layers.append(nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=int(i != 1)))
                if i < 3:
                    layers += [nn.BatchNorm2d(cout), nn.ReLU()]
        else:  # 4 -> 8 -> 16 -> 32
            for cin, cout in zip(maps, maps[1:]):
                layers += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            layers.append(nn.ConvTranspose2d(maps[-1], out_channels, 3, stride=1, padding=1))
        layers.append(make_activation(output_activation))
        self.net = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.project(z).view(z.shape[0], self.width, self.side, self.side))


class ConvStatistics(Network):
    """MEG's statistics network ``T(x, z)`` for images: the convolutional trunk maps ``x`` to a
    ``latent_dim`` code, which is concatenated with ``z`` and scored by a one-hidden-layer MLP.

    Args:
        layout: ``mnist`` or ``cifar``.
        in_channels: image channels.
        latent_dim: size of ``z``.
        width: maps of the trunk's last convolution and units of the MLP's hidden layer.
    """

    def __init__(self, layout: str = "cifar", in_channels: int = 3, latent_dim: int = 128, width: int = 512) -> None:
        super().__init__()
        self.trunk = conv_trunk(layout, in_channels, width)
        self.encode = nn.Linear(width * _SIDE[layout] ** 2, latent_dim)
        slope = 0.2 if layout == "mnist" else 0.1
        self.head = nn.Sequential(nn.Linear(2 * latent_dim, width), nn.LeakyReLU(slope), nn.Linear(width, 1))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        code = self.encode(self.trunk(x))
        return self.head(torch.cat([code, z], dim=1)).squeeze(-1)
