"""MEG (Kumar et al. 2019): the losses against closed forms, the JSD estimator, MALA's invariant law,
the update schedule, the contract and checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.models import linear_decay, manual_optimisation, meg_rates
from torch import Tensor, nn

from lightning_ebm.models import MEG
from lightning_ebm.models.objectives import jsd_mutual_information, score_penalty
from lightning_ebm.nn import MLP, ConvEnergy, ConvGenerator, ConvStatistics, Network, StatisticsMLP


class Quadratic(Network):
    """``E(x) = ||x - mean||^2 / (2 scale^2)`` (a Gaussian's energy), for closed forms."""

    def __init__(self, mean: list[float], scale: float = 1.0) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.tensor(mean))
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return (x.flatten(1) - self.mean).pow(2).sum(1) / (2 * self.scale**2)


class Identity(Network):
    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # an optimiser needs a parameter

    def forward(self, z: Tensor) -> Tensor:
        return z


def tiny_meg(**overrides) -> MEG:
    kwargs = dict(
        energy_net=MLP(2, [32, 32], 1, activation="leaky_relu"),
        generator=MLP(2, [32, 32], 2),
        statistics_net=StatisticsMLP(2, 2, [32, 32]),
        latent_dim=2,
    )
    kwargs.update(overrides)
    return MEG(**kwargs)


def gaussian_meg(mean: list[float], scale: float, **overrides) -> MEG:
    """A MEG whose generator is the identity and whose energy is a Gaussian's: MCMC targets are known."""
    statistics = StatisticsMLP(len(mean), len(mean), [8])
    return MEG(Quadratic(mean, scale), Identity(), statistics, latent_dim=len(mean), **overrides)


# ---------------------------------------------------------------------------- the loss terms
def test_score_penalty_is_the_closed_form_of_a_quadratic_energy() -> None:
    """E(x) = x^T A x / 2 has grad A x; the penalty is mean ||A x||^2 over the flattened example."""
    a = torch.randn(18, 18, dtype=torch.float64)
    a = a @ a.T
    x = torch.randn(5, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    flat = x.flatten(1)
    energies = 0.5 * ((flat @ a) * flat).sum(1)
    expected = (flat.detach() @ a).pow(2).sum(1).mean()
    torch.testing.assert_close(score_penalty(energies, x), expected)
    # not the authors' norm over the channel axis, which gives another number for images
    grad = (flat.detach() @ a).view(5, 2, 3, 3)
    assert not torch.isclose(grad.norm(dim=1).pow(2).mean(), expected)


def test_energy_loss_is_the_data_minus_samples_energy_plus_the_penalty() -> None:
    model = gaussian_meg([0.5, -1.0], 0.7, gradient_penalty=3.0)
    x, x_fake = torch.randn(16, 2), torch.randn(16, 2)
    loss, logs = model.energy_loss(x, x_fake)
    energy = lambda v: (v - torch.tensor([0.5, -1.0])).pow(2).sum(1) / (2 * 0.49)  # noqa: E731
    grad = (x - torch.tensor([0.5, -1.0])) / 0.49
    expected = energy(x).mean() - energy(x_fake).mean() + 3.0 * grad.pow(2).sum(1).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logs["gradient_penalty"], grad.pow(2).sum(1).mean())
    # the penalty is differentiable in the energy's parameters: d/dmean of mean||x - mean||^2 / s^4
    (g,) = torch.autograd.grad(loss, model.energy_net.mean)
    mean = torch.tensor([0.5, -1.0])
    expected_g = -(x - mean).mean(0) / 0.49 + (x_fake - mean).mean(0) / 0.49 - 3.0 * 2 * (x - mean).mean(0) / 0.49**2
    torch.testing.assert_close(g, expected_g)


def test_jsd_estimator_bounds() -> None:
    """log 2 - BCE: 0 when T cannot tell pairs apart, log 2 when it separates them perfectly."""
    zeros = torch.zeros(100)
    assert float(jsd_mutual_information(zeros, zeros)) == pytest.approx(0.0, abs=1e-7)
    big = torch.full((100,), 50.0)
    assert float(jsd_mutual_information(big, -big)) == pytest.approx(math.log(2), abs=1e-6)


def _trained_estimate(dependent: bool) -> float:
    """Train T on pairs (x, z) and return the estimate on fresh pairs."""
    torch.manual_seed(0)
    net = StatisticsMLP(2, 2, [64, 64])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def pairs(n: int) -> tuple[Tensor, Tensor]:
        z = torch.randn(n, 2)
        x = z + 0.1 * torch.randn(n, 2) if dependent else torch.randn(n, 2)
        return x, z

    def estimate(x: Tensor, z: Tensor) -> Tensor:
        return jsd_mutual_information(net(x, z), net(x, z[torch.randperm(z.shape[0])]))

    for _ in range(300):
        loss = -estimate(*pairs(256))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(estimate(*pairs(20_000)))


def test_jsd_estimator_rises_with_dependence() -> None:
    independent, dependent = _trained_estimate(False), _trained_estimate(True)
    assert abs(independent) < 0.02
    assert dependent > 0.5  # the bound's maximum is log 2 = 0.693


def test_generator_loss_is_energy_minus_mutual_information() -> None:
    model = tiny_meg(mi_weight=0.5)
    z = model.latent(32)
    torch.manual_seed(3)
    loss, logs = model.generator_loss(z)
    torch.manual_seed(3)
    x = model.generator(z)
    shuffled = z[torch.randperm(32)]
    t = model.statistics_net
    information = jsd_mutual_information(t(x, z), t(x, shuffled))
    torch.testing.assert_close(loss, model.energy(x).mean() - 0.5 * information)
    torch.testing.assert_close(logs["mutual_information"], information.detach())


# ---------------------------------------------------------------------------- MCMC
def _moments(samples: Tensor) -> tuple[Tensor, Tensor]:
    return samples.mean(0), samples.var(0)


@pytest.mark.parametrize("prior", [True, False])
def test_latent_mala_samples_its_gaussian_target(prior: bool) -> None:
    """Target N(z; 0, I) exp(-||z - m||^2 / (2 s^2 T)): a Gaussian of precision 1 + 1/(s^2 T)."""
    mean, scale, temperature = torch.tensor([1.0, -2.0]), 0.8, 2.0
    model = gaussian_meg(
        mean.tolist(), scale, mcmc="latent", mcmc_steps=400, mcmc_step_size=0.2,
        mcmc_temperature=temperature, mcmc_latent_prior=prior,
    )  # fmt: skip
    s2 = scale**2 * temperature
    precision = 1 / s2 + (1.0 if prior else 0.0)
    target_mean, target_var = mean / s2 / precision, torch.full((2,), 1 / precision)
    samples = model.sample(4000)
    got_mean, got_var = _moments(samples)
    torch.testing.assert_close(got_mean, target_mean, atol=0.06, rtol=0)
    torch.testing.assert_close(got_var, target_var, atol=0.0, rtol=0.1)
    rate = float(model.last_acceptance_rate)
    assert 0.0 < rate <= 1.0


@pytest.mark.parametrize("metropolis", [True, False])
def test_visible_langevin_samples_exp_minus_energy_over_temperature(metropolis: bool) -> None:
    mean, scale, temperature = torch.tensor([0.5, 0.0]), 0.5, 0.5
    model = gaussian_meg(
        mean.tolist(), scale, mcmc="visible", mcmc_steps=300, mcmc_step_size=0.01,
        mcmc_temperature=temperature, mcmc_metropolis=metropolis,
    )  # fmt: skip
    samples = model.sample(4000)
    got_mean, got_var = _moments(samples)
    torch.testing.assert_close(got_mean, mean, atol=0.03, rtol=0)
    tolerance = 0.1 if metropolis else 0.15  # unadjusted Langevin is biased by O(step)
    torch.testing.assert_close(got_var, torch.full((2,), scale**2 * temperature), atol=0.0, rtol=tolerance)


def test_sample_without_mcmc_is_the_generator_in_eval_mode() -> None:
    model = tiny_meg(generator=MLP(2, [16], 2, batch_norm=True))
    z = torch.randn(10, 2)
    model.generator.train()
    out = model.sample(10, z=z)
    model.generator.eval()
    torch.testing.assert_close(out, model.generator(z))
    assert model.generator.training is False  # restored ... to what it was before the call (eval here)


# ---------------------------------------------------------------------------- training
def _manual_optimisation(model: MEG) -> list[torch.optim.Optimizer]:
    return manual_optimisation(model)


def _adam_steps(optimizer: torch.optim.Optimizer) -> int:
    states = [s for s in optimizer.state.values() if "step" in s]
    return int(states[0]["step"]) if states else 0


@pytest.mark.parametrize("energy_steps", [1, 5])
def test_schedule_is_energy_steps_energy_updates_per_generator_update(energy_steps: int) -> None:
    model = tiny_meg(energy_steps=energy_steps)
    opt_e, opt_g, opt_t = _manual_optimisation(model)
    for i in range(10):
        model.training_step(torch.randn(16, 2), i)
    assert _adam_steps(opt_e) == 10
    assert _adam_steps(opt_g) == _adam_steps(opt_t) == 10 // energy_steps
    assert model.energy_updates == 10


def test_each_update_moves_only_its_own_players() -> None:
    model = tiny_meg(energy_steps=2)
    _manual_optimisation(model)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}

    def moved(prefix: str) -> bool:
        return any(not torch.equal(v, snapshot[k]) for k, v in model.state_dict().items() if k.startswith(prefix))

    model.energy_updates = 1  # not a generator step: only the energy moves
    model.training_step(torch.randn(16, 2), 0)
    assert moved("energy_net") and not moved("generator") and not moved("statistics_net")


def test_image_networks_train_one_step() -> None:
    for layout, size, channels in (("mnist", 28, 3), ("cifar", 32, 3)):
        model = MEG(
            ConvEnergy(layout, channels, 32),
            ConvGenerator(layout, 8, channels, 32),
            ConvStatistics(layout, channels, 8, 32),
            data_shape=(channels, size, size),
            latent_dim=8,
            gradient_penalty=10.0,
        )
        _manual_optimisation(model)
        model.training_step(torch.rand(4, channels, size, size) * 2 - 1, 0)
        assert model.sample(3).shape == (3, channels, size, size)
        assert model.anomaly_score(torch.randn(5, channels, size, size)).shape == (5,)


def test_anomaly_score_is_the_squared_gradient_norm_or_the_energy() -> None:
    model = gaussian_meg([1.0, 1.0], 0.5)
    x = torch.randn(7, 2)
    torch.testing.assert_close(model.anomaly_score(x), ((x - 1) / 0.25).pow(2).sum(1))
    torch.testing.assert_close(model.anomaly_score(x, "energy"), (x - 1).pow(2).sum(1) / 0.5)


def test_fit_checkpoint_load_and_resume(tmp_path) -> None:
    from lightning_ebm.datamodules import Toy2DDataModule

    L.seed_everything(0)
    model = tiny_meg(energy_steps=3)
    dm = Toy2DDataModule(name="8gaussians", num_samples=512, batch_size=64)
    trainer = L.Trainer(
        max_epochs=1, default_root_dir=tmp_path, enable_progress_bar=False, logger=False, limit_val_batches=1
    )
    trainer.fit(model, dm)
    path = trainer.checkpoint_callback.best_model_path
    loaded = MEG.load_from_checkpoint(path)
    assert loaded.energy_updates == model.energy_updates == 8
    x = torch.randn(5, 2)
    torch.testing.assert_close(loaded.energy(x), model.energy(x))
    assert loaded.sample(4).shape == (4, 2)


@pytest.mark.parametrize("lr_decay", ["none", "linear"])
def test_resumed_run_ends_where_the_uninterrupted_run_ends(tmp_path, lr_decay: str) -> None:
    """Killed in the middle of an epoch and between two generator updates, then resumed: the three
    networks, the three Adam states, the update schedule, the learning-rate decay and the random streams
    continue exactly."""
    from lightning_ebm.datamodules import Toy2DDataModule

    class Killed(Exception):
        pass

    class Kill(L.Callback):  # the run stops after 10 optimiser steps, as if killed; its schedule is the full run's
        def on_train_batch_end(self, trainer: L.Trainer, *_: object) -> None:
            if trainer.global_step >= 10:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")
                raise Killed

    def fit(ckpt: str | None = None, kill: bool = False) -> tuple[MEG, L.Trainer]:
        L.seed_everything(0)
        model = tiny_meg(
            energy_steps=3,
            **meg_rates(1e-3, 1e-3, 1e-3),
            lr_schedule=linear_decay(0.2) if lr_decay == "linear" else None,
        )
        trainer = L.Trainer(
            max_steps=34, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            limit_val_batches=0, default_root_dir=tmp_path, enable_model_summary=False,
            callbacks=[Kill()] if kill else [],
        )  # fmt: skip
        trainer.fit(model, Toy2DDataModule(name="8gaussians", num_samples=512, batch_size=64), ckpt_path=ckpt)
        return model, trainer

    # 8 batches per epoch; batch b makes 1 optimizer step, plus 2 (G and T) when b % 3 == 0:
    # 34 steps = 20 batches (2.5 epochs); 10 steps = 6 batches (mid-epoch 0, after an energy-only batch).
    straight, straight_trainer = fit()
    with pytest.raises(Killed):
        fit(kill=True)
    resumed, trainer = fit(ckpt=str(tmp_path / "mid.ckpt"))
    assert straight.energy_updates == resumed.energy_updates == 20
    rates = [[g["lr"] for opt in t.optimizers for g in opt.param_groups] for t in (straight_trainer, trainer)]
    assert rates[0] == rates[1]
    if lr_decay == "linear":
        assert 0 < rates[0][0] < 1e-3
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for a, b in zip(straight.optimizers(use_pl_optimizer=False), trainer.optimizers):
        for sa, sb in zip(a.state_dict()["state"].values(), b.state_dict()["state"].values()):
            torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=0, atol=0)


def test_linear_decay_is_constant_then_falls_linearly_to_zero() -> None:
    from lightning_ebm.optim import Schedule

    def decay(total_steps: int, start: float = 0.0) -> Schedule:
        schedule = Schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), linear_decay_start=start)
        schedule.set_phase(total_steps)
        return schedule

    factors = [decay(10, 0.6).factor(step) for step in range(12)]
    assert factors[:7] == [1.0] * 7  # constant until step 6 = 0.6 * 10
    torch.testing.assert_close(torch.tensor(factors[6:]), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0, 0.0]))
    assert decay(4).factor(0) == 1.0 and decay(4).factor(2) == 0.5
    with pytest.raises(ValueError, match="linear_decay_start"):
        decay(10, start=1.0)


def test_lr_decay_ends_the_run_at_zero_for_all_three_players(tmp_path) -> None:
    """Two epochs of 8 batches, decay over the second half: all three rates are the configured ones
    after epoch 0 and 0 after the last batch; a run's length in ``max_steps`` is converted to batches."""
    from lightning_ebm.datamodules import Toy2DDataModule

    rates: list[list[float]] = []

    class Rates(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: MEG) -> None:
            rates.append([opt.param_groups[0]["lr"] for opt in trainer.optimizers])

    model = tiny_meg(**meg_rates(1e-3, 2e-3, 3e-3), lr_schedule=linear_decay(0.5))
    trainer = L.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
        default_root_dir=tmp_path, enable_model_summary=False, callbacks=[Rates()],
    )  # fmt: skip
    trainer.fit(model, Toy2DDataModule(name="8gaussians", num_samples=512, batch_size=64))
    assert rates == [[1e-3, 2e-3, 3e-3], [0.0, 0.0, 0.0]]
    # max_steps counts optimiser steps: 5 energy updates per generator update make 7 per 5 batches.
    trainer = L.Trainer(max_steps=70, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    model = tiny_meg(energy_steps=5, lr_schedule=linear_decay(0.0))
    model.trainer = trainer
    assert model.training_batches() == 50


def test_data_of_the_wrong_size_is_a_short_error(tmp_path) -> None:
    from lightning_ebm.datamodules import Toy2DDataModule
    from lightning_ebm.errors import UserError

    model = tiny_meg(
        energy_net=MLP(3, [8], 1), generator=MLP(2, [8], 3), statistics_net=StatisticsMLP(3, 2, [8]), data_shape=(3,)
    )
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.raises(UserError, match=r"shaped \[2\] but the model's data_shape is \[3\]"):
        trainer.fit(model, Toy2DDataModule(name="8gaussians", num_samples=256, batch_size=64))


def test_meg_cifar_config_trains_and_keeps_the_best_checkpoint_by_fid(tmp_path: Path) -> None:
    """The headline config end to end through the command line on CIFAR-10's on-disk format: the
    paper's networks (narrowed), FID / IS by the Inception network (random weights in torch-fidelity's
    file format), a best checkpoint chosen by FID although FID is computed only every other epoch."""
    from helpers.data import write_cifar10
    from helpers.image_quality import random_inception_weights
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_ebm.cli import main

    write_cifar10(tmp_path / "data", per_batch=8, n_test=4)
    weights = random_inception_weights(tmp_path)
    narrow = [f"--model.init_args.{net}.init_args.width=16" for net in ("energy_net", "generator", "statistics_net")]
    args = ["fit", "--config", "meg_cifar", "--data.data_dir", str(tmp_path / "data"), "--data.val_size", "8",
            "--data.batch_size", "8", "--trainer.max_epochs", "3", "--trainer.log_every_n_steps", "1",
            "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), *narrow,
            "--trainer.callbacks.inception_weights", str(weights), "--trainer.callbacks.num_samples", "8",
            "--trainer.callbacks.every_n_epochs", "2", "--trainer.callbacks.reference", "val",
            "--trainer.callbacks.cache_dir", "null", "--trainer.callbacks.batch_size", "8",
            "--trainer.callbacks.splits", "1"]  # fmt: skip
    assert main(args) == 0
    run = tmp_path / "logs" / "meg_cifar" / "version_0"
    scalars = set(EventAccumulator(str(run)).Reload().Tags()["scalars"])
    assert {"val/fid", "val/inception_score", "train/gradient_penalty", "train/mutual_information"} <= scalars
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints and any(name.startswith("best-epoch=1") for name in checkpoints)
    model = MEG.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert model.hparams.gradient_penalty == 10.0 and model.hparams.energy_steps == 5
    assert model.sample(2).shape == (2, 3, 32, 32)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2
