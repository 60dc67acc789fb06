"""Writing figures and images to TensorBoard and to PNG files in the run's log directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor


def run_dir(trainer: L.Trainer) -> Path:
    """The run's log directory (``<save_dir>/<name>/version_<n>`` for TensorBoard).

    Unlike ``trainer.log_dir`` it involves no collective call, so rank 0 alone may ask for it.
    """
    if trainer.loggers:
        log_dir = getattr(trainer.loggers[0], "log_dir", None) or trainer.loggers[0].save_dir
        if log_dir:
            return Path(log_dir)
    return Path(trainer.default_root_dir)


def plot_dir(trainer: L.Trainer) -> Path:
    """``<log_dir>/plots``: where the callbacks write their PNG files."""
    path = run_dir(trainer) / "plots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _tensorboard(trainer: L.Trainer) -> Any:
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def _png_name(tag: str, step: int) -> str:
    return f"{tag.replace('/', '_')}_step{step:07d}.png"


def log_figure(trainer: L.Trainer, tag: str, figure: Any) -> Path:
    """Write a matplotlib figure to TensorBoard (``tag``) and to ``plots/``; close it; return the PNG path."""
    import matplotlib.pyplot as plt

    step = trainer.global_step
    path = plot_dir(trainer) / _png_name(tag, step)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    writer = _tensorboard(trainer)
    if writer is not None:
        writer.add_figure(tag, figure, global_step=step, close=False)
    plt.close(figure)
    return path


def log_image(trainer: L.Trainer, tag: str, image: Tensor) -> Path:
    """Write a ``(C, H, W)`` image with values in [0, 1] to TensorBoard and to ``plots/``."""
    from torchvision.utils import save_image

    step = trainer.global_step
    path = plot_dir(trainer) / _png_name(tag, step)
    save_image(image, os.fspath(path))
    writer = _tensorboard(trainer)
    if writer is not None:
        writer.add_image(tag, image.clamp(0, 1), global_step=step)
    return path


def to_unit_range(images: Tensor, value_range: tuple[float, float] | None = None) -> Tensor:
    """Map images to [0, 1]: from ``value_range``, else from [-1, 1] if they have negative values."""
    if value_range is None:
        value_range = (-1.0, 1.0) if float(images.min()) < 0 else (0.0, 1.0)
    low, high = value_range
    return ((images.float() - low) / (high - low)).clamp(0, 1)


def reference_data(trainer: L.Trainer, max_points: int = 2500) -> Tensor | None:
    """Held-out (or training) data of the data module, if it exposes ``val_data``/``train_data`` tensors."""
    dm = trainer.datamodule
    for name in ("val_data", "train_data"):
        data = getattr(dm, name, None)
        if isinstance(data, Tensor):
            return data[:max_points]
    return None


def is_due(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """True every ``every_n_epochs`` epochs and at the last epoch (on every rank; never while sanity checking)."""
    if trainer.sanity_checking or every_n_epochs <= 0:
        return False
    epoch = trainer.current_epoch + 1
    last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
    return epoch % every_n_epochs == 0 or last


def should_run(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """True on rank 0 every ``every_n_epochs`` epochs, and at the last epoch."""
    return trainer.is_global_zero and is_due(trainer, every_n_epochs)


class EvaluationCollector(L.Callback):
    """Base of the callbacks that score every validation / test batch and compute their metrics over
    the whole split: validation epochs collect when ``is_due`` (every ``every_n_epochs``), test
    epochs always. Subclasses implement ``_start(active)``, ``_collect(trainer, pl_module, batch)``
    and their own ``on_validation_epoch_end`` / ``on_test_epoch_end``."""

    every_n_epochs: int = 1

    def _start(self, active: bool) -> None:
        raise NotImplementedError

    def _collect(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        raise NotImplementedError

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(is_due(trainer, self.every_n_epochs))

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(True)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self._collect(trainer, pl_module, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self._collect(trainer, pl_module, batch)
