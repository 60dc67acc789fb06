"""Mode coverage and sample quality on Gaussian-mixture toys, logged as metrics."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from lightning_ebm.evaluation.landscape import mass_near_modes
from lightning_ebm.evaluation.modes import mode_metrics
from lightning_ebm.models.base import EnergyBasedModel


class ToyModeMetrics(L.Callback):
    """After each validation, log ``toy/modes``, ``toy/hq_fraction`` and ``toy/kl`` of ``num_samples`` samples,
    and ``toy/mass_near_modes``, the share of the model density ``exp(-E)`` near the data's modes.

    See :func:`lightning_ebm.evaluation.mode_metrics` for the definitions (VEEGAN/PacGAN protocol) and
    :func:`lightning_ebm.evaluation.mass_near_modes` for the density check (0.989 at 3 std for the data's
    own mixture; spurious basins or ridges between the modes lower it).
    The mode centres and std come from the data module (``Toy2DDataModule`` exposes ``centres`` and
    ``std`` for ``25gaussians`` and ``8gaussians``) unless given here. Logged on the validation
    epoch, so ``checkpoint.monitor: toy/hq_fraction`` keeps the best model.

    Args:
        num_samples: samples per evaluation (2,500 is customary).
        threshold: quality radius in standard deviations.
        centres: ``(K, 2)`` mode centres (default: from the data module).
        std: standard deviation of each mode (default: from the data module).
        density: also log ``toy/mass_near_modes`` (the energy on a grid with half-std spacing).
    """

    def __init__(
        self,
        num_samples: int = 2500,
        threshold: float = 3.0,
        centres: list[list[float]] | None = None,
        std: float | None = None,
        density: bool = True,
    ) -> None:
        self.num_samples = num_samples
        self.threshold = threshold
        self.centres = torch.as_tensor(centres, dtype=torch.float32) if centres is not None else None
        self.std = std
        self.density = density
        self.last: dict[str, float] = {}

    def _modes(self, trainer: L.Trainer) -> tuple[Tensor, float] | None:
        if self.centres is not None and self.std is not None:
            return self.centres, self.std
        dm = trainer.datamodule
        centres, std = getattr(dm, "centres", None), getattr(dm, "std", None)
        if centres is None or std is None:
            return None
        return centres, std

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: EnergyBasedModel) -> None:
        if trainer.sanity_checking:
            return
        modes = self._modes(trainer)
        if modes is None:
            return  # not a Gaussian mixture (swissroll, rings, ...): nothing to count
        self.last = mode_metrics(pl_module.sample(self.num_samples), modes[0], modes[1], self.threshold)
        if self.density:
            self.last["mass_near_modes"] = mass_near_modes(
                pl_module.energy, modes[0], modes[1], self.threshold, pl_module.device
            )
        for key, value in self.last.items():
            pl_module.log(f"toy/{key}", value, sync_dist=True)
