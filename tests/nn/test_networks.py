"""Networks: shapes, the product-of-experts energy (Eq. 11) and the batch-norm entropy (Eq. 15)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

from lightning_ebm.nn import (
    MLP,
    DCGANFeatureNet,
    DCGANGenerator,
    ProductOfExpertsEnergy,
    batchnorm_entropy,
    module_spec,
)


def test_mlp_shapes_and_out_shape() -> None:
    net = MLP(10, [16, 16], 784, batch_norm=True, out_shape=[1, 28, 28], output_activation="sigmoid")
    out = net(torch.randn(5, 10))
    assert out.shape == (5, 1, 28, 28)
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    with pytest.raises(ValueError, match="does not hold"):
        MLP(2, [4], 3, out_shape=[2, 2])
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(2, [4], 3, activation="relu6")


@pytest.mark.parametrize("size,layers", [(32, 3), (64, 4)])
def test_dcgan_pair_shapes(size: int, layers: int) -> None:
    gen = DCGANGenerator(latent_dim=8, out_channels=3, base_channels=8, image_size=size)
    feat = DCGANFeatureNet(in_channels=3, base_channels=8, image_size=size)
    x = gen(torch.rand(4, 8) * 2 - 1)
    assert x.shape == (4, 3, size, size)
    assert float(x.abs().max()) <= 1
    f = feat(x)
    assert f.shape == (4, 8 * 2 ** (layers - 1) * 16) == (4, feat.out_features)
    convs = [m for m in feat.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8 * 2**i for i in range(layers)]
    assert all(c.kernel_size == (5, 5) and c.stride == (2, 2) for c in convs)


def test_paper_dcgan_maps() -> None:
    """Kim & Bengio 2016, CelebA/LSUN: 5x5 filters, 128-256-512-1024 maps, mirrored in the generator."""
    feat = DCGANFeatureNet(3, 128, 64)
    gen = DCGANGenerator(100, 3, 128, 64)
    assert [m.out_channels for m in feat.modules() if isinstance(m, nn.Conv2d)] == [128, 256, 512, 1024]
    deconvs = [m for m in gen.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [m.in_channels for m in deconvs] == [1024, 512, 256, 128]
    with pytest.raises(ValueError, match="image_size"):
        DCGANFeatureNet(3, 8, 48)


def test_product_of_experts_energy_by_hand() -> None:
    """E(x) = ||x||^2/sigma^2 - b^T x - sum_i softplus(w_i^T f(x) + c_i), computed term by term."""
    feature = nn.Linear(2, 3)
    energy = ProductOfExpertsEnergy(feature, [2], num_experts=2, sigma=0.5)
    with torch.no_grad():
        feature.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        feature.bias.copy_(torch.tensor([0.0, 0.5, -1.0]))
        energy.experts.weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, 0.0]]))
        energy.experts.bias.copy_(torch.tensor([0.1, -0.2]))
        energy.visible_bias.copy_(torch.tensor([0.3, -0.4]))
    x = torch.tensor([[1.0, 2.0], [-0.5, 0.0]])
    expected = []
    for x1, x2 in x.tolist():
        f = [x1, x2 + 0.5, x1 + x2 - 1.0]
        a1 = 1.0 * f[0] - 1.0 * f[1] + 0.5 * f[2] + 0.1
        a2 = 2.0 * f[1] - 0.2
        softplus = math.log1p(math.exp(a1)) + math.log1p(math.exp(a2))
        expected.append((x1**2 + x2**2) / 0.25 - (0.3 * x1 - 0.4 * x2) - softplus)
    torch.testing.assert_close(energy(x), torch.tensor(expected))


def test_energy_is_integrable_far_from_data() -> None:
    """With bounded features the quadratic term dominates: E grows like ||x||^2/sigma^2."""
    energy = ProductOfExpertsEnergy(MLP(2, [16], 16, output_activation="tanh"), [2], 4, sigma=1.0)
    far = torch.tensor([[100.0, 0.0], [0.0, -300.0]])
    ratio = energy(far) / far.pow(2).sum(1)
    torch.testing.assert_close(ratio, torch.ones(2), atol=0.05, rtol=0)


def test_learned_sigma_is_a_parameter() -> None:
    fixed = ProductOfExpertsEnergy(nn.Linear(2, 2), [2], 1, sigma=2.0)
    learned = ProductOfExpertsEnergy(nn.Linear(2, 2), [2], 1, sigma=2.0, learn_sigma=True)
    assert "log_sigma" not in dict(fixed.named_parameters())
    assert "log_sigma" in dict(learned.named_parameters())
    torch.testing.assert_close(fixed.sigma, torch.tensor(2.0))


def test_batchnorm_entropy_is_the_gaussian_entropy_of_its_scales() -> None:
    net = MLP(4, [3, 5], 2, batch_norm=True)
    gammas = torch.tensor([0.5, 1.0, 2.0, 0.1, 3.0, 1.5, 0.7, 1.2])
    with torch.no_grad():
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
        bns[0].weight.copy_(gammas[:3])
        bns[1].weight.copy_(gammas[3:])
    expected = sum(stats.norm(scale=float(g)).entropy() for g in gammas)
    torch.testing.assert_close(batchnorm_entropy(net), torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(batchnorm_entropy(net, "mean"), torch.tensor(expected / 8, dtype=torch.float32))
    # d/d gamma of 1/2 log(2 pi e gamma^2) is 1/gamma: maximising it grows every scale.
    batchnorm_entropy(net).backward()
    torch.testing.assert_close(bns[0].weight.grad, 1 / gammas[:3])
    with pytest.raises(ValueError, match="no affine batch-norm"):
        batchnorm_entropy(MLP(2, [3], 2))


def test_batchnorm_units_are_gaussian_with_scale_gamma() -> None:
    """The premise of Eq. 15: after batch norm a unit has std gamma (Gaussian entropy 1/2 log(2 pi e gamma^2))."""
    bn = nn.BatchNorm1d(1)
    with torch.no_grad():
        bn.weight.fill_(2.5)
        bn.bias.fill_(-1.0)
    out = bn(torch.randn(200_000, 1) * 7 + 3)
    assert abs(float(out.std()) - 2.5) < 0.01 and abs(float(out.mean()) + 1.0) < 0.01


def test_network_spec_rebuilds_the_same_network() -> None:
    from jsonargparse import ArgumentParser

    net = DCGANGenerator(latent_dim=6, out_channels=1, base_channels=4, image_size=32, noise_std=0.01)
    spec = module_spec(net)
    assert spec == {
        "class_path": "lightning_ebm.nn.dcgan.DCGANGenerator",
        "init_args": {
            "latent_dim": 6,
            "out_channels": 1,
            "base_channels": 4,
            "image_size": 32,
            "output_activation": "tanh",
            "noise_std": 0.01,
        },
    }
    parser = ArgumentParser()
    parser.add_argument("--net", type=nn.Module)
    rebuilt = parser.instantiate_classes(parser.parse_object({"net": spec})).net
    assert [tuple(p.shape) for p in rebuilt.parameters()] == [tuple(p.shape) for p in net.parameters()]
    assert module_spec(nn.Linear(2, 2)) is None
