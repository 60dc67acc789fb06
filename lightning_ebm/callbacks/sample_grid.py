"""Plots of model samples: an image grid, or a scatter plot for 2D data."""

from __future__ import annotations

import lightning as L
import torch
from torchvision.utils import make_grid

from lightning_ebm.callbacks.utils import PeriodicPlot, log_figure, log_image, reference_data, to_unit_range
from lightning_ebm.models.base import EnergyBasedModel


def _log_samples(
    callback: L.Callback,
    trainer: L.Trainer,
    tag: str,
    samples: torch.Tensor,
    nrow: int,
    value_range: tuple[float, float] | None,
    labels: torch.Tensor | None = None,
) -> str | None:
    """Log ``samples`` under ``tag``: an image grid of ``nrow`` per row, or a scatter plot of 2D points
    over the held-out data (coloured by ``labels`` when given). Returns the PNG's path."""
    if samples.dim() == 2 and samples.shape[1] == 2:
        return log_figure(trainer, tag, _scatter(trainer, samples, labels))
    if samples.dim() in (3, 4):
        images = samples.unsqueeze(1) if samples.dim() == 3 else samples
        return log_image(trainer, tag, make_grid(to_unit_range(images, value_range), nrow=nrow, padding=2))
    raise ValueError(
        f"{type(callback).__name__} plots images or 2D points, got samples of shape {tuple(samples.shape)}"
    )


def _scatter(trainer: L.Trainer, samples: torch.Tensor, labels: torch.Tensor | None):  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    data = reference_data(trainer)
    if labels is None:
        if data is not None:
            ax.scatter(data[:, 0], data[:, 1], s=2, c="tab:gray", alpha=0.4, label="data")
        ax.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:red", alpha=0.6, label="samples")
        ax.legend(loc="upper right", markerscale=4)
        ax.set_title(f"samples, epoch {trainer.current_epoch}, step {trainer.global_step}")
    else:
        if data is not None:
            ax.scatter(data[:, 0], data[:, 1], s=2, c="tab:gray", alpha=0.3)
        ax.scatter(samples[:, 0], samples[:, 1], s=4, c=labels.numpy(), cmap="tab20", alpha=0.8)
        ax.set_title(f"samples per class, epoch {trainer.current_epoch}")
    ax.set_aspect("equal")
    return fig


class SampleGrid(PeriodicPlot):
    """Every ``every_n_epochs`` epochs, draw ``model.sample(num_samples)`` and plot it.

    Images become a grid; 2D points a scatter plot over the held-out data. Written to TensorBoard
    (tag ``samples``) and as PNG files in ``<log_dir>/plots/``.

    Args:
        num_samples: samples per plot (64 images; use ~2,500 for 2D).
        every_n_epochs: plotting period in epochs (also at the last epoch).
        nrow: images per row of the grid.
        value_range: data range of the images (default: [-1, 1] if values are negative, else [0, 1]).
    """

    def __init__(
        self,
        num_samples: int = 64,
        every_n_epochs: int = 1,
        nrow: int = 8,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(every_n_epochs)
        self.num_samples = num_samples
        self.nrow = nrow
        self.value_range = value_range

    @torch.no_grad()
    def plot(self, trainer: L.Trainer, pl_module: EnergyBasedModel) -> None:
        samples = pl_module.sample(self.num_samples).detach().float().cpu()
        self.last_path = _log_samples(self, trainer, "samples", samples, self.nrow, self.value_range)


class ConditionalSampleGrid(PeriodicPlot):
    """Every ``every_n_epochs`` epochs, draw ``samples_per_class`` samples of each class with the
    model's ``sample(n, y=...)`` and plot them: one row per class for images, a scatter plot coloured
    by class for 2D points (tag ``conditional_samples``; TensorBoard and ``<log_dir>/plots/``).

    It uses only the model's public API: ``sample(n, y=labels[, steps=...])`` and ``num_classes``.

    Args:
        samples_per_class: samples of each class (a row of the grid).
        every_n_epochs: plotting period in epochs (also at the last epoch).
        steps: sampler steps per chain (default: the model's own).
        value_range: data range of the images (default: [-1, 1] if values are negative, else [0, 1]).
        max_classes: plot at most this many classes (the first ones).
    """

    def __init__(
        self,
        samples_per_class: int = 8,
        every_n_epochs: int = 1,
        steps: int | None = None,
        value_range: tuple[float, float] | None = None,
        max_classes: int = 10,
    ) -> None:
        super().__init__(every_n_epochs)
        self.samples_per_class = samples_per_class
        self.steps = steps
        self.value_range = value_range
        self.max_classes = max_classes

    @torch.no_grad()
    def plot(self, trainer: L.Trainer, pl_module: EnergyBasedModel) -> None:
        num_classes = getattr(pl_module, "num_classes", None)
        if num_classes is None:
            raise ValueError(
                f"ConditionalSampleGrid needs a class-conditional model; {type(pl_module).__name__} has no num_classes"
            )
        classes = min(int(num_classes), self.max_classes)
        labels = torch.arange(classes, device=pl_module.device).repeat_interleave(self.samples_per_class)
        kwargs = {} if self.steps is None else {"steps": self.steps}
        samples = pl_module.sample(labels.numel(), y=labels, **kwargs).detach().float().cpu()
        self.last_path = _log_samples(
            self, trainer, "conditional_samples", samples, self.samples_per_class, self.value_range, labels.cpu()
        )
