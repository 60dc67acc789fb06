"""Callbacks, on a model whose density is known in closed form (they rely on the contract only)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from lightning_ebm.callbacks import ConditionalSampleGrid, EnergyLandscape, SampleGrid, ToyModeMetrics
from lightning_ebm.datamodules import Toy2DDataModule, mode_centres
from lightning_ebm.evaluation import density_grid
from lightning_ebm.models import EnergyBasedModel


class GaussianEBM(EnergyBasedModel):
    """E(x) = ||x - mu||^2 / (2 s^2): an isotropic Gaussian, sampled exactly."""

    def __init__(self, mu: tuple[float, ...] = (0.5, -0.25), s: float = 0.3, data_shape=(2,)) -> None:
        super().__init__(data_shape)
        self.save_hyperparameters()
        mu_tensor = torch.tensor(mu).view(*self.data_shape) if len(mu) > 1 else torch.full(self.data_shape, mu[0])
        self.mu = nn.Parameter(mu_tensor)

    def energy(self, x: Tensor) -> Tensor:
        return (x - self.mu).flatten(1).pow(2).sum(1) / (2 * self.hparams.s**2)

    def sample(self, num_samples: int) -> Tensor:
        return self.mu + self.hparams.s * torch.randn(num_samples, *self.data_shape, device=self.device)

    def training_step(self, batch, batch_idx):  # a dummy loss that keeps mu in place
        return (self.mu * 0).sum() + 0 * self.energy(self.batch_data(batch)).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_density_grid_is_the_normalised_gaussian() -> None:
    model = GaussianEBM()
    gx, gy, log_density = density_grid(model.energy, (-1.5, 2.5, -2.25, 1.75), resolution=161)
    cell = (4.0 / 160) ** 2
    points = torch.stack([gx, gy], -1)
    exact = torch.exp(-(points - torch.tensor([0.5, -0.25])).pow(2).sum(-1) / (2 * 0.09)) / (2 * math.pi * 0.09)
    torch.testing.assert_close(log_density.exp(), exact * cell, atol=2e-5, rtol=2e-3)
    assert float(log_density.exp().sum()) == pytest.approx(1.0)
    peak = int(log_density.argmax())
    assert tuple(points[peak // 161, peak % 161].tolist()) == pytest.approx((0.5, -0.25))


def _trainer(tmp_path: Path, callbacks: list[L.Callback], epochs: int = 2) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs, limit_train_batches=2, callbacks=callbacks, enable_progress_bar=False,
        logger=TensorBoardLogger(tmp_path, name="run"), enable_checkpointing=False,
    )  # fmt: skip


def test_plots_go_to_tensorboard_and_png(tmp_path: Path) -> None:
    grid, landscape = SampleGrid(num_samples=500, every_n_epochs=1), EnergyLandscape(resolution=50)
    trainer = _trainer(tmp_path, [grid, landscape])
    trainer.fit(GaussianEBM(), Toy2DDataModule(name="8gaussians", num_samples=512, batch_size=128))
    plots = tmp_path / "run" / "version_0" / "plots"
    names = sorted(p.name for p in plots.glob("*.png"))
    assert names == [
        "energy_landscape_step0000002.png", "energy_landscape_step0000004.png",
        "samples_step0000002.png", "samples_step0000004.png",
    ]  # fmt: skip
    assert grid.last_path == plots / "samples_step0000004.png"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = EventAccumulator(str(tmp_path / "run" / "version_0")).Reload().Tags()["images"]
    assert {"samples", "energy_landscape"} <= set(images)


def test_sample_grid_of_images(tmp_path: Path) -> None:
    from PIL import Image

    class ImageModel(GaussianEBM):
        def __init__(self) -> None:
            super().__init__(mu=(0.0,), s=0.5, data_shape=(1, 8, 8))

    class ImageData(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.rand(16, 1, 8, 8), batch_size=8)

    grid = SampleGrid(num_samples=16, nrow=4, value_range=(-1.0, 1.0))
    _trainer(tmp_path, [grid], epochs=1).fit(ImageModel(), ImageData())
    image = Image.open(grid.last_path)
    assert image.size == (4 * 8 + 5 * 2, 4 * 8 + 5 * 2)  # 4 x 4 images of 8 pixels, padding 2
    with pytest.raises(ValueError, match="needs 2D data"):
        EnergyLandscape().plot(L.Trainer(logger=False), ImageModel())


def test_conditional_sample_grid_asks_for_each_class_in_turn(tmp_path: Path) -> None:
    from PIL import Image

    class ClassImages(GaussianEBM):
        """Class ``y``'s samples are images filled with ``y`` (recorded, so the request can be checked)."""

        num_classes = 3

        def __init__(self, data_shape=(1, 8, 8)) -> None:
            super().__init__(mu=(0.0,), s=0.5, data_shape=data_shape)
            self.requested: list[Tensor] = []

        def sample(self, num_samples: int, y: Tensor | None = None) -> Tensor:
            self.requested.append(y)
            return y.float().view(-1, *[1] * len(self.data_shape)).expand(num_samples, *self.data_shape).clone()

    class Data(L.LightningDataModule):
        def __init__(self, shape) -> None:
            super().__init__()
            self.shape = shape

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.rand(16, *self.shape), batch_size=8)

    grid = ConditionalSampleGrid(samples_per_class=4, value_range=(0.0, 2.0))
    images = ClassImages()
    _trainer(tmp_path / "images", [grid], epochs=1).fit(images, Data((1, 8, 8)))
    assert images.requested[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    image = Image.open(grid.last_path)
    assert image.size == (4 * 8 + 5 * 2, 3 * 8 + 4 * 2)  # one row of 4 images per class, padding 2
    # the rows get brighter with the class: 0, 1/2 and 1 of the value range
    pixels = torch.tensor(list(image.convert("L").getdata()), dtype=torch.float32).view(image.size[1], image.size[0])
    rows = [pixels[2 + r * 10 : 10 + r * 10, 2:10].mean().item() for r in range(3)]
    assert rows[0] < 5 and abs(rows[1] - 127.5) < 2 and rows[2] > 250

    points = ConditionalSampleGrid(samples_per_class=5)
    _trainer(tmp_path / "points", [points], epochs=1).fit(ClassImages(data_shape=(2,)), Data((2,)))
    assert points.last_path is not None and Path(points.last_path).is_file()

    with pytest.raises(ValueError, match="needs a class-conditional model"):
        ConditionalSampleGrid().plot(L.Trainer(logger=False), GaussianEBM())


def test_toy_mode_metrics_of_a_model_on_one_mode(tmp_path: Path) -> None:
    centres, std = mode_centres("25gaussians")
    model = GaussianEBM(mu=tuple(centres[7].tolist()), s=std)  # exactly one component of the mixture
    metrics = ToyModeMetrics(num_samples=4000)
    trainer = _trainer(tmp_path, [metrics], epochs=1)
    trainer.fit(model, Toy2DDataModule(name="25gaussians", num_samples=1024, batch_size=256))
    assert metrics.last["modes"] == 1.0
    assert metrics.last["hq_fraction"] == pytest.approx(1 - math.exp(-4.5), abs=0.01)
    assert metrics.last["kl"] == pytest.approx(math.log(25))
    assert float(trainer.callback_metrics["toy/modes"]) == 1.0


def test_toy_mode_metrics_skip_data_without_modes(tmp_path: Path) -> None:
    metrics = ToyModeMetrics(num_samples=100)
    _trainer(tmp_path, [metrics], epochs=1).fit(GaussianEBM(), Toy2DDataModule(name="swissroll", num_samples=512))
    assert metrics.last == {}
