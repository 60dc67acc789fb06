"""DBM: log Z, log p(v) and the mean-field bound against brute-force enumeration of every state,
AIS against exact log Z, the mean-field fixed point, the pretraining's doubled inputs, the learning
update against its hand-derived form, the Gibbs sweep against the exact distribution, and training."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers.boltzmann import BARS_AND_STRIPES, StopAfter, TensorData, all_states, empirical_distribution, trainer

from lightning_ebm.errors import UserError
from lightning_ebm.evaluation import estimate_log_partition, exact_log_likelihood, exact_log_partition, log_likelihood
from lightning_ebm.models import DBM
from lightning_ebm.models.dbm import pretraining_scales
from lightning_ebm.optim import spec


def sgd(lr: float) -> dict:
    return spec("torch.optim.SGD", lr=lr, momentum=0.5, weight_decay=2e-4)


def random_dbm(sizes: list[int], scale: float = 0.8, seed: int = 0) -> DBM:
    torch.manual_seed(seed)
    dbm = DBM(sizes, init_std=scale)
    with torch.no_grad():
        for b in dbm.net.biases:
            b.normal_(0, 0.5)
    return dbm.double()


def brute_force_log_joint(dbm: DBM) -> torch.Tensor:
    """``-E(x)`` of every joint state, shape ``(2^n_0, 2^n_1, ...)``."""
    states = [all_states(n) for n in dbm.layer_sizes]
    index = torch.cartesian_prod(*[torch.arange(len(s)) for s in states])
    log_joint = -dbm.net.joint_energy([s[index[:, i]] for i, s in enumerate(states)])
    return log_joint.reshape(*[len(s) for s in states])


@pytest.mark.parametrize("sizes", [[6, 4, 3], [3, 5, 4], [5, 3, 4, 2], [2, 3, 2, 3, 2]])
def test_exact_log_partition_and_log_likelihood_match_brute_force(sizes: list[int]) -> None:
    dbm = random_dbm(sizes)
    log_joint = brute_force_log_joint(dbm)
    log_z = float(torch.logsumexp(log_joint.detach().flatten(), 0))
    assert exact_log_partition(dbm) == pytest.approx(log_z, abs=1e-9)
    v = all_states(sizes[0])
    expected = torch.logsumexp(log_joint.flatten(1), 1) - log_z
    torch.testing.assert_close(exact_log_likelihood(dbm, v), expected)


@pytest.mark.parametrize("sizes", [[6, 4, 3], [5, 3, 4, 2]])
def test_ais_log_partition_within_a_tenth_of_a_nat(sizes: list[int]) -> None:
    dbm = random_dbm(sizes).float()
    exact = exact_log_partition(dbm)
    data = torch.bernoulli(torch.full((50, sizes[0]), 0.3))
    estimate = estimate_log_partition(dbm, num_chains=200, betas=3000, data=data, seed=0)
    assert abs(estimate.estimate - exact) < 0.1
    assert estimate.lower <= exact + 0.1 and exact - 0.1 <= estimate.upper


def test_mean_field_bound_is_below_and_close_to_the_exact_log_likelihood() -> None:
    dbm = random_dbm([6, 4, 3])
    v = all_states(6)
    exact = exact_log_likelihood(dbm, v)
    bound = log_likelihood(dbm, v, exact_log_partition(dbm))
    assert (bound <= exact + 1e-9).all()  # a variational lower bound, for every v
    assert float((exact - bound).mean()) < 0.5  # and a fraction of a nat from it


def test_mean_field_reaches_a_fixed_point_and_never_lowers_the_bound() -> None:
    dbm = random_dbm([8, 6, 5, 4], scale=0.5)
    v = torch.bernoulli(torch.full((20, 8), 0.5, dtype=torch.float64))
    bounds = [-dbm.net.mean_field_free_energy(dbm.net.mean_field(v, steps)) for steps in range(0, 30)]
    for before, after in zip(bounds, bounds[1:]):
        assert (after >= before - 1e-10).all()  # coordinate ascent
    mu = dbm.net.mean_field(v, 200)
    for layer in range(1, dbm.net.num_layers):  # Eq. (3)'s fixed-point equations hold
        torch.testing.assert_close(mu[layer], torch.sigmoid(dbm.net.layer_input(mu, layer)), atol=1e-10, rtol=0)
    converged = dbm.net.mean_field(v, 1000, tol=1e-9)
    for a, b in zip(mu[1:], converged[1:]):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=0)


def test_gibbs_sweeps_reach_the_exact_distribution() -> None:
    dbm = random_dbm([4, 3, 2]).float()
    samples = dbm.sample(40_000, num_steps=60)
    exact = torch.softmax(brute_force_log_joint(dbm.double()).flatten(1).logsumexp(1), 0)
    total_variation = 0.5 * (empirical_distribution(samples) - exact).abs().sum()
    assert total_variation < 0.02


def test_update_is_the_hand_derived_stochastic_approximation() -> None:
    dbm = random_dbm([6, 5, 4], scale=0.3)
    v = torch.bernoulli(torch.full((7, 6), 0.4, dtype=torch.float64))
    mu = dbm.net.mean_field(v, 10)
    chains = dbm.net.split_layers(dbm.net.random_states(9))
    loss = dbm.stochastic_approximation_surrogate(mu, chains)
    loss.backward()
    # The update (minus the gradient) is <x_l x_{l+1}^T>_data - <x_l x_{l+1}^T>_model, from mu and the chains.
    for i, W in enumerate(dbm.net.weights):
        want = mu[i].t() @ mu[i + 1] / 7 - chains[i].t() @ chains[i + 1] / 9
        torch.testing.assert_close(-W.grad, want)
    for i, b in enumerate(dbm.net.biases):
        torch.testing.assert_close(-b.grad, mu[i].mean(0) - chains[i].mean(0))
    # ... which is the gradient of mean E(data) - mean E(model) with mu and the chains held fixed.
    params = [*dbm.net.weights, *dbm.net.biases]
    energy_gap = dbm.net.joint_energy([m.detach() for m in mu]).mean() - dbm.net.joint_energy(chains).mean()
    for p, g in zip(params, torch.autograd.grad(energy_gap, params)):
        torch.testing.assert_close(p.grad, g)


def test_pretraining_doubles_exactly_the_inputs_of_the_paper() -> None:
    assert pretraining_scales(2) == [(2.0, 1.0), (1.0, 2.0)]  # first: bottom-up 2 W; last: top-down 2 W
    assert pretraining_scales(3) == [(2.0, 1.0), (2.0, 2.0), (1.0, 2.0)]  # middle: both
    dbm = DBM([5, 4, 3, 2], layer_epochs=[1, 1, 1]).double()
    for rbm, (up, down) in zip(dbm.layers, pretraining_scales(3)):
        with torch.no_grad():
            rbm.W.normal_()
            rbm.visible_bias.normal_()
            rbm.hidden_bias.normal_()
        x = torch.rand(4, rbm.n_visible, dtype=torch.float64)
        h = torch.rand(4, rbm.n_hidden, dtype=torch.float64)
        torch.testing.assert_close(rbm.hidden_probs(x), torch.sigmoid(rbm.hidden_bias + up * x @ rbm.W))
        torch.testing.assert_close(rbm.visible_mean(h), torch.sigmoid(rbm.visible_bias + down * h @ rbm.W.t()))
    dbm.compose_pretrained()
    for i, rbm in enumerate(dbm.layers):
        torch.testing.assert_close(dbm.net.weights[i], rbm.W)
    torch.testing.assert_close(dbm.net.biases[0], dbm.layers[0].visible_bias)
    torch.testing.assert_close(dbm.net.biases[3], dbm.layers[2].hidden_bias)
    for i in (1, 2):  # a shared layer's bias: the mean of its two RBMs' biases
        torch.testing.assert_close(dbm.net.biases[i], (dbm.layers[i - 1].hidden_bias + dbm.layers[i].visible_bias) / 2)
    assert bool(dbm.composed)


def test_pretraining_then_joint_training_learns_bars_and_stripes() -> None:
    """Greedy pretraining (each layer its own epochs, trained on the doubled up-pass), then joint
    training: the exact log-likelihood rises far above the untrained model's, and the mean-field
    bound stays below it."""
    L.seed_everything(0)
    data = BARS_AND_STRIPES.repeat(32, 1)
    dbm = DBM(
        [9, 12, 8], layer_epochs=[20, 20], method="cd", k=5, layer_optimizer=sgd(0.1), num_filters=0,
        optimizer=sgd(0.1), num_chains=100, gibbs_steps=5, mean_field_steps=10,
    )  # fmt: skip
    untrained = float(exact_log_likelihood(dbm, BARS_AND_STRIPES).mean())
    trainer(60).fit(dbm, datamodule=TensorData(data, batch_size=32))
    assert bool(dbm.composed) and dbm.persistent_chains is not None and dbm.persistent_chains.shape == (100, 29)
    exact = exact_log_likelihood(dbm, BARS_AND_STRIPES)
    bound = log_likelihood(dbm, BARS_AND_STRIPES, exact_log_partition(dbm))
    assert untrained < -6.2 and float(exact.mean()) > -3.5  # uniform: -6.24; the data: log(1/14) = -2.64
    assert (bound <= exact + 1e-6).all()


@pytest.mark.parametrize("stop_after", [2, 4])
def test_resumed_run_matches_the_uninterrupted_one(tmp_path, stop_after: int) -> None:
    """Stopped inside pretraining (after epoch 2) or inside joint training (after epoch 4), resumed:
    same layer, same parameters, chains and composition."""
    data = BARS_AND_STRIPES.repeat(8, 1)

    def run(ckpt=None, stop_after: int | None = None) -> DBM:
        L.seed_everything(0)
        dbm = DBM(
            [9, 5, 4], layer_epochs=[1, 2], method="pcd", layer_num_chains=7, num_filters=0,
            optimizer=sgd(0.01), num_chains=11, gibbs_steps=2, mean_field_steps=3,
        )  # fmt: skip
        callbacks = [StopAfter(stop_after)] if stop_after else []
        t = trainer(5, default_root_dir=tmp_path, callbacks=callbacks)
        t.fit(dbm, datamodule=TensorData(data, batch_size=16), ckpt_path=ckpt)
        if stop_after:
            t.save_checkpoint(tmp_path / "stop.ckpt")
        return dbm

    full = run()
    run(stop_after=stop_after)  # in the second layer's pretraining, or in the joint phase
    resumed = run(ckpt=tmp_path / "stop.ckpt")
    for name, p in full.named_parameters():
        torch.testing.assert_close(resumed.get_parameter(name), p, msg=name)
    torch.testing.assert_close(resumed.persistent_chains, full.persistent_chains)
    torch.testing.assert_close(resumed.cd[1].visible, full.cd[1].visible)
    restored = DBM.load_from_checkpoint(tmp_path / "stop.ckpt")
    assert bool(restored.composed) == (stop_after > 3) and restored.cd[1].visible.shape == (7, 5)
    if stop_after > 3:  # the joint phase's fantasy particles travel in the checkpoint
        assert restored.persistent_chains.shape == (11, 9 + 5 + 4)


def test_sample_shapes_and_errors() -> None:
    dbm = DBM([12, 5, 3], data_shape=[1, 3, 4], sample_mean=True)
    assert dbm.sample(4, num_steps=2).shape == (4, 1, 3, 4)
    dbm.persistent_chains = dbm.net.random_states(2)
    assert dbm.sample(5, num_steps=1, start="chains").shape == (5, 1, 3, 4)
    assert dbm.energy(torch.zeros(3, 1, 3, 4)).shape == (3,)
    with pytest.raises(ValueError, match="layer_epochs needs one number"):
        DBM([4, 3, 2], layer_epochs=[1])
    with pytest.raises(ValueError, match="sample_start must be one of"):
        DBM([4, 3], sample_start="data")
    with pytest.raises(UserError, match="refusing above 25 units"):
        exact_log_partition(DBM([784, 30, 30]))
