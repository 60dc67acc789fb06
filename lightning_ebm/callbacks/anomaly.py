"""Anomaly-detection metrics of an energy model on labelled validation and test data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_ebm.callbacks.utils import (
    EvaluationCollector,
    check_scores,
    gather_ragged,
    is_last_epoch,
    log_figure,
)
from lightning_ebm.errors import UserError
from lightning_ebm.evaluation.anomaly import anomaly_metrics
from lightning_ebm.scores import ANOMALY_SCORES, AnomalyScore, anomaly_scores


class AnomalyDetection(EvaluationCollector):
    """Score labelled validation / test batches ``(x, y)`` (``y = 1``: anomaly) and log the metrics.

    For every score in ``scores`` (``gradient_norm``: ``||grad_x E(x)||^2``, ``energy``: ``E(x)``; see
    :mod:`lightning_ebm.evaluation.anomaly`) it logs ``<stage>/anomaly/<score>/<metric>`` with the
    metrics ``precision``, ``recall``, ``f1`` (the ``ratio`` highest scores flagged: the KDD99
    protocol), ``auprc`` and ``auroc`` (the MNIST protocol reports AUPRC). Under DDP each process
    scores its shard and the scores are gathered before the metrics are computed, so the numbers
    are those of the whole split. In ``test`` (and at the last validation) it also draws the
    histograms of the scores of normal and anomalous examples.

    It uses only the model's ``energy``.

    Args:
        scores: which scores to evaluate.
        ratio: fraction of examples flagged for precision / recall / F1 (0.2 for KDD99).
        every_n_epochs: validation epochs between evaluations (the last epoch always counts).
    """

    def __init__(
        self, scores: Sequence[AnomalyScore] = ANOMALY_SCORES, ratio: float = 0.2, every_n_epochs: int = 1
    ) -> None:
        self.scores = check_scores("AnomalyDetection", scores, anomaly_scores, ANOMALY_SCORES)
        if not 0.0 < ratio < 1.0:
            raise UserError(f"ratio must be in (0, 1), got {ratio}")
        self.ratio = ratio
        self.every_n_epochs = every_n_epochs
        self.last: dict[str, float] = {}
        self._collected: dict[str, list[Tensor]] = {}
        self._active = False

    # ------------------------------------------------------------------ collecting scores
    def _start(self, active: bool) -> None:
        self._active = active
        self._collected = {name: [] for name in (*self.scores, "labels")}

    def _collect(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        if not self._active:
            return
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise UserError(
                "AnomalyDetection needs labelled batches (x, y) with y = 1 for an anomaly; this data module's "
                "batches have no labels: use an anomaly-detection data module (KDD99DataModule, MNISTAnomalyDataModule)"
            )
        x, y = batch[0], batch[1]
        for score in self.scores:
            self._collected[score].append(anomaly_scores(pl_module.energy, x, score).float())
        self._collected["labels"].append(y.detach().flatten().float())

    # ------------------------------------------------------------------ metrics
    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._active or not self._collected["labels"]:
            return
        self._active = False
        gathered = {name: gather_ragged(trainer, torch.cat(parts)) for name, parts in self._collected.items()}
        labels = gathered.pop("labels")
        self.last = {}
        for score, values in gathered.items():
            for metric, value in anomaly_metrics(values, labels, self.ratio).items():
                self.last[f"{stage}/anomaly/{score}/{metric}"] = value
        for name, value in self.last.items():
            pl_module.log(name, value, prog_bar=name.endswith("gradient_norm/f1") or name.endswith("/auprc"))
        if (stage == "test" or is_last_epoch(trainer)) and trainer.is_global_zero:
            log_figure(trainer, f"{stage}/anomaly_scores", score_histograms(gathered, labels))
        self._collected = {}


def score_histograms(scores: dict[str, Tensor], labels: Tensor) -> Any:
    """One panel per score: histograms (log-scaled scores) of normal and anomalous examples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(scores), figsize=(5 * len(scores), 3.5), squeeze=False)
    anomalous = labels.cpu().bool()
    for ax, (name, values) in zip(axes[0], scores.items()):
        values = values.detach().double().cpu()
        shown = values.clamp_min(1e-12).log10() if name == "gradient_norm" else values
        bins = torch.linspace(float(shown.min()), float(shown.max()) + 1e-9, 61).numpy()
        ax.hist(shown[~anomalous].numpy(), bins=bins, alpha=0.6, density=True, label="normal")
        ax.hist(shown[anomalous].numpy(), bins=bins, alpha=0.6, density=True, label="anomaly")
        ax.set_xlabel("log10 ||grad E||^2" if name == "gradient_norm" else "energy")
        ax.set_title(name)
        ax.legend()
    figure.tight_layout()
    return figure
