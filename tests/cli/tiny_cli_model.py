"""A model, a data module and callbacks small enough for many command-line runs in a test.

They are addressed by class path (``tiny_cli_model.TinyEBM``) from configs written by the tests, so
that the command line's checks are tested without depending on the options of the shipped methods.
This folder is on ``sys.path`` under pytest; subprocesses get it through ``PYTHONPATH``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import lightning as L
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_ebm.models.base import NetworkModule

HERE = Path(__file__).resolve().parent


class TinyEBM(NetworkModule):
    """A two-layer energy on points, trained against Gaussian noise (contrastive, like an EBM).

    Args:
        data_shape: shape of one example.
        hidden: width of the hidden layer (the architecture).
        lr: SGD learning rate.
        noise_std: standard deviation of the negative samples; must be positive.
    """

    def __init__(self, data_shape: tuple[int, ...] = (2,), hidden: int = 8, lr: float = 0.05, noise_std: float = 1.0):
        super().__init__()
        if noise_std <= 0:
            raise ValueError(f"noise_std must be positive, got {noise_std}")
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(int(data_shape[0]), hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def energy(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)

    def sample(self, num_samples: int) -> Tensor:
        return torch.randn(num_samples, *self.hparams.data_shape) * self.hparams.noise_std

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        data = self.energy(batch[0])
        samples = self.energy(self.sample(batch[0].shape[0]))
        return data.mean() - samples.mean() + 0.1 * (data.pow(2).mean() + samples.pow(2).mean())

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        self.log("val/energy", self.energy(batch[0]).mean())

    test_step = validation_step

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class OtherTinyEBM(TinyEBM):
    """Another model class, for checkpoints of the wrong class."""


class TinyData(L.LightningDataModule):
    """``num_examples`` 2D points in batches of ``batch_size``, the last incomplete batch dropped."""

    def __init__(self, num_examples: int = 64, batch_size: int = 16) -> None:
        super().__init__()
        self.batch_size = batch_size
        generator = torch.Generator().manual_seed(0)
        self.train = torch.randn(num_examples, 2, generator=generator)
        self.val = torch.randn(32, 2, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.train), batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.val), batch_size=16)

    test_dataloader = val_dataloader


class NaNAt(L.Callback):
    """Sets every parameter to NaN before the training step ``step`` (once): a diverged run."""

    def __init__(self, step: int = 5) -> None:
        self.step = step
        self.done = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:  # noqa: ANN001
        if trainer.global_step == self.step and not self.done:
            self.done = True
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.fill_(float("nan"))


class DiskFullAt(L.Callback):
    """A log writer that finds the disk full at the end of epoch ``epoch``."""

    def __init__(self, epoch: int = 1, filename: str = "events.out") -> None:
        self.epoch = epoch
        self.filename = filename

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.filename)


def tiny_config(directory: Path, name: str = "tiny.yaml", **model: object) -> Path:
    """A config of :class:`TinyEBM` on :class:`TinyData` for 2 epochs of 4 batches, logs and checkpoints
    under ``directory/logs/tiny``; ``model`` overrides the model's options (``class_path`` its class)."""
    class_path = model.pop("class_path", "tiny_cli_model.TinyEBM")
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(directory / "logs"), "name": "tiny"},
            },
        },
        "model": {"class_path": class_path, "init_args": {"hidden": 8, "lr": 0.05, **model}},
        "data": {"class_path": "tiny_cli_model.TinyData", "init_args": {"num_examples": 64, "batch_size": 16}},
    }
    path = directory / name
    path.write_text(yaml.safe_dump(config))
    return path
