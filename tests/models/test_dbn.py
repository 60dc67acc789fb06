"""DBN: log p(v) and the variational bound against brute-force enumeration, the tied start of a new
layer against the net below it, the greedy schedule (one layer at a time, its own epochs, resumed in
the right layer) and the bound against the first RBM's likelihood."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers.boltzmann import BARS_AND_STRIPES, StopAfter, TensorData, all_states, trainer

from lightning_ebm.evaluation import estimate_log_partition, exact_log_likelihood, exact_log_partition, log_likelihood
from lightning_ebm.models import DBN
from lightning_ebm.optim import spec


def sgd(lr: float) -> dict:
    return spec("torch.optim.SGD", lr=lr, momentum=0.5, weight_decay=2e-4)


def random_dbn(sizes: list[int], scale: float = 0.8, seed: int = 0, **kwargs) -> DBN:
    torch.manual_seed(seed)
    dbn = DBN(sizes, [1] * (len(sizes) - 1), **kwargs)
    with torch.no_grad():
        for rbm in dbn.layers:
            rbm.W.normal_(0, scale)
            rbm.visible_bias.normal_(0, 0.5)
            rbm.hidden_bias.normal_(0, 0.5)
    return dbn.double()


def log_bernoulli(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``log p(x | logits)`` for every pair: ``x`` (a, n), ``logits`` (b, n) -> (a, b)."""
    return x @ logits.t() - F.softplus(logits).sum(1)


def brute_force(dbn: DBN, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``log p(v)`` and the exact bound (1) of a 2-hidden-layer DBN, enumerating ``h1``."""
    bottom, top = dbn.layers
    h = all_states(bottom.n_hidden)
    log_prior = -top.free_energy(h)
    log_prior = log_prior - torch.logsumexp(log_prior, 0)  # log p_top(h1)
    log_lik = log_bernoulli(v, bottom.visible_bias + h @ bottom.W.t())  # log p(v | h1), (v, h1)
    exact = torch.logsumexp(log_lik + log_prior, 1)
    log_q = log_bernoulli(h, bottom.hidden_input(v)).t()  # log q(h1 | v), (v, h1)
    q = log_q.exp()
    bound = (q * (log_lik + log_prior - log_q)).sum(1)
    return exact.detach(), bound.detach()


@pytest.mark.parametrize("sizes", [[6, 4, 3], [5, 3, 4, 2]])
def test_exact_log_likelihood_matches_brute_force(sizes: list[int]) -> None:
    dbn = random_dbn(sizes)
    v = all_states(sizes[0])
    got = exact_log_likelihood(dbn, v)
    torch.testing.assert_close(torch.logsumexp(got, 0), torch.zeros((), dtype=torch.float64))  # sums to 1
    if len(sizes) == 3:
        torch.testing.assert_close(got, brute_force(dbn, v)[0])


def test_variational_bound_is_below_the_exact_log_likelihood() -> None:
    dbn = random_dbn([6, 4, 3])
    v = all_states(6)
    exact, bound = brute_force(dbn, v)
    assert (bound <= exact + 1e-12).all() and float((exact - bound).mean()) > 0.01
    torch.manual_seed(1)
    estimate = -dbn.variational_free_energy(v, num_samples=20_000) - exact_log_partition(dbn)
    torch.testing.assert_close(estimate, bound, atol=0.06, rtol=0)  # the Monte-Carlo bound is unbiased
    assert float(log_likelihood(dbn, v, exact_log_partition(dbn)).mean()) < float(exact.mean())


def test_one_layer_dbn_is_its_rbm() -> None:
    dbn = random_dbn([6, 4])
    v = all_states(6)
    torch.testing.assert_close(dbn.energy(v), dbn.layers[0].free_energy(v))
    torch.testing.assert_close(exact_log_likelihood(dbn, v), dbn.layers[0].exact_log_likelihood(v))


def test_a_tied_second_layer_leaves_the_likelihood_of_the_first_rbm() -> None:
    """With the transposed weights of the RBM below (Hinton et al. 2006), the top RBM's marginal on
    h1 is the first RBM's, so the two-layer DBN defines the same p(v) and the bound is tight."""
    dbn = random_dbn([6, 4, 6])
    dbn.depth.fill_(1)
    rbm_ll = exact_log_likelihood(dbn, all_states(6))
    dbn._tie_to_layer_below(1)
    dbn.depth.fill_(2)
    torch.testing.assert_close(exact_log_likelihood(dbn, all_states(6)), rbm_ll)
    exact, bound = brute_force(dbn, all_states(6))
    torch.testing.assert_close(bound, exact)


def test_ais_estimates_the_top_rbms_log_partition() -> None:
    dbn = random_dbn([6, 5, 8]).float()
    data = torch.bernoulli(torch.full((40, 6), 0.3))
    estimate = estimate_log_partition(dbn, num_chains=200, betas=2000, data=data, seed=0)
    assert abs(estimate.estimate - dbn.layers[1].exact_log_partition()) < 0.1


class LayerLog(L.Callback):
    """Records, per epoch, the layers whose parameters changed and the layers whose metrics were logged."""

    def __init__(self) -> None:
        self.changed: list[list[int]] = []
        self.logged: list[set[str]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.before = [rbm.W.detach().clone() for rbm in pl_module.layers]
        self.metrics = {k: v.clone() for k, v in trainer.logged_metrics.items()}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.changed.append([i for i, rbm in enumerate(pl_module.layers) if not torch.equal(rbm.W, self.before[i])])
        fresh = [k for k, v in trainer.logged_metrics.items() if k not in self.metrics or v != self.metrics[k]]
        self.logged.append({k.split("/")[1] for k in fresh if k.startswith("train/layer")})


def test_greedy_schedule_trains_one_layer_at_a_time_and_stops() -> None:
    L.seed_everything(0)
    dbn = DBN([9, 6, 5], layer_epochs=[2, 1], k=1, layer_optimizer=sgd(0.1), num_filters=0)
    record = LayerLog()
    t = trainer(10, callbacks=[record], log_every_n_steps=1)
    t.fit(dbn, datamodule=TensorData(BARS_AND_STRIPES.repeat(8, 1), batch_size=16))
    assert t.current_epoch == 3  # stopped once the last layer was trained, not at max_epochs
    assert record.changed == [[0], [0], [1]]
    assert record.logged[0] == {"layer0", "layer"} and record.logged[2] == {"layer1", "layer"}
    assert int(dbn.depth) == 2


def test_resumed_run_continues_in_the_right_layer() -> None:
    data = BARS_AND_STRIPES.repeat(8, 1)

    def run(tmp_path, ckpt=None, stop_after: int | None = None) -> DBN:
        L.seed_everything(0)
        dbn = DBN([9, 6, 9], layer_epochs=[2, 2], method="pcd", num_chains=5, layer_optimizer=sgd(0.05), num_filters=0)
        callbacks = [StopAfter(stop_after)] if stop_after else []
        t = trainer(4, default_root_dir=tmp_path, callbacks=callbacks)
        t.fit(dbn, datamodule=TensorData(data, batch_size=16), ckpt_path=ckpt)
        if stop_after:
            t.save_checkpoint(tmp_path / f"stop{stop_after}.ckpt")
        return dbn

    def check(tmp_path, stop_after: int) -> None:
        full = run(tmp_path)
        run(tmp_path, stop_after=stop_after)
        resumed = run(tmp_path, ckpt=tmp_path / f"stop{stop_after}.ckpt")
        for name, p in full.named_parameters():
            torch.testing.assert_close(resumed.get_parameter(name), p, msg=name)
        for a, b in zip(full.cd, resumed.cd):
            torch.testing.assert_close(a.visible, b.visible)

    import tempfile
    from pathlib import Path

    for stop_after in (2, 3):  # at the layer boundary (the tied start must happen) and inside layer 1
        with tempfile.TemporaryDirectory() as d:
            check(Path(d), stop_after)


def test_dbn_bound_is_no_worse_than_its_first_rbm() -> None:
    """Bars and stripes: the first RBM's exact likelihood, then the two-layer DBN's exact bound (tied
    start, then trained): the second layer improves the prior over h1, so the bound rises above it."""
    L.seed_everything(0)
    data = BARS_AND_STRIPES.repeat(32, 1).double()
    v = BARS_AND_STRIPES.double()
    dbn = DBN([9, 8, 9], layer_epochs=[30, 30], method="cd", k=5, layer_optimizer=sgd(0.1), num_filters=0).double()
    first_rbm: list[float] = []

    class FirstRBM(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 29:  # the first layer's last epoch: the DBN is that RBM
                first_rbm.append(float(exact_log_likelihood(pl_module, v).mean()))

    trainer(100, callbacks=[FirstRBM()]).fit(dbn, datamodule=TensorData(data, batch_size=32))
    rbm_ll = first_rbm[0]
    assert int(dbn.depth) == 2
    exact, bound = brute_force(dbn, v)
    assert float(bound.mean()) >= rbm_ll - 0.01, (float(bound.mean()), rbm_ll)
    print(f"first RBM {rbm_ll:.3f}, DBN bound {float(bound.mean()):.3f}, DBN exact {float(exact.mean()):.3f}")
    assert float(exact.mean()) >= float(bound.mean())


def test_sample_shapes() -> None:
    dbn = DBN([12, 5, 3], layer_epochs=[1, 1], data_shape=[1, 3, 4], sample_mean=True)
    samples = dbn.sample(4, num_steps=3)
    assert samples.shape == (4, 1, 3, 4) and ((samples > 0) & (samples < 1)).all()
    assert dbn.energy(torch.zeros(2, 1, 3, 4)).shape == (2,)


def test_resuming_a_finished_dbn_with_more_epochs_does_nothing(tmp_path) -> None:
    L.seed_everything(0)
    dbn = DBN([9, 6, 5], layer_epochs=[1, 1], num_filters=0)
    data = TensorData(BARS_AND_STRIPES.repeat(4, 1), batch_size=16)
    t = trainer(2, default_root_dir=tmp_path)
    t.fit(dbn, datamodule=data)
    t.save_checkpoint(tmp_path / "done.ckpt")
    weights = [rbm.W.detach().clone() for rbm in dbn.layers]
    with pytest.warns(UserWarning, match="already trained"):
        trainer(5, default_root_dir=tmp_path).fit(dbn, datamodule=data, ckpt_path=tmp_path / "done.ckpt")
    for rbm, w in zip(dbn.layers, weights):
        torch.testing.assert_close(rbm.W, w)
