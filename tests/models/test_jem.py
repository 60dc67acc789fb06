"""JEM: the energies and the loss by hand, the SGLD chains and their replay buffer, the buffer in
checkpoints and under DDP, the divergence guard, calibration and OOD metrics, the shipped configs."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers.callbacks import LearningRateBlowUp
from helpers.data import real_mnist_dir
from helpers.ddp_cli import fit_two_processes
from torch import Tensor, nn

from lightning_ebm.callbacks import DivergenceGuard
from lightning_ebm.cli import CONFIG_DIR, main
from lightning_ebm.datamodules import Toy2DDataModule
from lightning_ebm.errors import UserError
from lightning_ebm.evaluation import (
    calibration_bins,
    expected_calibration_error,
    ood_auroc,
    ood_scores,
)
from lightning_ebm.models import JEM
from lightning_ebm.nn import MLP, Network, WideResNet
from lightning_ebm.optim import Schedule, spec
from lightning_ebm.samplers import ReplayBuffer

TESTS = Path(__file__).resolve().parents[1]


class Linear(Network):
    """``f(x) = W x + b``: logits computable by hand."""

    def __init__(self, in_features: int = 3, num_classes: int = 4) -> None:
        super().__init__()
        self.layer = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x.flatten(1))


class GaussianLogits(Network):
    """``f(x)[k] = -||x - m_k||^2 / (2 s^2)``: ``E(x, k)`` is a Gaussian's energy, so SGLD has a known target."""

    def __init__(self, means: list[list[float]], scale: float) -> None:
        super().__init__()
        self.means = nn.Parameter(torch.tensor(means))
        self.scale = scale
        self.modes: list[bool] = []  # training flag at each call

    def forward(self, x: Tensor) -> Tensor:
        self.modes.append(self.training)
        return -(x.unsqueeze(1) - self.means).pow(2).sum(-1) / (2 * self.scale**2)


def tiny_jem(**overrides) -> JEM:
    kwargs = dict(classifier=Linear(3, 4), num_classes=4, data_shape=[3], buffer_size=40, lr_schedule=None)
    kwargs.update(overrides)
    return JEM(**kwargs)


# ---------------------------------------------------------------------------- the energies and the loss
def test_energy_is_minus_logsumexp_of_the_logits_and_the_joint_energy_minus_one_logit() -> None:
    model = tiny_jem()
    x = torch.randn(5, 3)
    logits = x @ model.classifier.layer.weight.T + model.classifier.layer.bias
    by_hand = -torch.log(torch.exp(logits).sum(1))
    torch.testing.assert_close(model.energy(x), by_hand)
    y = torch.tensor([0, 3, 1, 1, 2])
    torch.testing.assert_close(model.energy(x, y), -logits[torch.arange(5), y])
    # p(y|x) = exp(-E(x, y)) / exp(-E(x)): the classifier's softmax
    torch.testing.assert_close(torch.exp(model.energy(x) - model.energy(x, y)), logits.softmax(1)[torch.arange(5), y])


def test_objective_is_weighted_cross_entropy_plus_the_energy_differences() -> None:
    model = tiny_jem(clf_weight=0.7, px_weight=1.3, pxy_weight=0.4, energy_l2=0.2)
    x, y = torch.randn(6, 3), torch.randint(0, 4, (6,))
    x_q, x_qy = torch.randn(6, 3), torch.randn(6, 3)
    f = lambda v: v @ model.classifier.layer.weight.T + model.classifier.layer.bias  # noqa: E731
    log_softmax = f(x) - torch.log(torch.exp(f(x)).sum(1, keepdim=True))
    cross_entropy = -log_softmax[torch.arange(6), y].mean()
    e = lambda v: -torch.log(torch.exp(f(v)).sum(1))  # noqa: E731
    e_y = lambda v: -f(v)[torch.arange(6), y]  # noqa: E731
    expected = (
        0.7 * cross_entropy
        + 1.3 * (e(x).mean() - e(x_q).mean())
        + 0.4 * (e_y(x).mean() - e_y(x_qy).mean())
        + 0.2 * (e(x).pow(2) + e(x_q).pow(2)).mean()
    )
    loss, logs = model.objective(x, y, x_q, x_qy)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logs["cross_entropy"], cross_entropy.detach())
    # the generative weight 0 is a plain classifier: the loss is the cross-entropy alone
    plain = tiny_jem(px_weight=0.0)
    plain.load_state_dict(model.state_dict())
    loss, _ = plain.objective(x, y)
    torch.testing.assert_close(loss, F.cross_entropy(f(x), y))


def test_a_training_step_updates_the_buffer_in_eval_mode_and_returns_to_train_mode() -> None:
    net = GaussianLogits([[0.0, 0.0], [1.0, 1.0]], 0.5)
    model = JEM(net, num_classes=2, data_shape=[2], buffer_size=10, lr_schedule=None, sgld_steps=3)
    model.train()
    before = model.replay_buffer.samples.clone()
    net.modes.clear()
    x = model.negative_samples(4)
    assert net.modes == [False] * 3  # every SGLD step with f in evaluation mode
    assert net.training  # and back in training mode afterwards
    changed = (model.replay_buffer.samples != before).any(1)
    assert 1 <= int(changed.sum()) <= 4  # the chains' ends were written where they were drawn
    assert any(torch.allclose(x[i], model.replay_buffer.samples[changed][0]) for i in range(4))


# ---------------------------------------------------------------------------- SGLD and the buffer
def test_sgld_with_a_langevin_step_and_noise_keeps_the_gaussian_of_its_energy() -> None:
    """With noise sqrt(2 a), x' = x - a (x - m)/s^2 + sqrt(2a) eps is the unadjusted Langevin chain of
    N(m, s^2), whose own stationary law is N(m, v) with v = s^2 / (1 - a / (2 s^2)) exactly."""
    mean, scale, step = torch.tensor([1.0, -2.0]), 0.8, 0.1
    net = GaussianLogits([mean.tolist(), mean.tolist()], scale)  # E(x) = ||x - m||^2/(2 s^2) - log 2
    model = JEM(net, num_classes=2, data_shape=[2], buffer_size=10, sgld_step_size=step, sgld_noise=math.sqrt(2 * step))
    v = scale**2 / (1 - step / (2 * scale**2))
    x0 = mean + math.sqrt(v) * torch.randn(20_000, 2)  # start in the stationary law: it must stay there
    x = model.langevin(x0, steps=50)
    assert torch.allclose(x.mean(0), mean, atol=4 * math.sqrt(v / 20_000))
    torch.testing.assert_close(x.var(0), torch.full((2,), v), rtol=0.04, atol=0)
    # class-conditional chains sample E(x, y) = ||x - m_y||^2 / (2 s^2): each its own class's mean
    net.means.data = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    y = torch.arange(2).repeat(2000)
    xy = model.langevin(torch.zeros(4000, 2), y, steps=200)
    assert torch.allclose(xy[y == 0].mean(0), torch.tensor([2.0, 0.0]), atol=0.06)
    assert torch.allclose(xy[y == 1].mean(0), torch.tensor([-2.0, 0.0]), atol=0.06)


def test_sgld_is_jems_update_x_plus_alpha_grad_log_p_plus_sigma_eps() -> None:
    net = GaussianLogits([[0.5, 0.5], [0.5, 0.5]], 1.0)
    model = JEM(net, num_classes=2, data_shape=[2], buffer_size=10, sgld_step_size=1.0, sgld_noise=0.01)
    x0 = torch.randn(8, 2)
    torch.manual_seed(1)
    x = model.langevin(x0, steps=1)
    torch.manual_seed(1)
    expected = x0 + 1.0 * (-(x0 - 0.5)) + 0.01 * torch.randn(8, 2)  # grad log p = -(x - m) / s^2
    torch.testing.assert_close(x, expected)


def test_projected_sgld_clamps_each_step_and_settles_on_the_nearest_point_of_the_box() -> None:
    """With ``sgld_clamp`` each step is ``clamp(x + alpha grad log p + sigma eps)`` onto ``init_range``;
    for ``E(x) = ||x - m||^2 / 2`` with ``m`` outside the box the chains settle at the box's point
    nearest ``m``, ``clamp(m)`` (the minimiser of a separable convex energy over a box)."""
    mean = [3.0, 0.25]
    net = GaussianLogits([mean, mean], 1.0)
    settings = dict(num_classes=2, data_shape=[2], buffer_size=10, sgld_step_size=0.5, sgld_noise=0.01)
    model = JEM(net, **settings, sgld_clamp=True)
    x0 = torch.rand(500, 2) * 2 - 1
    torch.manual_seed(2)
    x = model.langevin(x0, steps=1)
    torch.manual_seed(2)
    expected = (x0 - 0.5 * (x0 - torch.tensor(mean)) + 0.01 * torch.randn(500, 2)).clamp(-1.0, 1.0)
    torch.testing.assert_close(x, expected)
    x = model.langevin(x0, steps=60)
    assert x.min() >= -1.0 and x.max() <= 1.0
    torch.testing.assert_close(x.mean(0), torch.tensor([1.0, 0.25]), atol=0.01, rtol=0)
    # without the projection the same chains go to m itself, outside the data's range
    free = JEM(net, **settings)
    torch.testing.assert_close(free.langevin(x0, steps=60).mean(0), torch.tensor(mean), atol=0.01, rtol=0)


def test_with_sgld_clamp_the_noised_data_stay_in_the_box_like_the_chains() -> None:
    """Data at the box's faces (MNIST's background is exactly -1) plus N(0, 0.03^2) noise would leave
    it; the projection keeps data and chains on the same support."""
    seen: list[Tensor] = []
    for clamp in (True, False):
        model = tiny_jem(sgld_clamp=clamp, sgld_steps=2, data_noise=0.03)
        model.objective = lambda x, y, *rest, model=model: (seen.append(x), JEM.objective(model, x, y, *rest))[1]
        trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu")  # fmt: skip
        x = torch.full((64, 3), -1.0)
        trainer.fit(model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(64).long()), 64))
    clamped, free = seen
    assert clamped.min() >= -1.0 and (clamped > -1.0).float().mean() > 0.4  # noise above -1 kept, below cut
    assert (free < -1.0).float().mean() > 0.4  # the paper's recipe: half the noised background below -1


def test_buffer_restarts_a_fraction_rho_and_writes_back_where_it_drew() -> None:
    buffer = ReplayBuffer(1000, [3], reinit_prob=0.05, low=-1, high=1)
    buffer.samples.fill_(5.0)  # outside U(-1, 1): a restarted draw is recognisable
    n = 40_000
    x, idx = buffer.draw(n)
    restarted = (x.abs() <= 1).all(1)
    assert ((x == 5.0).all(1) | restarted).all()
    share = float(restarted.float().mean())
    assert abs(share - 0.05) < 4 * math.sqrt(0.05 * 0.95 / n)
    assert float(x[restarted].min()) >= -1 and float(x[restarted].max()) <= 1
    assert abs(float(x[restarted].mean())) < 0.02 and abs(float(x[restarted].var()) - 1 / 3) < 0.01  # U(-1, 1)
    assert idx.min() >= 0 and idx.max() < 1000 and idx.unique().numel() > 990  # uniform over the slots
    new = torch.randn(7, 3)
    slots = torch.tensor([3, 999, 0, 500, 42, 43, 7])
    buffer.write(slots, new)
    torch.testing.assert_close(buffer.samples[slots], new)
    assert (buffer.samples[torch.tensor([1, 2, 998])] == 5.0).all()


def test_class_conditional_draws_use_their_class_slots_only() -> None:
    buffer = ReplayBuffer(30, [2], reinit_prob=0.0, num_classes=3)
    buffer.samples = torch.arange(30, dtype=torch.float32).view(30, 1).repeat(1, 2)
    y = torch.tensor([0, 1, 2] * 200)
    x, idx = buffer.draw(600, y)
    assert torch.equal(buffer.labels(idx), y)
    assert torch.equal(x[:, 0].long() % 3, y)
    with pytest.raises(ValueError, match="multiple of num_classes"):
        ReplayBuffer(31, [2], num_classes=3)


def test_weighted_draws_resample_the_slots_by_their_class_probabilities() -> None:
    """Sampling-importance-resampling: for label y, slot i comes with probability softmax_i(log_weights[:, y])."""
    buffer = ReplayBuffer(4, [1], reinit_prob=0.0)  # no slot labels needed
    buffer.samples = torch.arange(4, dtype=torch.float32).view(4, 1)
    probs = torch.tensor([[0.7, 0.1], [0.2, 0.1], [0.1, 0.0], [0.0, 0.8]])  # p(y | x_i), one column per class
    log_weights = probs.clamp_min(1e-30).log()
    n = 40_000
    y = torch.tensor([0, 1]).repeat(n // 2)
    x, idx = buffer.draw(n, y, log_weights=log_weights)
    assert torch.equal(x[:, 0].long(), idx)
    for c in (0, 1):
        target = probs[:, c] / probs[:, c].sum()
        share = torch.bincount(idx[y == c], minlength=4).double() / (n // 2)
        assert (share - target).abs().max() < 4 * math.sqrt(0.25 / (n // 2)), (c, share, target)
    assert not (idx[y == 0] == 3).any() and not (idx[y == 1] == 2).any()  # weight 0: never drawn
    with pytest.raises(ValueError, match="need the labels"):
        buffer.draw(3, log_weights=log_weights)
    with pytest.raises(ValueError, match="log_weights shaped"):
        buffer.draw(3, torch.zeros(3), log_weights=log_weights[:3])


def test_conditional_samples_of_a_p_x_buffer_follow_p_x_given_y() -> None:
    """A buffer of exact samples of p(x) (two overlapping Gaussians, the classes) and no SGLD: the start
    states of sample(n, y) must follow p(x | y) = N(m_y, s^2 I) exactly, not the truncated
    distribution that grouping by predicted class gives. A p(x|y)-trained buffer keeps its class slots."""
    means, scale, size = torch.tensor([[0.5, 0.0], [-0.5, 0.0]]), 0.5, 40_000
    model = JEM(GaussianLogits(means.tolist(), scale), num_classes=2, data_shape=[2], buffer_size=size,
                reinit_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    component = torch.randint(0, 2, (size,))
    model.replay_buffer.samples = means[component] + scale * torch.randn(size, 2)  # x ~ p(x)
    for c in (0, 1):
        x = model.sample(20_000, y=c, steps=0)
        torch.testing.assert_close(x.mean(0), means[c], atol=0.03, rtol=0)
        torch.testing.assert_close(x.var(0), torch.full((2,), scale**2), atol=0.02, rtol=0)
    grouped = model.replay_buffer.samples[model.logits(model.replay_buffer.samples).argmax(1) == 0]
    # what grouping would give: x_1 given x_1 > 0, mean 0.583 and variance 0.160 in closed form
    assert float(grouped[:, 0].mean()) > 0.55 and float(grouped[:, 0].var()) < 0.19

    labelled = JEM(GaussianLogits(means.tolist(), scale), num_classes=2, data_shape=[2], buffer_size=10,
                   reinit_prob=0.0, pxy_weight=1.0)  # fmt: skip
    labelled.replay_buffer.samples = torch.arange(10, dtype=torch.float32).view(10, 1).repeat(1, 2)
    x = labelled.sample(200, y=1, steps=0)
    assert (x[:, 0].long() % 2 == 1).all()  # class 1's slots only


def test_a_restart_distribution_replaces_the_uniform_noise_for_fills_and_restarts() -> None:
    restart = lambda n, y: torch.full((n, 1), 7.0) if y is None else y.float().view(-1, 1)  # noqa: E731
    buffer = ReplayBuffer(10, [1], reinit_prob=1.0, num_classes=2, restart=restart)
    assert torch.equal(buffer.samples[:, 0], torch.arange(10.0) % 2)  # filled with each slot's class
    y = torch.tensor([1, 0, 1])
    assert torch.equal(buffer.draw(3, y)[0][:, 0], y.float())  # restarted within the requested class
    assert (buffer.draw(4)[0] == 7.0).all()


def test_class_gaussian_restarts_are_fitted_on_the_training_set_and_kept_in_the_checkpoint(tmp_path: Path) -> None:
    """JEM++'s restart distribution: per-class mean, standard deviation and frequency of the training
    set, fitted once at the start of training, restored (not refitted) on resume."""

    def jem() -> JEM:
        return JEM(MLP(2, [32], 8), num_classes=8, data_shape=[2], buffer_size=80, lr_schedule=None,
                   init_range=(-4.0, 4.0), reinit_from="class_gaussian")  # fmt: skip

    def trainer(steps: int) -> L.Trainer:
        return L.Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")  # fmt: skip

    dm = Toy2DDataModule("8gaussians", num_samples=2048, batch_size=128, labels=True)
    model = jem()
    trainer(2).fit(model, datamodule=dm)
    x, y = dm.train_data, dm.train_labels
    for c in range(8):
        torch.testing.assert_close(model.restart_mean[c], x[y == c].mean(0), atol=1e-5, rtol=0)
        torch.testing.assert_close(model.restart_std[c], x[y == c].std(0, unbiased=False), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.restart_class_prob, torch.bincount(y, minlength=8) / len(y))
    torch.manual_seed(0)
    states = model.restart_states(40_000, torch.full((40_000,), 3))
    torch.testing.assert_close(states.mean(0), model.restart_mean[3], atol=0.01, rtol=0)
    torch.testing.assert_close(states.std(0), model.restart_std[3], atol=0.01, rtol=0)
    restarted, _ = model.replay_buffer.draw(40_000, reinit_prob=1.0)  # unconditional: the class mixture
    torch.testing.assert_close(restarted.mean(0), x.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(restarted.var(0), x.var(0), atol=0.1, rtol=0)

    path = tmp_path / "run.ckpt"
    trainer(2).fit(model, datamodule=dm)  # a second fit keeps the fitted Gaussians
    run = trainer(2)
    run.fit(model, datamodule=dm)
    run.save_checkpoint(path)
    loaded = JEM.load_from_checkpoint(path)
    torch.testing.assert_close(loaded.restart_mean, model.restart_mean)
    other = Toy2DDataModule("8gaussians", num_samples=2048, batch_size=128, labels=True, seed=1)
    trainer(4).fit(loaded, datamodule=other, ckpt_path=path)  # resumed: not refitted on other data
    torch.testing.assert_close(loaded.restart_mean, model.restart_mean)
    torch.testing.assert_close(loaded.restart_std, model.restart_std)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=128)
    with pytest.raises(UserError, match="class_gaussian"):
        trainer(1).fit(jem(), train_dataloaders=data)
    with pytest.raises(ValueError, match="reinit_from"):
        JEM(MLP(2, [32], 8), num_classes=8, data_shape=[2], reinit_from="gaussian")


def test_sample_is_conditional_and_leaves_the_buffer_alone() -> None:
    net = GaussianLogits([[2.0, 0.0], [-2.0, 0.0]], 0.3)
    model = JEM(net, num_classes=2, data_shape=[2], buffer_size=100, sgld_step_size=0.01, sgld_noise=math.sqrt(0.02))
    before = model.replay_buffer.samples.clone()
    x = model.sample(400, y=1, steps=300)
    assert torch.equal(model.replay_buffer.samples, before)
    assert torch.allclose(x.mean(0), torch.tensor([-2.0, 0.0]), atol=0.1)
    fresh = model.sample(5, y=[0, 1, 0, 1, 0], steps=0, from_buffer=False)
    assert fresh.shape == (5, 2) and float(fresh.abs().max()) <= 1.0
    with pytest.raises(ValueError, match="labels must be"):
        model.sample(2, y=2)


# ---------------------------------------------------------------------------- schedule and networks
def test_warmup_and_step_decay_by_hand() -> None:
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = Schedule(optimizer, warmup_steps=4, milestones=[2, 3], gamma=0.3)
    assert [schedule.factor(k) for k in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    schedule.set_epoch(2)
    assert schedule.factor(10) == pytest.approx(0.3)
    schedule.set_epoch(5)
    assert schedule.factor(10) == pytest.approx(0.09)


def test_wide_resnet_28_10_has_the_published_size() -> None:
    """WRN-28-10 has 36.5M parameters (Zagoruyko & Komodakis 2016, Table 1)."""
    net = WideResNet(28, 10, 10)
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 1) == 36.5
    small = WideResNet(10, 2, 7, in_channels=1, norm="group", dropout=0.3)
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(27, 1)


def test_wide_resnet_downsampling_in_the_second_convolution() -> None:
    """Same parameters either way; striding the second convolution runs the first at full resolution:
    WRN-10-2 on 32 x 32 then costs 72.8M multiply-adds per image instead of 44.5M (counted by hand:
    the first convolutions of the second and third groups, 32->64 and 64->128 channels, 3 x 3, at
    32 x 32 and 16 x 16 instead of 16 x 16 and 8 x 8, add 3 * 18,874,368 / 4 each)."""
    torch.manual_seed(0)
    first, second = WideResNet(10, 2), WideResNet(10, 2, downsample="second")
    assert [p.shape for p in first.parameters()] == [p.shape for p in second.parameters()]
    sizes = []
    hooks = [m.conv1.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for m in second.features[1:4]]
    assert second(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert sizes == [32, 32, 16]  # the first convolution keeps its input's resolution
    for h in hooks:
        h.remove()

    def macs(net: nn.Module) -> int:
        total = []
        hooks = [
            m.register_forward_hook(lambda m, i, o: total.append(o[0].numel() * m.weight[0].numel()))
            for m in net.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
        ]
        net(torch.zeros(1, 3, 32, 32))
        for h in hooks:
            h.remove()
        return sum(total)

    assert macs(second) - macs(first) == 2 * 3 * 18_874_368 // 4
    with pytest.raises(ValueError, match="downsample"):
        WideResNet(10, 2, downsample="middle")


def test_wide_resnet_channels_last_is_the_same_function() -> None:
    """The channels-last layout (the default, for speed) changes neither the logits nor the input
    gradients that SGLD follows beyond float rounding, and survives loading weights."""
    torch.manual_seed(0)
    plain = WideResNet(10, 2, channels_last=False)
    fast = WideResNet(10, 2)
    fast.load_state_dict(plain.state_dict())
    conv = fast.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = (torch.rand(8, 3, 32, 32) * 2 - 1).requires_grad_(True)
    grads = []
    for net in (plain, fast):
        logits = net(x)
        grads.append(torch.autograd.grad(torch.logsumexp(logits, 1).sum(), x)[0])
        assert grads[-1].shape == x.shape
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    assert grads[0].abs().max() > 1e-4  # a gradient worth comparing


# ---------------------------------------------------------------------------- the buffer in checkpoints
def toy_data(**overrides) -> Toy2DDataModule:
    kwargs = dict(name="8gaussians", num_samples=512, batch_size=64, labels=True, num_val_samples=128)
    kwargs.update(overrides)
    return Toy2DDataModule(**kwargs)


def toy_jem() -> JEM:
    return JEM(
        MLP(2, [16], 8, activation="leaky_relu"), num_classes=8, data_shape=[2], buffer_size=80,
        optimizer=spec("torch.optim.Adam", lr=1e-3), lr_schedule=spec("lightning_ebm.optim.Schedule", warmup_steps=3),
        sgld_steps=3, sgld_step_size=0.05, sgld_noise=0.05, init_range=[-2, 2],
    )  # fmt: skip


def toy_trainer(root: Path, epochs: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs, default_root_dir=root, logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu", **kwargs,
    )  # fmt: skip


def test_buffer_is_in_the_checkpoint_and_a_resumed_fit_continues_the_uninterrupted_run(tmp_path: Path) -> None:
    """Killed in the middle of its second epoch (8 batches an epoch) and resumed from the checkpoint,
    the run ends where the uninterrupted one ends: same parameters, same replay buffer."""

    def fit(max_steps: int, ckpt: Path | None = None, save: Path | None = None, seed: int = 0) -> JEM:
        L.seed_everything(seed)
        model = toy_jem()
        trainer = toy_trainer(tmp_path, -1, max_steps=max_steps, enable_checkpointing=False)
        trainer.fit(model, toy_data(), ckpt_path=ckpt)
        if save:
            trainer.save_checkpoint(save)
        return model

    straight = fit(20)
    ckpt = tmp_path / "killed.ckpt"
    first = fit(11, save=ckpt)
    saved = torch.load(ckpt, weights_only=True)["per_rank_state"]["replay_buffer"]
    assert saved.shape == (1, 80, 2)
    torch.testing.assert_close(saved[0], first.replay_buffer.samples, rtol=0, atol=0)

    loaded = JEM.load_from_checkpoint(ckpt)  # the path alone
    torch.testing.assert_close(loaded.replay_buffer.samples, first.replay_buffer.samples, rtol=0, atol=0)
    assert loaded.sample(3).shape == (3, 2)

    resumed = fit(20, ckpt=ckpt, seed=123)  # the checkpoint's random states, not this seed, drive the run
    assert not torch.equal(resumed.replay_buffer.samples, first.replay_buffer.samples)
    torch.testing.assert_close(resumed.replay_buffer.samples, straight.replay_buffer.samples, rtol=0, atol=0)
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)


# ---------------------------------------------------------------------------- the divergence guard
class InjectNaN(L.Callback):
    """Test-only hook: poison a parameter with NaN after the training steps in ``steps``."""

    def __init__(self, steps: range) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step in self.steps:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


def test_guard_recovers_from_a_forced_divergence_and_training_finishes_finite(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = toy_jem()
    guard = DivergenceGuard(every_n_steps=4, max_loss=1e3, max_energy=1e3, lr_factor=0.5)
    trainer = toy_trainer(tmp_path, 3, callbacks=[LearningRateBlowUp(range(10, 13)), guard], enable_checkpointing=False)
    with pytest.warns(RuntimeWarning, match="DivergenceGuard: .* rolled back to the state of step"):
        trainer.fit(model, toy_data())
    assert guard.recoveries >= 1 and trainer.global_step == 3 * 8
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model.replay_buffer.samples).all()
    assert trainer.optimizers[0].param_groups[0]["lr"] < 1e-3  # lowered by lr_factor, and not 1e6 times larger
    assert "rolled back" in guard.events[0]
    # the run is healthy afterwards: the loss is of a classifier's size
    assert abs(float(model.guard_metrics["loss"])) < 50


def test_guard_rollback_is_exact() -> None:
    """The restored state is bit-for-bit the snapshot: parameters, Adam's moments, the scheduler, the buffer."""
    L.seed_everything(0)
    model = toy_jem()
    trainer = toy_trainer(Path("."), 1, enable_checkpointing=False, limit_train_batches=3)
    trainer.fit(model, toy_data())
    guard = DivergenceGuard()
    guard.snapshot(trainer, model)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: v.clone() for k, v in trainer.optimizers[0].state[next(model.parameters())].items()}
    buffer = model.replay_buffer.samples.clone()
    last_epoch = trainer.lr_scheduler_configs[0].scheduler.last_epoch
    for _ in range(2):  # the snapshot must survive being restored twice
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        trainer.optimizers[0].state[next(model.parameters())]["exp_avg"].add_(3.0)
        model.replay_buffer.samples.add_(7.0)
        trainer.lr_scheduler_configs[0].scheduler.step()
        guard.restore(trainer, model)
        for k, v in model.state_dict().items():
            assert torch.equal(v, params[k])
        for k, v in trainer.optimizers[0].state[next(model.parameters())].items():
            assert torch.equal(v, moments[k])
        assert torch.equal(model.replay_buffer.samples, buffer)
        assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == last_epoch


def test_guard_gives_up_with_a_clear_error_after_its_attempts(tmp_path: Path) -> None:
    L.seed_everything(0)
    guard = DivergenceGuard(every_n_steps=100, max_attempts=3, lr_factor=0.5)
    trainer = toy_trainer(tmp_path, 2, callbacks=[InjectNaN(range(2, 1000)), guard], enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match="3 rollbacks to the good state of step 0 with new seeds did not help"):
            trainer.fit(toy_jem(), toy_data())
    assert guard.recoveries == 3
    assert "some parameters are not finite" in guard.events[0]
    # the learning rate is the good state's times 0.5, 0.25, 0.125: it compounds over the attempts
    assert [e.split("learning rates ")[1].split()[0] for e in guard.events] == ["x0.5", "x0.25", "x0.125"]


def test_guard_reads_the_returned_loss_of_automatically_optimised_modules() -> None:
    class Returns(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

    module = Returns()
    guard = DivergenceGuard(max_loss=10.0, check_parameters=False)
    assert guard.check(module, {"loss": torch.tensor(3.0)}) is None
    assert "exceeds 10" in guard.check(module, {"loss": torch.tensor(-30.0)})
    assert "not finite" in guard.check(module, torch.tensor(float("nan")))
    module.guard_metrics = {"loss": torch.tensor(1.0), "energy_samples": torch.tensor(5e9)}
    assert "energies exceed" in DivergenceGuard().check(module)
    # healthy, but within the snapshot margin of a threshold: not a state to keep as the good one
    guard = DivergenceGuard(max_energy=1000.0, snapshot_margin=0.1)
    module.guard_metrics = {"loss": torch.tensor(1.0), "energy_samples": torch.tensor(500.0)}
    assert guard.check(module) is None and guard.near_limits
    module.guard_metrics = {"loss": torch.tensor(1.0), "energy_samples": torch.tensor(50.0)}
    assert guard.check(module) is None and not guard.near_limits


# ---------------------------------------------------------------------------- calibration and OOD by hand
def test_ece_by_hand() -> None:
    """Confidences .91 (right), .83 (right), .58 (wrong), .55 (right). Two bins (0, .5], (.5, 1]: all
    in the second, accuracy 3/4, mean confidence .7175: ECE = .0325. Ten bins: |1 - .91| and |1 - .83|
    with weight 1/4 each, and (.5, .6] holding .58 and .55 with accuracy 1/2 and confidence .565,
    weight 1/2: ECE = .0225 + .0425 + .0325 = .0975."""
    probabilities = torch.tensor([[0.91, 0.09], [0.17, 0.83], [0.58, 0.42], [0.45, 0.55]])
    labels = torch.tensor([0, 1, 1, 1])
    assert expected_calibration_error(probabilities, labels, num_bins=2) == pytest.approx(0.0325)
    assert expected_calibration_error(probabilities, labels, num_bins=10) == pytest.approx(0.0975)
    bins = calibration_bins(probabilities, labels, num_bins=10)
    assert bins["count"].tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 1, 1]
    assert bins["accuracy"][5] == pytest.approx(0.5) and bins["confidence"][5] == pytest.approx(0.565)
    # a perfectly calibrated population: confidence .75 everywhere and 3 of 4 right
    p = torch.tensor([[0.75, 0.25]]).repeat(400, 1)
    y = torch.tensor([0, 0, 0, 1]).repeat(100)
    assert expected_calibration_error(p, y, num_bins=15) == pytest.approx(0.0, abs=1e-12)


def test_ood_auroc_and_scores_by_hand() -> None:
    # in-distribution (positives) 3, 2; outside 1, 2.5: of the 4 pairs, 3 ordered right
    assert ood_auroc(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 2.5])) == pytest.approx(0.75)
    net = GaussianLogits([[0.0, 0.0], [0.0, 0.0]], 1.0)  # log p(x) = -||x||^2 / 2 + const
    model = JEM(net, num_classes=2, data_shape=[2], buffer_size=10)
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    torch.testing.assert_close(
        ood_scores(model.energy, model.logits, x, "log_px"), torch.tensor([math.log(2), math.log(2) - 12.5])
    )
    torch.testing.assert_close(ood_scores(model.energy, model.logits, x, "max_prob"), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(ood_scores(model.energy, model.logits, x, "neg_grad_norm"), torch.tensor([0.0, -5.0]))


# ---------------------------------------------------------------------------- labelled toys
def test_labelled_toy_yields_the_mixture_component_and_is_off_by_default() -> None:
    dm = toy_data(name="25gaussians", num_samples=2500)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert dm.num_classes == 25 and y.dtype == torch.int64
    distances = torch.cdist(x, dm.centres)
    assert torch.equal(y, distances.argmin(1))
    assert (distances.gather(1, y.view(-1, 1)) < 4 * dm.std).all()  # each point is near its own centre
    plain = Toy2DDataModule("25gaussians", num_samples=2500, batch_size=64)
    plain.setup()
    assert isinstance(next(iter(plain.train_dataloader())), Tensor)
    with pytest.raises(UserError, match="Gaussian mixture"):
        Toy2DDataModule("swissroll", labels=True)


# ---------------------------------------------------------------------------- the configs through the CLI
def test_paper_settings_in_jem_cifar_yaml() -> None:
    cfg = yaml.safe_load((CONFIG_DIR / "jem_cifar.yaml").read_text())
    model = cfg["model"]["init_args"]
    assert model["classifier"]["init_args"] == {
        "depth": 28, "widen_factor": 10, "num_classes": 10, "in_channels": 3, "norm": None, "dropout": 0.0,
        "leaky_slope": 0.2,
    }  # fmt: skip
    assert model["optimizer"] == {
        "class_path": "torch.optim.Adam", "init_args": {"lr": 1e-4, "betas": [0.9, 0.999], "weight_decay": 0.0},
    }  # fmt: skip
    schedule = {"warmup_steps": 1000, "milestones": [160, 180], "gamma": 0.3}
    assert model["lr_schedule"] == {"class_path": "lightning_ebm.optim.Schedule", "init_args": schedule}
    assert (model["sgld_steps"], model["sgld_step_size"], model["sgld_noise"]) == (20, 1.0, 0.01)
    assert (model["buffer_size"], model["reinit_prob"], model["init_range"], model["data_noise"]) == (
        10000,
        0.05,
        [-1.0, 1.0],
        0.03,
    )
    assert cfg["data"]["init_args"]["batch_size"] == 64 and cfg["data"]["init_args"]["val_size"] == 5000
    assert cfg["trainer"]["max_epochs"] == 200


def test_jem_toy_yaml_trains_through_the_cli(tmp_path: Path) -> None:
    args = [
        "fit", "--config", "jem_toy", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4",
        "--trainer.limit_val_batches", "2", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--data.num_samples", "2000", "--model.init_args.buffer_size", "400",
    ]  # fmt: skip
    assert main(args) == 0
    run = tmp_path / "jem_toy" / "version_0"
    plots = sorted(p.name.split("_step")[0] for p in (run / "plots").glob("*.png"))
    assert {"val_reliability", "samples", "conditional_samples"} <= set(plots)
    model = JEM.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert model.replay_buffer.samples.shape == (400, 2)
    assert model.sample(5, y=[0, 1, 2, 3, 4]).shape == (5, 2)
    events = (run / "events.out.tfevents").parent.glob("events.out.tfevents*")
    assert list(events)


def test_jem_mnist_yaml_on_the_real_mnist_test_split(tmp_path: Path) -> None:
    data_dir = real_mnist_dir(tmp_path / "data")
    args = [
        "fit", "--config", "jem_mnist", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--data.data_dir", str(data_dir),
        "--data.source", "test-split", "--data.val_size", "1000", "--model.init_args.sgld_steps", "2",
        "--model.init_args.buffer_size", "200",
    ]  # fmt: skip
    assert main(args) == 0
    ckpt = tmp_path / "jem_mnist" / "version_0" / "checkpoints" / "last.ckpt"
    model = JEM.load_from_checkpoint(ckpt)
    assert model.replay_buffer.samples.shape == (200, 1, 28, 28)
    # the config's JEM++ restarts: class Gaussians fitted on the 7,000 training images, kept in the checkpoint
    assert model.hparams.reinit_from == "class_gaussian"
    torch.testing.assert_close(model.restart_class_prob.sum(), torch.tensor(1.0))
    assert model.restart_class_prob.min() > 0.08 and float(model.restart_mean.min()) == -1.0  # MNIST's border
    assert model.sample(2, y=[3, 7], steps=2).shape == (2, 1, 28, 28)


def test_jem_toy_under_two_process_ddp_keeps_per_rank_buffers(tmp_path: Path) -> None:
    params, metrics = fit_two_processes(
        tmp_path, "jem_toy",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2",
        "--trainer.check_val_every_n_epoch", "1",
        "--data.num_samples", "2048", "--model.init_args.buffer_size", "160",
    )  # fmt: skip
    assert params[0]["_world_size"] == 2 and params[0] == params[1]
    assert metrics[0] == metrics[1] and "val/calibration/ece" in metrics[0] and "val/ood/log_px/auroc" in metrics[0]
    state = torch.load(tmp_path / "jem_toy" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    buffers = state["per_rank_state"]["replay_buffer"]
    assert buffers.shape == (2, 160, 2)
    assert not torch.equal(buffers[0], buffers[1])  # each rank its own chains


def test_class_gaussian_restarts_under_two_process_ddp_are_fitted_on_the_whole_training_set(tmp_path: Path) -> None:
    """Each process sees its shard; the sums are reduced, so both hold the whole set's Gaussians."""
    params, _ = fit_two_processes(
        tmp_path, "jem_toy",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0",
        "--data.num_samples", "2048", "--model.init_args.buffer_size", "160",
        "--model.init_args.reinit_from", "class_gaussian",
    )  # fmt: skip
    assert params[0]["_world_size"] == 2 and params[0] == params[1]
    state = torch.load(tmp_path / "jem_toy" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    dm = Toy2DDataModule("8gaussians", num_samples=2048, labels=True)
    dm.setup("fit")
    x, y = dm.train_data, dm.train_labels
    means = torch.stack([x[y == c].mean(0) for c in range(8)])
    torch.testing.assert_close(state["state_dict"]["restart_mean"], means, atol=1e-4, rtol=0)
    torch.testing.assert_close(state["state_dict"]["restart_class_prob"], torch.bincount(y, minlength=8) / len(y))


# ---------------------------------------------------------------------------- the issue's targets (slow)
@pytest.mark.slow
@pytest.mark.timeout(6000)  # the benchmark trains ~60 min at one thread, over the suite's 900 s limit
def test_jem_on_real_mnist_meets_the_issue_targets(tmp_path: Path) -> None:
    """benchmarks/jem_mnist.py with its default recipe (8k training / 2k held-out images of the real
    test split, 100 epochs, projected SGLD, per-class Gaussian restarts, no energy regulariser; one
    thread, ~60-65 min), run as a program: >= 97 % held-out accuracy; calibrated at least as well as the
    same net trained as a plain classifier (the paired bootstrap's 95 % interval of the ECE difference
    reaches 0 or below: on three seeds the difference was a tie, -0.5 to +0.6 points, not a clear win)
    and well calibrated in absolute terms (ECE below 2 %); buffer samples and fresh chains far below
    uniform noise in energy; conditional samples classified as their class."""
    import json
    import subprocess
    import sys

    data_dir = real_mnist_dir(tmp_path) / "MNIST" / "raw"
    out = tmp_path / "results.json"
    script = TESTS.parent / "benchmarks" / "jem_mnist.py"
    cmd = [sys.executable, str(script), "--data-dir", str(data_dir), "--threads", "1", "--out", str(out)]
    subprocess.run(cmd, check=True, timeout=5900)
    results = json.loads(out.read_text())
    jem, energy = results["jem"], results["energy"]
    failures = []
    if jem["accuracy"] < 0.97:
        failures.append(f"held-out accuracy {jem['accuracy']:.4f} < 0.97")
    low, high = results["ece_difference"]["bootstrap_95"]
    if low > 0:
        failures.append(f"ECE significantly worse than the plain net's (difference's 95% interval [{low}, {high}])")
    if jem["ece"] >= 0.02:
        failures.append(f"ECE {jem['ece']:.4f} >= 2%")
    noise = energy["uniform_noise"]
    for name in ("buffer_samples", "fresh_chains_100_steps"):
        if not energy[name] < noise - 10:
            failures.append(f"{name} energy {energy[name]:.2f} not 10 below uniform noise's {noise:.2f}")
    if results["conditional"]["classified_as_requested_by_jem"] < 0.9:
        failures.append(f"conditional samples {results['conditional']['classified_as_requested_by_jem']:.3f} < 0.9")
    assert not failures, "; ".join(failures)
