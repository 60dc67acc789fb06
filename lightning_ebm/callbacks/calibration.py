"""Accuracy, expected calibration error and the reliability diagram of a classifier-EBM."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_ebm.callbacks.utils import EvaluationCollector, gather_ragged, log_figure
from lightning_ebm.errors import UserError
from lightning_ebm.evaluation.calibration import calibration_bins, expected_calibration_error, reliability_diagram


class Calibration(EvaluationCollector):
    """On labelled validation / test batches ``(x, y)``: accuracy, ECE and a reliability diagram.

    Logs ``<stage>/calibration/accuracy`` and ``<stage>/calibration/ece`` (a fraction) and writes the
    reliability diagram to TensorBoard and ``<log_dir>/plots/`` (tag ``<stage>/reliability``). Under
    DDP each process scores its shard and the predictions are gathered first, so the numbers are
    those of the whole split. It needs a model with ``logits(x)`` (class logits, e.g. JEM).

    Args:
        num_bins: equal-width confidence bins.
        every_n_epochs: validation epochs between evaluations (the last epoch always counts).
    """

    def __init__(self, num_bins: int = 20, every_n_epochs: int = 1) -> None:
        if num_bins < 1:
            raise UserError(f"num_bins must be at least 1, got {num_bins}")
        self.num_bins = num_bins
        self.every_n_epochs = every_n_epochs
        self.last: dict[str, float] = {}
        self.last_path = None
        self._probabilities: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._active = False

    def _start(self, active: bool) -> None:
        self._active, self._probabilities, self._labels = active, [], []

    @torch.no_grad()
    def _collect(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        if not self._active:
            return
        if not hasattr(pl_module, "logits"):
            raise UserError(
                f"Calibration needs a classifier with logits(x) (e.g. JEM); {type(pl_module).__name__} has none"
            )
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise UserError("Calibration needs labelled batches (x, y); this data module's batches have no labels")
        self._probabilities.append(pl_module.logits(batch[0]).float().softmax(1))
        self._labels.append(batch[1].flatten())

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._active or not self._labels:
            return
        self._active = False
        probabilities = torch.cat(self._probabilities)
        classes = probabilities.shape[1]
        probabilities = gather_ragged(trainer, probabilities.flatten()).view(-1, classes)
        labels = gather_ragged(trainer, torch.cat(self._labels).float()).long()
        accuracy = float((probabilities.argmax(1) == labels).float().mean())
        ece = expected_calibration_error(probabilities, labels, self.num_bins)
        self.last = {f"{stage}/calibration/accuracy": accuracy, f"{stage}/calibration/ece": ece}
        for name, value in self.last.items():
            pl_module.log(name, value)
        if trainer.is_global_zero:
            figure = reliability_diagram(calibration_bins(probabilities, labels, self.num_bins), title=stage)
            self.last_path = log_figure(trainer, f"{stage}/reliability", figure)
        self._probabilities, self._labels = [], []
