"""What the callbacks share: writing figures and images to TensorBoard and to PNG files in the run's log
directory, when to run, gathering results over processes, and the bases of the periodic callbacks."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from lightning_ebm.errors import UserError
from lightning_ebm.utils import check_choices

#: the data modules' named value ranges (their ``value_range`` attribute).
NAMED_RANGES = {"symmetric": (-1.0, 1.0), "unit": (0.0, 1.0)}


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


def named_value_range(trainer: L.Trainer | None) -> tuple[float, float] | None:
    """The range of the data module's images when it names one (``value_range``: ``symmetric`` or ``unit``)."""
    named = getattr(getattr(trainer, "datamodule", None), "value_range", None)
    return NAMED_RANGES.get(named) if isinstance(named, str) else None


def reference_data(trainer: L.Trainer, max_points: int = 2500) -> Tensor | None:
    """Held-out (or training) data of the data module, if it exposes ``val_data``/``train_data`` tensors."""
    dm = trainer.datamodule
    for name in ("val_data", "train_data"):
        data = getattr(dm, name, None)
        if isinstance(data, Tensor):
            return data[:max_points]
    return None


def is_last_epoch(trainer: L.Trainer) -> bool:
    """True in the fit's last epoch (``max_epochs``)."""
    return trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs


def is_due(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """True every ``every_n_epochs`` epochs and at the last epoch (on every rank; never while sanity checking)."""
    if trainer.sanity_checking or every_n_epochs <= 0:
        return False
    return (trainer.current_epoch + 1) % every_n_epochs == 0 or is_last_epoch(trainer)


def should_run(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """True on rank 0 every ``every_n_epochs`` epochs, and at the last epoch."""
    return trainer.is_global_zero and is_due(trainer, every_n_epochs)


def gather_ragged(trainer: L.Trainer, value: Tensor) -> Tensor:
    """Concatenate every process's 1-D ``value`` (lengths may differ), in rank order."""
    if trainer.world_size == 1:
        return value
    length = torch.tensor([value.shape[0]], device=value.device)
    lengths = trainer.strategy.all_gather(length).flatten()
    padded = torch.full((int(lengths.max()),), math.nan, dtype=value.dtype, device=value.device)
    padded[: value.shape[0]] = value
    gathered = trainer.strategy.all_gather(padded)
    return torch.cat([gathered[r, : int(n)] for r, n in enumerate(lengths)])


def check_scores(
    owner: str, scores: Sequence[str], score_function: Callable[..., Any], choices: Sequence[str]
) -> tuple[str, ...]:
    """``scores`` as a tuple, once checked: at least one, and each a ``score`` that ``score_function``
    takes (one of ``choices``)."""
    if not scores:
        raise UserError(f"{owner} needs at least one score of {', '.join(choices)}")
    for score in scores:
        check_choices(score_function, {"score": score})
    return tuple(scores)


def log_rank_zero_values(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    names: Sequence[str],
    compute: Callable[[], Sequence[float] | Tensor],
    prog_bar: bool = False,
) -> dict[str, float]:
    """Run ``compute`` (one value per name) on rank 0 alone while the other ranks wait, broadcast its
    values so that every rank logs the same ones under ``names`` (a checkpoint may monitor them), and
    return them as ``{name: value}``."""
    values = torch.zeros(len(names), dtype=torch.float64, device=pl_module.device)
    if trainer.is_global_zero:
        values = torch.as_tensor(compute(), dtype=torch.float64).to(pl_module.device)
    values = trainer.strategy.broadcast(values, src=0)
    for name, value in zip(names, values):
        pl_module.log(name, value.float(), prog_bar=prog_bar)
    return {name: float(value) for name, value in zip(names, values)}


class PeriodicPlot(L.Callback):
    """Base of the callbacks that plot every ``every_n_epochs`` training epochs and at the last one, on
    rank 0. Subclasses implement ``plot(trainer, pl_module)``, which keeps the PNG's path in ``last_path``."""

    def __init__(self, every_n_epochs: int) -> None:
        self.every_n_epochs = every_n_epochs
        self.last_path: Path | None = None

    def plot(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise NotImplementedError

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if should_run(trainer, self.every_n_epochs):
            self.plot(trainer, pl_module)


class RankZeroEvaluation(L.Callback):
    """Base of the callbacks that evaluate the model on rank 0 alone (sampling, AIS) every
    ``every_n_epochs`` validation epochs (and at the last) and in every test epoch, and log the result
    on every rank. Subclasses implement ``_evaluate_and_log(trainer, pl_module, stage)`` (``stage``:
    ``val`` or ``test``), usually with :func:`log_rank_zero_values`."""

    every_n_epochs: int = 1

    def _evaluate_and_log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        raise NotImplementedError

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if is_due(trainer, self.every_n_epochs):
            self._evaluate_and_log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluate_and_log(trainer, pl_module, "test")


class EvaluationCollector(L.Callback):
    """Base of the callbacks that score every validation / test batch and compute their metrics over
    the whole split: validation epochs collect when ``is_due`` (every ``every_n_epochs``), test
    epochs always. Subclasses implement ``_start(active)``, ``_collect(trainer, pl_module, batch)``
    and ``_finish(trainer, pl_module, stage)`` (``stage``: ``val`` or ``test``), called at the end of
    every validation / test epoch."""

    every_n_epochs: int = 1

    def _start(self, active: bool) -> None:
        raise NotImplementedError

    def _collect(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        raise NotImplementedError

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        raise NotImplementedError

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(is_due(trainer, self.every_n_epochs))

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(True)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self._collect(trainer, pl_module, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self._collect(trainer, pl_module, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "test")
