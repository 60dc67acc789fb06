"""ConvClassifier: shapes, layout, rebuilding from its spec, and that it can fit labels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_ebm.nn import ConvClassifier, module_spec


@pytest.mark.parametrize(
    "in_channels,image_size,channels,side",
    [(1, 28, (32, 64), 7), (3, 32, (8, 16), 8), (1, 28, (4, 8, 16), 3), (4, 28, (8,), 14)],
)
def test_shapes_and_flattened_size(in_channels: int, image_size: int, channels: tuple, side: int) -> None:
    net = ConvClassifier(in_channels, 7, channels, hidden=16, image_size=image_size)
    assert net.out_features == channels[-1] * side * side
    assert net.features(torch.randn(2, in_channels, image_size, image_size)).shape == (2, net.out_features)
    assert net(torch.randn(5, in_channels, image_size, image_size)).shape == (5, 7)


def test_layout_batch_norm_and_dropout() -> None:
    net = ConvClassifier(channels=(32, 64), hidden=128, batch_norm=True, dropout=0.5)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 32, (3, 3), (1, 1)),
        (32, 64, (3, 3), (1, 1)),
    ]
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 2
    assert [m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm2d)] == [32, 64]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64 * 7 * 7, 128), (128, 10)]
    x = torch.randn(8, 1, 28, 28)
    net.eval()
    torch.testing.assert_close(net(x), net(x))  # dropout and batch norm are deterministic in eval
    net.train()
    torch.manual_seed(0)
    a = net(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, net(x))  # dropout is active while training
    plain = ConvClassifier()
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout)) for m in plain.modules())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="too small"):
        ConvClassifier(image_size=3, channels=(8, 8))
    with pytest.raises(ValueError, match="dropout"):
        ConvClassifier(dropout=1.0)


def test_spec_rebuilds_the_same_network() -> None:
    from jsonargparse import ArgumentParser

    net = ConvClassifier(in_channels=3, num_classes=5, channels=[8, 16], hidden=32, image_size=32, dropout=0.1)
    spec = module_spec(net)
    assert spec == {
        "class_path": "lightning_ebm.nn.classifier.ConvClassifier",
        "init_args": {
            "in_channels": 3,
            "num_classes": 5,
            "channels": [8, 16],
            "hidden": 32,
            "image_size": 32,
            "activation": "relu",
            "batch_norm": False,
            "dropout": 0.1,
        },
    }
    parser = ArgumentParser()
    parser.add_argument("--net", type=nn.Module)
    rebuilt = parser.instantiate_classes(parser.parse_object({"net": spec})).net
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), net.eval()(x))


def test_fits_arbitrary_labels() -> None:
    """The logits are trainable end to end: 64 noise images with random labels are memorised."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    net = ConvClassifier(channels=(8, 16), hidden=64)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    assert float((net(x).argmax(1) == y).float().mean()) < 0.5
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert float((net(x).argmax(1) == y).float().mean()) == 1.0
