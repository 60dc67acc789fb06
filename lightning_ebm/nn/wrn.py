"""Wide residual network (Zagoruyko & Komodakis 2016), the JEM backbone, with a choice of normalisation.

WRN-``depth``-``widen_factor``: a 3x3 stem convolution with 16 maps, three groups of
``(depth - 4) / 6`` pre-activation basic blocks with ``16k``, ``32k``, ``64k`` maps (``k`` the widening
factor; the second and third groups halve the resolution), then normalisation, activation, global
average pooling and a linear layer to the class logits. A basic block is
``norm -> act -> conv3x3 -> dropout -> norm -> act -> conv3x3`` plus the identity (or a 1x1
convolution where the shape changes). A block that halves the resolution does so in its first
convolution (Zagoruyko & Komodakis) or, with ``downsample="second"``, in its second, as in the JEM
authors' code: same parameters, but the first convolution then runs at the input's resolution
(WRN-10-2 on 32 x 32: 72.8M instead of 44.5M multiply-adds per image).

The weights and activations are kept in the channels-last memory format by default: the same
function (up to float rounding), but oneDNN's CPU convolutions run faster on it (a JEM training
iteration of WRN-10-2, batch 64, 20 SGLD steps: 13-18% less CPU time on one thread); ``channels_last=False``
keeps PyTorch's default layout.

JEM (Grathwohl et al. 2020) uses WRN-28-10 without normalisation (batch norm interferes with SGLD
sampling, whose batches are not data batches) and LeakyReLU(0.2) activations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_ebm.nn.base import Network

NORMS = (None, "batch", "instance", "layer", "group")


def make_norm(norm: str | None, channels: int) -> nn.Module:
    """A 2D normalisation layer by name (``None`` for none)."""
    if norm is None or norm == "none":
        return nn.Identity()
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    if norm == "group":
        return nn.GroupNorm(min(32, channels), channels)
    raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(str(n) for n in NORMS)}")


class _BasicBlock(nn.Module):
    def __init__(
        self, c_in: int, c_out: int, stride: int, norm: str | None, dropout: float, slope: float, second: bool = False
    ) -> None:
        super().__init__()
        stride1, stride2 = (1, stride) if second else (stride, 1)
        self.norm1, self.conv1 = make_norm(norm, c_in), nn.Conv2d(c_in, c_out, 3, stride1, 1, bias=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.norm2, self.conv2 = make_norm(norm, c_out), nn.Conv2d(c_out, c_out, 3, stride2, 1, bias=True)
        self.act = nn.LeakyReLU(slope)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride, 0)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.act(self.norm1(x)))
        out = self.conv2(self.act(self.norm2(self.dropout(out))))
        return out + self.shortcut(x)


class WideResNet(Network):
    """WRN-``depth``-``widen_factor`` classifier: images ``(B, C, H, W)`` to logits ``(B, num_classes)``.

    Args:
        depth: total depth, ``6n + 4`` (28 in JEM).
        widen_factor: widening factor ``k`` (10 in JEM).
        num_classes: number of logits.
        in_channels: image channels.
        norm: ``None`` (JEM), ``batch``, ``instance``, ``layer`` (GroupNorm with one group) or ``group``.
        dropout: dropout rate inside the blocks.
        leaky_slope: negative slope of the LeakyReLU activations (0 gives ReLU).
        downsample: which convolution of a resolution-halving block has stride 2: ``first``
            (Zagoruyko & Komodakis 2016) or ``second`` (the JEM authors' code).
        channels_last: keep weights and activations in the channels-last memory format (faster
            convolutions; the outputs and input gradients are the same up to float rounding).
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        norm: str | None = None,
        dropout: float = 0.0,
        leaky_slope: float = 0.2,
        downsample: str = "first",
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if downsample not in ("first", "second"):
            raise ValueError(f"downsample must be 'first' or 'second', got {downsample!r}")
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"a wide ResNet's depth is 6n + 4 (10, 16, 22, 28, ...), got {depth}")
        make_norm(norm, 16)  # validates the name
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1)]
        c_in = widths[0]
        for group, c_out in enumerate(widths[1:]):
            for i in range(n):
                stride = 2 if group > 0 and i == 0 else 1
                layers.append(_BasicBlock(c_in, c_out, stride, norm, dropout, leaky_slope, downsample == "second"))
                c_in = c_out
        layers += [make_norm(norm, c_in), nn.LeakyReLU(leaky_slope), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)
        self.num_classes = num_classes
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x.contiguous(memory_format=self.memory_format)))
