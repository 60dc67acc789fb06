"""2D toy data: formulas and scales of the reference code, determinism, batching."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from lightning_ebm.datamodules import TOY_NAMES, TensorBatches, Toy2DDataModule, mode_centres, sample_toy2d
from lightning_ebm.errors import UserError


def draw(name: str, n: int = 20_000, seed: int = 0) -> torch.Tensor:
    return sample_toy2d(name, n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", TOY_NAMES)
def test_deterministic_for_a_seed(name: str) -> None:
    a, b, c = draw(name, 1000, 1), draw(name, 1000, 1), draw(name, 1000, 2)
    assert a.shape == (1000, 2) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_25gaussians_grid_scale_and_balance() -> None:
    centres, std = mode_centres("25gaussians")
    # WGAN-GP: centres 2*{-2..2}^2 and std 0.05, everything divided by 2.828.
    assert torch.allclose(centres.unique(), torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0]) / 2.828)
    assert std == pytest.approx(0.05 / 2.828)
    x = draw("25gaussians", 25_000)
    dist, nearest = torch.cdist(x, centres).min(1)
    assert torch.bincount(nearest, minlength=25).tolist() == [1000] * 25  # equal counts per mode
    # distance to the centre / std is chi with 2 degrees of freedom: P(< 3 std) = 1 - exp(-4.5)
    assert float((dist < 3 * std).float().mean()) == pytest.approx(1 - math.exp(-4.5), abs=0.003)
    assert float((dist / std).pow(2).mean()) == pytest.approx(2.0, rel=0.03)


def test_8gaussians_ring() -> None:
    centres, std = mode_centres("8gaussians")
    torch.testing.assert_close(centres.norm(dim=1), torch.full((8,), 2.0 / 1.414))
    assert std == pytest.approx(0.02 / 1.414)
    x = draw("8gaussians", 40_000)
    dist, nearest = torch.cdist(x, centres).min(1)
    counts = torch.bincount(nearest, minlength=8).float()
    assert float(counts.min()) > 0.11 * 40_000  # uniform over 8 modes (1/8 = 0.125)
    assert float((dist / std).pow(2).mean()) == pytest.approx(2.0, rel=0.03)


def test_swissroll_scale() -> None:
    x = draw("swissroll", 50_000) * 7.5  # undo the WGAN-GP scaling: scikit-learn's roll
    radius = x.norm(dim=1)
    # t ~ U(1.5 pi, 4.5 pi) and (x, z) = t (cos t, sin t): the radius (noise 0.25) spans [4.7, 14.1]
    assert float(radius.quantile(0.005)) == pytest.approx(1.5 * math.pi, abs=0.8)
    assert float(radius.quantile(0.995)) == pytest.approx(4.5 * math.pi, abs=0.8)


def test_rings_radii() -> None:
    x = draw("rings", 40_000)
    radius = x.norm(dim=1)
    for r in (0.75, 1.5, 2.25, 3.0):  # radii 1, .75, .5, .25 times 3
        assert float(((radius - r).abs() < 0.3).float().mean()) == pytest.approx(0.25, abs=0.02)


def test_checkerboard_squares() -> None:
    x = draw("checkerboard", 40_000)
    assert float(x.abs().max()) <= 4.0
    cells = torch.floor(x / 2).long() + 2  # 4 x 4 cells of side 2 on [-4, 4]^2
    parity = (cells[:, 0] + cells[:, 1]) % 2
    assert parity.unique().numel() == 1  # only one colour of the board is filled
    assert torch.unique(cells, dim=0).shape[0] == 8


def test_2spirals_range() -> None:
    x = draw("2spirals", 20_001)
    assert x.shape == (20_001, 2)
    assert 3.0 < float(x.abs().max()) < 4.5
    torch.testing.assert_close(x.mean(0), torch.zeros(2), atol=0.1, rtol=0)


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="name must be one of 'swissroll', '8gaussians'"):
        Toy2DDataModule(name="25gaussian")


def test_datamodule_splits_and_modes() -> None:
    dm = Toy2DDataModule(name="8gaussians", num_samples=1000, batch_size=100, seed=3, num_val_samples=250)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 10 and all(b.shape == (100, 2) for b in batches)
    assert sum(b.shape[0] for b in dm.val_dataloader()) == 250
    assert dm.centres.shape == (8, 2) and dm.std == pytest.approx(0.02 / 1.414)
    assert Toy2DDataModule(name="swissroll").centres is None
    again = Toy2DDataModule(name="8gaussians", num_samples=1000, batch_size=100, seed=3, num_val_samples=250)
    again.setup("fit")
    assert torch.equal(dm.train_data, again.train_data)


def test_tensor_batches_shard_by_rank_and_resume_mid_epoch() -> None:
    data = torch.arange(100).float()
    ranks = [TensorBatches(data, batch_size=10, seed=1, rank=r, world_size=2) for r in range(2)]
    seen = [torch.cat(list(loader)) for loader in ranks]
    assert len(ranks[0]) == 5
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    assert sorted(seen[0].tolist() + seen[1].tolist()) == list(range(100))

    loader = TensorBatches(data, batch_size=10, seed=1)
    first_epoch = list(loader)
    second_epoch = list(loader)
    assert not torch.equal(torch.cat(first_epoch), torch.cat(second_epoch))  # reshuffled

    resumed_from = TensorBatches(data, batch_size=10, seed=1)
    list(resumed_from)  # epoch 0
    it = iter(resumed_from)
    head = [next(it) for _ in range(3)]  # 3 batches of epoch 1, then "killed"
    state = resumed_from.state_dict()
    restored = TensorBatches(data, batch_size=10, seed=1)
    restored.load_state_dict(state)
    tail = list(restored)
    assert torch.equal(torch.cat(head + tail), torch.cat(second_epoch))
    fresh = TensorBatches(data, batch_size=10, seed=1)
    list(fresh), list(fresh)
    assert torch.equal(torch.cat(list(restored)), torch.cat(list(fresh)))  # then epoch 2 as usual


class _RecordBatches(L.LightningModule):
    """Records the batches it is trained on, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[int, list[torch.Tensor]] = {}

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self.seen.setdefault(self.current_epoch, []).append(batch.clone())
        return self.weight * batch.sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_a_run_resumed_from_an_end_of_epoch_checkpoint_sees_the_next_epochs_batches(tmp_path) -> None:
    """At an epoch boundary Lightning restores no loader state; the trainer's set_epoch must then
    select the resumed epoch's permutation (before the fix the resumed run replayed epoch 0's)."""

    def fit(epochs: int, ckpt: str | None = None) -> _RecordBatches:
        model = _RecordBatches()
        trainer = L.Trainer(max_epochs=epochs, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                            limit_val_batches=0, enable_model_summary=False)  # fmt: skip
        trainer.fit(model, Toy2DDataModule(name="8gaussians", num_samples=64, batch_size=16), ckpt_path=ckpt)
        return model

    full = fit(3)
    fit(2)
    resumed = fit(3, str(tmp_path / "checkpoints" / "epoch=1-step=8.ckpt"))
    assert list(resumed.seen) == [2]
    for a, b in zip(resumed.seen[2], full.seen[2], strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(full.seen[2][0], full.seen[0][0])


@pytest.mark.parametrize("name", TOY_NAMES)
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_tiny_sets_are_drawn_whole_and_finite(name: str, n: int) -> None:
    """Even a validation set of a few points (rings used to divide by its empty quarters' size)."""
    x = draw(name, n)
    assert x.shape == (n, 2) and bool(torch.isfinite(x).all())
    dm = Toy2DDataModule(name=name, num_samples=8, batch_size=4, num_val_samples=n)
    dm.setup()
    assert sum(b.shape[0] for b in dm.val_dataloader()) == n


def test_a_non_finite_point_stops_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The data never holds NaN: were a formula to produce one, setup names the set, the index and the fix."""
    import lightning_ebm.datamodules.toy2d as toy2d

    real = toy2d.sample_toy2d

    def broken(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        x = real(name, n, generator)
        if n == 500:  # the training set
            x[137, 1] = float("nan")
        return x

    monkeypatch.setattr(toy2d, "sample_toy2d", broken)
    dm = Toy2DDataModule(name="rings", num_samples=500, batch_size=50, num_val_samples=100)
    with pytest.raises(UserError, match=r"'rings' drew a non-finite point \(\[.*, nan\]\) at index 137 of its train"):
        dm.setup()
    assert dm.train_data is None  # nothing half set up


def test_batches_with_labels_and_the_test_split() -> None:
    dm = Toy2DDataModule(name="25gaussians", num_samples=500, batch_size=50, num_val_samples=120, labels=True)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (50, 2) and torch.equal(y, dm.component(x))
    test = list(dm.test_dataloader())
    assert torch.equal(torch.cat([b[0] for b in test]), dm.val_data)  # the test split is the validation set
    assert torch.equal(torch.cat([b[1] for b in test]), dm.val_labels)
    assert [b[0].shape[0] for b in test] == [120]  # one batch of min(4 * batch_size, 120)
