"""RBM: the model against enumeration, the CD/PCD update against its closed form, the Gibbs sampler
against the exact distribution, and persistent chains through checkpoints."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from helpers.boltzmann import BARS_AND_STRIPES, StopAfter, TensorData, all_states, empirical_distribution, trainer

from lightning_ebm.evaluation import exact_log_partition
from lightning_ebm.models import RBM
from lightning_ebm.optim import spec


def random_rbm(n_visible: int, n_hidden: int, scale: float = 1.0, **kwargs) -> RBM:
    rbm = RBM(n_visible, n_hidden, init_std=scale, **kwargs)
    with torch.no_grad():
        rbm.layer.visible_bias.normal_(0, scale)
        rbm.layer.hidden_bias.normal_(0, scale)
    return rbm.double()


def sgd(lr: float = 0.1, momentum: float = 0.5, weight_decay: float = 2e-4) -> dict:
    """Hinton's SGD with these settings (weight decay on ``W`` only)."""
    return spec("torch.optim.SGD", lr=lr, momentum=momentum, weight_decay=weight_decay)


def schedule(**kwargs) -> dict:
    """The recipe's momentum schedule (0.9 after 5 epochs) with ``kwargs``."""
    return spec("lightning_ebm.optim.Schedule", **{"final_momentum": 0.9, "momentum_epochs": 5, **kwargs})


def exact_visible_distribution(rbm: RBM) -> torch.Tensor:
    v = all_states(rbm.hparams.n_visible)
    return torch.softmax(-rbm.layer.free_energy(v.to(rbm.layer.W)).double(), 0)


def test_gibbs_chains_reach_the_exact_distribution() -> None:
    rbm = random_rbm(4, 3, scale=0.8).float()
    samples = rbm.sample(40_000, num_steps=50)
    total_variation = 0.5 * (empirical_distribution(samples) - exact_visible_distribution(rbm)).abs().sum()
    assert total_variation < 0.02


def test_sample_shapes_and_starts() -> None:
    rbm = RBM(12, 5, data_shape=[1, 3, 4])
    assert rbm.sample(7, num_steps=2).shape == (7, 1, 3, 4)
    assert rbm.sample(3, num_steps=0, start=torch.ones(3, 1, 3, 4)).eq(1).all()
    rbm.cd.set_chains(torch.zeros(2, 12))
    assert rbm.sample(4, num_steps=0, start="chains").shape == (4, 1, 3, 4)
    g = RBM(3, 2, visible="gaussian", sample_mean=True)
    assert g.sample(5, num_steps=3).dtype == torch.float32
    with pytest.raises(ValueError, match="n_visible"):
        RBM(10, 2, data_shape=[3, 3])
    with pytest.raises(ValueError, match="method must be one of 'cd', 'pcd'"):
        RBM(4, 2, method="pdc")


# ---------------------------------------------------------------------- training on known data
def exact_mean_log_likelihood(rbm: RBM, data: torch.Tensor) -> float:
    with torch.no_grad():
        return float(-rbm.energy(data).double().mean() - exact_log_partition(rbm))


@pytest.mark.parametrize(
    "settings",
    [
        dict(method="cd", k=5, optimizer=sgd(lr=0.1)),
        dict(method="pcd", k=1, optimizer=sgd(lr=0.05), lr_schedule=schedule(linear_decay_start=0.0)),
    ],
    ids=["cd5", "pcd1"],
)
def test_learns_bars_and_stripes(settings: dict) -> None:
    """The exact log-likelihood of the 14 patterns rises from chance (9 log 1/2 = -6.24) towards
    its maximum, log 1/14 = -2.64. (PCD wants a decaying learning rate: with a constant one and
    momentum 0.9 its chains and parameters oscillate on this multimodal set.)"""
    L.seed_everything(0)
    data = BARS_AND_STRIPES.repeat(64, 1)
    rbm = RBM(9, 12, num_filters=0, **settings)
    before = exact_mean_log_likelihood(rbm, BARS_AND_STRIPES)
    trainer(60).fit(rbm, datamodule=TensorData(data, batch_size=32))
    after = exact_mean_log_likelihood(rbm, BARS_AND_STRIPES)
    assert before < -6.0
    assert after > -3.3, after


def test_visible_bias_initialised_from_data_means() -> None:
    data = torch.bernoulli(torch.linspace(0.05, 0.95, 6).expand(4000, 6))
    rbm = RBM(6, 3, optimizer=sgd(lr=0.0), num_filters=0)
    trainer(1, limit_train_batches=1).fit(rbm, datamodule=TensorData(data, batch_size=100))
    p = torch.sigmoid(rbm.layer.visible_bias.detach())
    torch.testing.assert_close(p, data.mean(0) * 0.99 + 0.005, atol=1e-4, rtol=0)


def test_one_step_is_sgd_with_momentum_and_weight_decay_on_w_only() -> None:
    L.seed_everything(0)
    data = torch.bernoulli(torch.full((20, 6), 0.3))
    rbm = RBM(6, 4, optimizer=sgd(lr=0.1, weight_decay=0.01, momentum=0.5), init_visible_bias=False, num_filters=0)
    start = {k: v.clone() for k, v in rbm.state_dict().items()}
    torch.manual_seed(1)
    trainer(1, limit_train_batches=2).fit(rbm, datamodule=TensorData(data, batch_size=10))

    # The same two updates by hand (Hinton 2010, section 9: delta = m delta - lr (grad + wd W)).
    hand = RBM(6, 4, init_visible_bias=False, num_filters=0)
    hand.load_state_dict(start)
    torch.manual_seed(1)
    loader = iter(torch.utils.data.DataLoader(data, batch_size=10, shuffle=True))
    velocity = {n: torch.zeros_like(p) for n, p in hand.named_parameters()}
    for _ in range(2):
        v = next(loader)
        with torch.no_grad():
            v_model, _ = hand.cd.negative_phase(hand.layer, v)
        grads = torch.autograd.grad(hand.layer.cd_loss(v, v_model), list(hand.parameters()))
        with torch.no_grad():
            for (name, p), g in zip(hand.named_parameters(), grads):
                g = g + 0.01 * p if name == "layer.W" else g
                velocity[name] = 0.5 * velocity[name] + g
                p -= 0.1 * velocity[name]
    trained = dict(rbm.named_parameters())
    for name, p in hand.named_parameters():
        torch.testing.assert_close(trained[name], p, msg=name)


def test_gaussian_rbm_learns_mean_and_variance() -> None:
    """With no coupling to speak of, the visible biases and variances converge to the data's."""
    L.seed_everything(0)
    std = torch.tensor([0.3, 0.6, 1.0])
    data = torch.tensor([1.0, -2.0, 0.5]) + std * torch.randn(6000, 3)
    rbm = RBM(
        3,
        2,
        visible="gaussian",
        learn_sigma=True,
        sigma=1.0,
        sigma_bounds=(0.1, 1.1),
        method="pcd",
        k=1,
        optimizer=sgd(lr=0.02, weight_decay=0.1),
        init_std=1e-4,
        num_filters=0,
    )
    trainer(15).fit(rbm, datamodule=TensorData(data, batch_size=100))
    torch.testing.assert_close(rbm.layer.visible_bias.detach(), data.mean(0), atol=0.1, rtol=0)
    torch.testing.assert_close(rbm.layer.variance.sqrt().detach(), std, atol=0.1, rtol=0)


# ---------------------------------------------------------------------- persistent chains
def test_pcd_chains_persist_and_go_into_the_checkpoint(tmp_path) -> None:
    L.seed_everything(0)
    data = BARS_AND_STRIPES.repeat(8, 1)
    rbm = RBM(9, 6, method="pcd", num_chains=13, num_filters=0)
    t = trainer(2, default_root_dir=tmp_path, enable_checkpointing=True)
    t.fit(rbm, datamodule=TensorData(data, batch_size=16))
    assert rbm.cd.visible is not None and rbm.cd.visible.shape == (13, 9)
    path = tmp_path / "pcd.ckpt"
    t.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["per_rank_state"]
    assert saved["persistent_chains"].shape == (1, 13, 9) and saved["persistent_hidden"].shape == (1, 13, 6)
    restored = RBM.load_from_checkpoint(path)
    torch.testing.assert_close(restored.cd.visible, rbm.cd.visible)
    torch.testing.assert_close(restored.cd.hidden, rbm.cd.hidden)
    torch.testing.assert_close(restored.layer.W, rbm.layer.W)


@pytest.mark.parametrize("method", ["cd", "pcd"])
def test_resumed_run_matches_the_uninterrupted_one(tmp_path, method: str) -> None:
    data = BARS_AND_STRIPES.repeat(8, 1)

    def run(ckpt=None, stop_after: int | None = None) -> RBM:
        L.seed_everything(0)
        decay = schedule(momentum_epochs=1, linear_decay_start=0.0)
        rbm = RBM(9, 6, method=method, k=2, optimizer=sgd(lr=0.05), lr_schedule=decay, num_filters=0)
        callbacks = [StopAfter(stop_after)] if stop_after else []
        t = trainer(4, default_root_dir=tmp_path, callbacks=callbacks)
        t.fit(rbm, datamodule=TensorData(data, batch_size=16), ckpt_path=ckpt)
        if stop_after:
            t.save_checkpoint(tmp_path / "stop.ckpt")
        return rbm

    full = run()
    interrupted = run(stop_after=2)
    resumed = run(ckpt=tmp_path / "stop.ckpt")
    assert not torch.equal(interrupted.layer.W, full.layer.W)
    for (name, p), q in zip(full.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(q, p, msg=name)
    if method == "pcd":
        torch.testing.assert_close(resumed.cd.visible, full.cd.visible)
        torch.testing.assert_close(resumed.cd.hidden, full.cd.hidden)


def test_exact_log_partition_refuses_large_layers() -> None:
    from lightning_ebm.errors import UserError

    with pytest.raises(UserError, match="refusing above 25 units"):
        exact_log_partition(RBM(40, 30))
    assert math.isfinite(exact_log_partition(RBM(40, 12)))


def test_pcd_updates_are_hand_derived_pcd_with_hidden_chain_states() -> None:
    """Two PCD-2 updates through Lightning against the same updates written out by hand: the chains
    continue from their hidden states (Tieleman 2008), each update runs k sweeps ``h -> v -> h`` and
    keeps the last visible states and a hidden sample of the last ``p(h | v)``; the parameters take
    SGD steps with momentum and weight decay on ``W`` (Hinton 2010, section 9), learning rate decayed
    linearly per update."""
    sigmoid = torch.sigmoid
    data = torch.bernoulli(torch.full((20, 6), 0.3))
    chains = torch.bernoulli(torch.full((5, 6), 0.5))
    lr, m, wd, k = 0.1, 0.5, 0.01, 2
    L.seed_everything(0)
    rbm = RBM(6, 4, method="pcd", k=k, num_chains=5, optimizer=sgd(lr=lr, momentum=m, weight_decay=wd),
              lr_schedule=schedule(linear_decay_start=0.0), init_std=0.3, init_visible_bias=False,
              num_filters=0)  # fmt: skip
    W, b, c = (t.detach().clone() for t in (rbm.layer.W, rbm.layer.visible_bias, rbm.layer.hidden_bias))
    rbm.cd.set_chains(chains.clone())
    torch.manual_seed(1)
    trainer(1, limit_train_batches=2).fit(rbm, datamodule=TensorData(data, batch_size=10))

    torch.manual_seed(1)
    loader = iter(torch.utils.data.DataLoader(data, batch_size=10, shuffle=True))
    first = next(loader)
    h = (torch.rand(5, 4) < sigmoid(c + chains @ W)).float()  # the chains' hidden states, drawn once
    velocity = [torch.zeros_like(W), torch.zeros_like(b), torch.zeros_like(c)]
    for step, v_data in enumerate([first, next(loader)]):
        p_data = sigmoid(c + v_data @ W)
        for _ in range(k):
            v = (torch.rand(5, 6) < sigmoid(b + h @ W.t())).float()
            p = sigmoid(c + v @ W)
            h = (torch.rand(5, 4) < p).float()  # after the last sweep: the state kept for the next update
        grads = [
            -(v_data.t() @ p_data / 10 - v.t() @ p / 5) + wd * W,
            -(v_data.mean(0) - v.mean(0)),
            -(p_data.mean(0) - p.mean(0)),
        ]
        rate = lr * (1 - step / 2)  # 2 updates in the run
        for i, (param, grad) in enumerate(zip((W, b, c), grads)):
            velocity[i] = m * velocity[i] + grad if step else grad
            param -= rate * velocity[i]
    for name, want in (("W", W), ("visible_bias", b), ("hidden_bias", c)):
        torch.testing.assert_close(getattr(rbm.layer, name).detach(), want, msg=name)
    torch.testing.assert_close(rbm.cd.visible, v)
    torch.testing.assert_close(rbm.cd.hidden, h)


def test_chains_saved_by_another_number_of_processes_are_pooled_and_shared_out() -> None:
    """A checkpoint of 2 processes x 7 chains resumed on 1 process gives it all 14; one of 1 process
    x 14 chains resumed on 2 processes gives each its own 7 (process r the r-th half)."""
    from types import SimpleNamespace

    saved = torch.arange(2 * 7 * 9, dtype=torch.float32).reshape(2, 7, 9)
    rbm = RBM(9, 6, method="pcd", num_filters=0)
    rbm.on_load_checkpoint({"lightning_ebm_format": 2, "per_rank_state": {"persistent_chains": saved}})
    torch.testing.assert_close(rbm.cd.visible, saved.reshape(14, 9))
    assert rbm.cd.hidden is None  # a checkpoint without hidden states: drawn from p(h | v) later
    for rank in (0, 1):
        rbm = RBM(9, 6, method="pcd", num_filters=0)
        rbm._trainer = SimpleNamespace(global_rank=rank, world_size=2)
        rbm.on_load_checkpoint(
            {"lightning_ebm_format": 2, "per_rank_state": {"persistent_chains": saved.reshape(1, 14, 9)}}
        )
        torch.testing.assert_close(rbm.cd.visible, saved[rank])
