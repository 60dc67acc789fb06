"""Heat map of the model density exp(-E) over the plane, for 2D data."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from lightning_ebm.callbacks.utils import PeriodicPlot, log_figure, reference_data
from lightning_ebm.evaluation.landscape import density_grid
from lightning_ebm.models.base import EnergyBasedModel
from lightning_ebm.utils import eval_mode


class EnergyLandscape(PeriodicPlot):
    """Every ``every_n_epochs`` epochs, plot ``exp(-E)`` over the data's range with data and samples.

    Written to TensorBoard (tag ``energy_landscape``) and as PNG files in ``<log_dir>/plots/``.

    Args:
        every_n_epochs: plotting period in epochs (also at the last epoch).
        resolution: grid points per axis.
        bounds: ``(xmin, xmax, ymin, ymax)``; default: the held-out data's range plus 25% margins.
        num_samples: model samples drawn on top (0 for none).
        log_range: the log-density panel shows the top ``log_range`` nats. Sharp models can put
            almost all of ``exp(-E)`` in one basin, so a third panel colours the grid by the rank of
            ``-E``, which shows every basin whatever its depth.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        resolution: int = 200,
        bounds: tuple[float, float, float, float] | None = None,
        num_samples: int = 1000,
        log_range: float = 20.0,
    ) -> None:
        super().__init__(every_n_epochs)
        self.resolution = resolution
        self.bounds = bounds
        self.num_samples = num_samples
        self.log_range = log_range

    def _bounds(self, data: Tensor | None, samples: Tensor | None) -> tuple[float, float, float, float]:
        if self.bounds is not None:
            return tuple(self.bounds)  # type: ignore[return-value]
        ref = data if data is not None else samples
        if ref is None:
            return (-2.0, 2.0, -2.0, 2.0)
        lo, hi = ref.min(0).values, ref.max(0).values
        margin = 0.25 * (hi - lo).max()
        return (float(lo[0] - margin), float(hi[0] + margin), float(lo[1] - margin), float(hi[1] + margin))

    @torch.no_grad()
    def plot(self, trainer: L.Trainer, pl_module: EnergyBasedModel) -> None:
        if pl_module.data_shape != (2,):
            raise ValueError(f"EnergyLandscape needs 2D data, the model's data_shape is {pl_module.data_shape}")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with eval_mode(pl_module):
            data = reference_data(trainer)
            samples = pl_module.sample(self.num_samples).float().cpu() if self.num_samples else None
            bounds = self._bounds(data, samples)
            gx, gy, log_density = density_grid(pl_module.energy, bounds, self.resolution, pl_module.device)
        top = float(log_density.max())
        # ranks of -E over the grid: shows every basin, however unequal their depths
        ranks = log_density.flatten().argsort().argsort().float().view_as(log_density) / log_density.numel()
        fig, axes = plt.subplots(1, 3, figsize=(16, 5), layout="constrained")
        axes[0].pcolormesh(gx, gy, log_density.exp(), shading="auto", cmap="viridis")
        axes[0].set_title("exp(-E), normalised over the grid")
        mesh = axes[1].pcolormesh(
            gx, gy, log_density, shading="auto", cmap="viridis", vmin=top - self.log_range, vmax=top
        )
        fig.colorbar(mesh, ax=axes[1], fraction=0.046, label="log density (nats)")
        axes[1].set_title(f"-E - log Z (top {self.log_range:g} nats)")
        axes[2].pcolormesh(gx, gy, ranks, shading="auto", cmap="viridis")
        if data is not None:
            axes[2].scatter(data[:, 0], data[:, 1], s=1, c="white", alpha=0.5, label="data")
        if samples is not None:
            axes[2].scatter(samples[:, 0], samples[:, 1], s=1, c="tab:red", alpha=0.6, label="samples")
        axes[2].legend(loc="upper right", markerscale=5)
        axes[2].set_title("rank of -E over the grid (basins), data and samples")
        for ax in axes:
            ax.set_xlim(bounds[0], bounds[1])
            ax.set_ylim(bounds[2], bounds[3])
            ax.set_aspect("equal")
        fig.suptitle(f"energy landscape, epoch {trainer.current_epoch}, step {trainer.global_step}")
        self.last_path = log_figure(trainer, "energy_landscape", fig)
