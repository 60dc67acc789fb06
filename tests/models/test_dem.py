"""DEM + DGM (Kim & Bengio 2016): losses by hand, update directions, the contract, checkpoints."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from helpers.models import dem_rates, linear_decay, manual_optimisation, tiny_dem
from torch import nn

from lightning_ebm.datamodules import Toy2DDataModule
from lightning_ebm.models import DEM
from lightning_ebm.nn import MLP, DCGANFeatureNet, DCGANGenerator


def test_energy_is_eq_11() -> None:
    model = tiny_dem(sigma=0.7)
    x = torch.randn(6, 2)
    net = model.energy_net
    features = net.feature_net(x)
    experts = torch.nn.functional.softplus(features @ net.experts.weight.T + net.experts.bias).sum(1)
    expected = x.pow(2).sum(1) / 0.7**2 - x @ net.visible_bias - experts
    torch.testing.assert_close(model.energy(x), expected)
    assert model.energy(x).shape == (6,)


def test_generator_loss_is_energy_minus_bn_entropy() -> None:
    model = tiny_dem(entropy_weight=0.5)
    z = model.latent(64)
    torch.manual_seed(1)
    loss, logs = model.generator_loss(z)
    torch.manual_seed(1)
    gammas = torch.cat([m.weight for m in model.generator.modules() if isinstance(m, nn.BatchNorm1d)])
    entropy = (0.5 * torch.log(2 * math.pi * math.e * gammas**2)).sum()
    expected = model.energy(model.generator(z)).mean() - 0.5 * entropy
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logs["entropy"], entropy.detach())


def test_energy_loss_gradient_is_the_negative_phase_estimate() -> None:
    """Eq. 12: grad = mean_data dE/dtheta - mean_samples dE/dtheta."""
    model = tiny_dem()
    x, x_fake = torch.randn(5, 2), torch.randn(7, 2)
    params = list(model.energy_net.parameters())
    loss, _ = model.energy_loss(x, x_fake)
    grads = torch.autograd.grad(loss, params)
    for p, g in zip(params, grads):
        pos = torch.stack([torch.autograd.grad(model.energy(x[i : i + 1]).sum(), p)[0] for i in range(5)]).mean(0)
        neg = torch.stack([torch.autograd.grad(model.energy(x_fake[i : i + 1]).sum(), p)[0] for i in range(7)]).mean(0)
        torch.testing.assert_close(g, pos - neg)


def _manual_step(model: DEM, x: torch.Tensor) -> None:
    """One training step outside a Trainer (plain optimisers)."""
    manual_optimisation(model)
    model.training_step(x, 0)


def test_each_update_moves_its_loss_the_right_way() -> None:
    torch.manual_seed(0)
    model = tiny_dem(**dem_rates(0.05, 0.05))
    x = torch.randn(128, 2)
    z = model.latent(128)
    energy_before = {k: v.clone() for k, v in model.energy_net.state_dict().items()}

    # generator step: its loss on the same z goes down, and the energy is untouched
    torch.manual_seed(5)
    g_before, _ = model.generator_loss(z)
    opt_energy, opt_generator = model.configure_optimizers()[0]
    model.energy_net.requires_grad_(False)
    opt_generator.zero_grad()
    g_before.backward()
    opt_generator.step()
    model.energy_net.requires_grad_(True)
    torch.manual_seed(5)
    g_after, _ = model.generator_loss(z)
    assert float(g_after) < float(g_before)
    for k, v in model.energy_net.state_dict().items():
        assert torch.equal(v, energy_before[k]), k
    assert all(p.grad is None for p in model.energy_net.parameters())

    # energy step: E(data) - E(samples) on the same batches goes down, the generator is untouched
    with torch.no_grad():
        x_fake = model.generator(z)
    generator_before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    e_before, _ = model.energy_loss(x, x_fake)
    opt_energy.zero_grad()
    e_before.backward()
    opt_energy.step()
    e_after, _ = model.energy_loss(x, x_fake)
    assert float(e_after) < float(e_before)
    for k, v in model.generator.state_dict().items():
        assert torch.equal(v, generator_before[k]), k


def test_training_step_updates_both_players_and_grows_bn_scales() -> None:
    model = tiny_dem(entropy_weight=10.0)
    before = [p.clone() for p in model.parameters()]
    gamma_before = model.generator.net[1].weight.clone()
    _manual_step(model, torch.randn(64, 2))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()) if a.numel() > 1)
    # a large entropy weight dominates the generator's update of gamma: the scales grow
    assert float(model.generator.net[1].weight.mean()) > float(gamma_before.mean())


def test_contract_sample_and_batches() -> None:
    model = tiny_dem()
    s = model.sample(10)
    assert s.shape == (10, 2) and not s.requires_grad
    assert model.generator.training  # sample() restores the mode it found
    x = torch.randn(3, 2)
    assert torch.equal(model.batch_data(x), x)
    assert torch.equal(model.batch_data((x, torch.zeros(3))), x)
    with pytest.raises(TypeError, match="tuple/list starting with one"):
        model.batch_data({"x": x})


def test_image_model_shapes() -> None:
    model = DEM(
        DCGANFeatureNet(1, 4, 32),
        DCGANGenerator(latent_dim=10, out_channels=1, base_channels=4, image_size=32),
        data_shape=[1, 32, 32],
        latent_dim=10,
        num_experts=16,
    )
    assert model.sample(3).shape == (3, 1, 32, 32)
    assert model.energy(torch.randn(3, 1, 32, 32)).shape == (3,)


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="latent_distribution"):
        tiny_dem(latent_distribution="laplace")
    with pytest.raises(ValueError, match="energy_optimizer must be an optimiser"):
        tiny_dem(energy_optimizer="sgd")


def test_load_from_checkpoint_needs_only_the_path(tmp_path) -> None:
    model = tiny_dem(num_experts=3, **dem_rates(0.123, 0.01))
    dm = Toy2DDataModule(name="8gaussians", num_samples=512, batch_size=128)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    path = tmp_path / "dem.ckpt"
    trainer.save_checkpoint(path)
    loaded = DEM.load_from_checkpoint(path)
    assert loaded.hparams.num_experts == 3 and loaded.hparams.energy_optimizer["init_args"]["lr"] == 0.123
    x = torch.randn(20, 2)
    torch.testing.assert_close(loaded.energy(x), model.energy(x))
    z = torch.rand(8, 4) * 2 - 1
    torch.testing.assert_close(loaded.sample(8, z=z), model.sample(8, z=z))


def test_unrecorded_network_warns_and_still_loads_when_passed(tmp_path) -> None:
    feature = nn.Sequential(nn.Linear(2, 8), nn.Tanh())
    with pytest.warns(UserWarning, match="pass feature_net=... to load_from_checkpoint"):
        model = DEM(feature, MLP(4, [8], 2, batch_norm=True))
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = DEM.load_from_checkpoint(tmp_path / "m.ckpt", feature_net=nn.Sequential(nn.Linear(2, 8), nn.Tanh()))
    x = torch.randn(4, 2)
    torch.testing.assert_close(loaded.energy(x), model.energy(x))


def test_resumed_run_ends_where_the_uninterrupted_run_ends(tmp_path) -> None:
    """Optimiser state, data order (mid-epoch too) and RNG state travel in the checkpoint."""

    def fit(max_steps: int, ckpt: str | None = None, save: str | None = None) -> DEM:
        L.seed_everything(0)
        model = tiny_dem(**dem_rates(0.05, 0.05))
        dm = Toy2DDataModule(name="8gaussians", num_samples=1280, batch_size=128)
        trainer = L.Trainer(
            max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            limit_val_batches=0, default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(model, dm, ckpt_path=ckpt)
        if save:
            trainer.save_checkpoint(save)
        return model

    straight = fit(2 * 25)  # 25 batches = 2.5 epochs (two optimiser steps per batch)
    fit(2 * 13, save=str(tmp_path / "mid.ckpt"))  # stopped in the middle of epoch 1
    resumed = fit(2 * 25, ckpt=str(tmp_path / "mid.ckpt"))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_gradient_penalty_equals_its_closed_form_for_a_quadratic_energy() -> None:
    """With the experts switched off, E(x) = ||x||^2/sigma^2 - b^T x, so grad E = 2 x / sigma^2 - b."""
    model = tiny_dem(sigma=0.5, gradient_penalty=0.3)
    with torch.no_grad():
        model.energy_net.experts.weight.zero_()
        model.energy_net.experts.bias.fill_(-50.0)  # softplus(-50) ~ 0: no expert contributes
        model.energy_net.visible_bias.copy_(torch.tensor([0.2, -0.7]))
    x, x_fake = torch.randn(9, 2), torch.randn(9, 2)
    loss, logs = model.energy_loss(x, x_fake)
    expected_penalty = (2 * x / 0.25 - torch.tensor([0.2, -0.7])).pow(2).sum(1).mean()
    torch.testing.assert_close(logs["gradient_penalty"], expected_penalty)
    energy = lambda v: v.pow(2).sum(1) / 0.25 - v @ torch.tensor([0.2, -0.7])  # noqa: E731
    expected_loss = energy(x).mean() - energy(x_fake).mean() + 0.3 * expected_penalty
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)
    # the penalty's gradient reaches the parameters (a second-order term): by hand, for b,
    # d/db [-(mean b^T x) + (mean b^T x_fake) + 0.3 mean ||2x/sigma^2 - b||^2]
    loss.backward()
    b = torch.tensor([0.2, -0.7])
    expected_grad = -x.mean(0) + x_fake.mean(0) - 0.6 * (2 * x / 0.25 - b).mean(0)
    torch.testing.assert_close(model.energy_net.visible_bias.grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_latent_mala_sampling_lowers_the_energy_of_the_samples() -> None:
    """With ``mcmc_steps`` the codes are moved by MALA on E(G(z)) / T within U(-1, 1)^d (the sampler is
    tested against known targets in test_samplers.py): at a low temperature the samples' energy drops
    below that of plain G(z) from the same codes, and the acceptance rate is reported."""
    torch.manual_seed(0)
    model = tiny_dem(mcmc_steps=30, mcmc_step_size=1e-3, mcmc_temperature=0.05).eval()
    z = model.latent(512)
    refined = model.sample(512, z=z)
    assert model.last_acceptance_rate is not None and 0.0 < float(model.last_acceptance_rate) <= 1.0
    model.hparams.mcmc_steps = 0
    plain = model.sample(512, z=z)
    assert float(model.energy(refined).mean()) < float(model.energy(plain).mean())


def test_lr_decay_is_linear_to_zero_for_both_players_and_resumes(tmp_path) -> None:
    """``lr_decay: linear``: both rates constant for the first half, then down to 0 at the last batch;
    a run killed in the middle of the decay and resumed ends with the uninterrupted run's parameters."""

    class Killed(Exception):
        pass

    class Watch(L.Callback):
        def __init__(self, kill_at: int | None) -> None:
            self.kill_at, self.rates = kill_at, []

        def on_train_batch_end(self, trainer: L.Trainer, *_: object) -> None:
            self.rates.append([opt.param_groups[0]["lr"] for opt in trainer.optimizers])
            if self.kill_at is not None and trainer.global_step >= self.kill_at:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")
                raise Killed

    def fit(kill_at: int | None = None, ckpt: str | None = None) -> tuple[DEM, Watch]:
        L.seed_everything(0)
        model = tiny_dem(**dem_rates(0.04, 0.02), lr_schedule=linear_decay(0.5))
        watch = Watch(kill_at)
        trainer = L.Trainer(
            max_steps=2 * 20, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            limit_val_batches=0, default_root_dir=tmp_path, callbacks=[watch],
        )  # fmt: skip
        trainer.fit(model, Toy2DDataModule(name="8gaussians", num_samples=1280, batch_size=128), ckpt_path=ckpt)
        return model, watch

    straight, watch = fit()
    factors = [energy / 0.04 for energy, _ in watch.rates]  # after each of the 20 batches
    torch.testing.assert_close(torch.tensor(factors), torch.tensor([1.0] * 10 + [1 - k / 10 for k in range(1, 11)]))
    assert all(generator == energy / 2 for energy, generator in watch.rates)
    with pytest.raises(Killed):
        fit(kill_at=2 * 14)  # in the middle of the decay
    resumed, _ = fit(ckpt=str(tmp_path / "mid.ckpt"))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
