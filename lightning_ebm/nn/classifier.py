"""A small convolutional classifier ``x -> logits`` for MNIST-sized images.

It serves two purposes: the MNIST digit classifier that :class:`~lightning_ebm.callbacks.ModeCounting`
uses to tell which digit each StackedMNIST channel holds (trained by ``configs/mnist_classifier.yaml``),
and the MNIST backbone of JEM, whose energy is ``-logsumexp`` of these logits.

Layout: one stage per entry of ``channels``, each a 3x3 convolution (padding 1), optional batch norm,
the activation and a 2x2 max pooling (28 -> 14 -> 7 with two stages); then a fully connected hidden
layer of ``hidden`` units, optional dropout, and a linear layer to ``num_classes`` logits.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_ebm.nn.base import Network
from lightning_ebm.nn.mlp import make_activation


class ConvClassifier(Network):
    """Conv stages with max pooling, a hidden layer, logits out.

    Args:
        in_channels: image channels.
        num_classes: number of logits.
        channels: maps of each convolutional stage; each stage halves the side (floor).
        hidden: units of the fully connected hidden layer.
        image_size: input height = width.
        activation: hidden activation (``relu``, ``leaky_relu``, ``elu``, ``swish``, ...).
        batch_norm: batch norm after each convolution (leave off for JEM, whose sampler runs the net
            on non-data inputs).
        dropout: dropout probability before the last linear layer (0 for none).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        image_size: int = 28,
        activation: str = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = list(channels)
        side = image_size
        for _ in channels:
            side //= 2
        if not channels or side < 1:
            raise ValueError(
                f"image_size {image_size} is too small for {len(channels)} pooling stages (each halves the side)"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in channels:
            layers.append(nn.Conv2d(cin, cout, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers += [make_activation(activation), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.out_features = cin * side * side
        self.head = nn.Sequential(
            nn.Linear(self.out_features, hidden),
            make_activation(activation),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(batch, num_classes)`` of images ``(batch, in_channels, image_size, image_size)``."""
        return self.head(self.features(x))
