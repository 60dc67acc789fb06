"""Partition functions and log-likelihoods: exact enumeration against brute force and quadrature,
AIS against the exact value."""

from __future__ import annotations

import itertools
import math

import lightning as L
import pytest
import torch

from lightning_ebm.callbacks import AISLogLikelihood
from lightning_ebm.evaluation import estimate_log_partition, exact_log_partition, log_likelihood
from lightning_ebm.models import RBM
from lightning_ebm.optim import spec
from lightning_ebm.samplers import salakhutdinov_murray_betas


def random_rbm(n_visible: int, n_hidden: int, scale: float = 1.0, **kwargs) -> RBM:
    rbm = RBM(n_visible, n_hidden, init_std=scale, **kwargs)
    with torch.no_grad():
        rbm.layer.visible_bias.normal_(0, scale)
        rbm.layer.hidden_bias.normal_(0, scale)
    return rbm


def all_states(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


@pytest.mark.parametrize("shape", [(7, 4), (4, 7)])
def test_exact_log_partition_matches_brute_force_over_both_layers(shape) -> None:
    rbm = random_rbm(*shape)
    W, b, c = (t.detach().double() for t in (rbm.layer.W, rbm.layer.visible_bias, rbm.layer.hidden_bias))
    v, h = all_states(shape[0]), all_states(shape[1])
    minus_energy = (v @ b)[:, None] + (h @ c)[None, :] + v @ W @ h.t()  # -E(v, h) for every pair
    assert exact_log_partition(rbm) == pytest.approx(float(torch.logsumexp(minus_energy.flatten(), 0)), abs=1e-9)


def test_both_enumerations_agree() -> None:
    rbm = random_rbm(12, 9)
    swapped = RBM(9, 12)
    swapped.load_state_dict(
        {
            **swapped.state_dict(),
            "layer.W": rbm.layer.W.t(),
            "layer.visible_bias": rbm.layer.hidden_bias,
            "layer.hidden_bias": rbm.layer.visible_bias,
        }
    )
    assert exact_log_partition(rbm) == pytest.approx(exact_log_partition(swapped), abs=1e-9)


def test_gaussian_exact_log_partition_matches_quadrature() -> None:
    rbm = random_rbm(2, 3, scale=0.7, visible="gaussian", learn_sigma=True)
    with torch.no_grad():
        rbm.layer.log_variance.copy_(torch.log(torch.tensor([0.5, 0.9]) ** 2))
    rbm = rbm.double()
    grid = torch.linspace(-9, 9, 1801, dtype=torch.float64)
    v = torch.cartesian_prod(grid, grid)
    step = float(grid[1] - grid[0])
    log_z = float(torch.logsumexp(-rbm.layer.free_energy(v).detach(), 0)) + 2 * math.log(step)
    assert exact_log_partition(rbm) == pytest.approx(log_z, abs=1e-6)


def test_log_likelihood_is_normalised() -> None:
    rbm = random_rbm(8, 5)
    ll = log_likelihood(rbm, all_states(8).float(), exact_log_partition(rbm))
    assert float(torch.logsumexp(ll, 0)) == pytest.approx(0.0, abs=1e-5)


def test_betas_follow_salakhutdinov_murray() -> None:
    betas = salakhutdinov_murray_betas()
    assert len(betas) == 14_501 and betas[0] == 0 and betas[-1] == 1
    assert (betas[1:] > betas[:-1]).all()
    assert betas[500] == pytest.approx(0.5) and betas[4_500] == pytest.approx(0.9)
    small = salakhutdinov_murray_betas(1_000)
    assert len(small) == 1_001 and small[-1] == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: random_rbm(20, 12, scale=0.5),
        lambda: random_rbm(30, 15, scale=0.3),
        lambda: random_rbm(6, 10, scale=0.5, visible="gaussian", sigma=0.8),
    ],
    ids=["bernoulli-20x12", "bernoulli-30x15", "gaussian-6x10"],
)
def test_ais_agrees_with_exact_log_partition(make) -> None:
    torch.manual_seed(0)
    rbm = make()
    exact = exact_log_partition(rbm)
    estimate = estimate_log_partition(rbm, num_chains=100, betas=3_000, seed=0)
    assert abs(estimate.estimate - exact) < 0.1, (estimate, exact)
    assert estimate.lower <= exact + 0.02 and exact - 0.02 <= estimate.upper


def trained_rbm() -> tuple[RBM, torch.Tensor]:
    """An RBM (64 visible, 14 hidden) trained by CD-1 on noisy copies of 6 binary prototypes: sharp,
    multimodal, with large weights, the hard case for AIS."""
    g = torch.Generator().manual_seed(0)
    prototypes = (torch.rand(6, 64, generator=g) < 0.3).float()
    data = prototypes[torch.randint(0, 6, (3000,), generator=g)]
    data = (data + (torch.rand(data.shape, generator=g) < 0.05).float()) % 2  # flip 5% of the bits
    L.seed_everything(0)
    rbm = RBM(64, 14, optimizer=spec("torch.optim.SGD", lr=0.1, momentum=0.5, weight_decay=2e-4), k=1, num_filters=0)
    loader = torch.utils.data.DataLoader(data, batch_size=50, shuffle=True)
    L.Trainer(
        max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    ).fit(rbm, loader)
    return rbm, data


def test_ais_agrees_with_exact_log_partition_on_a_trained_rbm() -> None:
    rbm, data = trained_rbm()
    assert rbm.layer.W.abs().max() > 1.0  # really trained, not a near-uniform model
    exact = exact_log_partition(rbm)
    estimate = estimate_log_partition(rbm, num_chains=100, betas=5_000, data=data, seed=0)
    assert abs(estimate.estimate - exact) < 0.1, (estimate, exact)
    # The base-rate model (data means) is what makes AIS reliable here: weights nearly even.
    assert estimate.effective_sample_size > 50


def test_estimate_is_reproducible_and_leaves_the_global_generator_alone() -> None:
    rbm = random_rbm(10, 5)
    torch.manual_seed(3)
    before = torch.rand(1)
    torch.manual_seed(3)
    a = estimate_log_partition(rbm, num_chains=10, betas=200, seed=1)
    b = estimate_log_partition(rbm, num_chains=10, betas=200, seed=1)
    assert a.estimate == b.estimate
    assert torch.equal(torch.rand(1), before)


def test_ais_callback_logs_the_held_out_log_likelihood() -> None:
    rbm_data = torch.bernoulli(torch.full((600, 16), 0.3))

    class Data(L.LightningDataModule):
        train_data, val_data = rbm_data[:500], rbm_data[500:]

        def train_dataloader(self):
            return torch.utils.data.DataLoader(self.train_data, batch_size=50)

        def val_dataloader(self):
            return torch.utils.data.DataLoader(self.val_data, batch_size=50)

    rbm = RBM(16, 8, optimizer=spec("torch.optim.SGD", lr=0.05, momentum=0.5, weight_decay=2e-4), num_filters=0)
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[AISLogLikelihood(every_n_epochs=1, num_chains=50, num_betas=2_000)],
    )
    trainer.fit(rbm, datamodule=Data())
    metrics = trainer.callback_metrics
    exact = exact_log_partition(rbm)
    assert float(metrics["val/log_partition"]) == pytest.approx(exact, abs=0.1)
    expected = float(log_likelihood(rbm, Data.val_data, exact).mean())
    assert float(metrics["val/log_likelihood"]) == pytest.approx(expected, abs=0.1)
    assert "train/log_likelihood" in metrics and float(metrics["val/log_partition_interval"]) < 0.2
