"""Anomaly scores and metrics against hand-computed values and scikit-learn; the callback end to end."""

from __future__ import annotations

import math
import subprocess
import sys
import typing

import lightning as L
import numpy as np
import pytest
import torch
from helpers.boltzmann import TensorData
from torch import Tensor

from lightning_ebm.callbacks import AnomalyDetection
from lightning_ebm.errors import UserError
from lightning_ebm.evaluation import anomaly_metrics, anomaly_scores, threshold_free_metrics, top_fraction_metrics
from lightning_ebm.models import EnergyBasedModel


def test_top_fraction_metrics_by_hand() -> None:
    # 10 examples, 3 anomalies; the 20 % flagged are the two highest scores: one anomaly, one not
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.95, 0.9])
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 0, 1, 0])
    m = top_fraction_metrics(scores, labels, ratio=0.2)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))


def test_metrics_agree_with_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = (rng.random(2000) < 0.2).astype(int)
    scores = rng.normal(size=2000) + 1.5 * labels
    ours = anomaly_metrics(torch.tensor(scores), torch.tensor(labels), ratio=0.2)
    # the authors' evaluation: flag scores >= the 80th percentile
    flagged = (scores >= np.percentile(scores, 80)).astype(int)
    p, r, f1, _ = metrics.precision_recall_fscore_support(labels, flagged, average="binary")
    assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx((p, r, f1))
    assert ours["auprc"] == pytest.approx(metrics.average_precision_score(labels, scores), abs=1e-6)
    assert ours["auroc"] == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-6)


def test_perfect_and_single_class_cases() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1])
    perfect = threshold_free_metrics(torch.tensor([0.0, 0.1, 0.2, 0.8, 0.9]), labels)
    assert perfect == {"auprc": pytest.approx(1.0), "auroc": pytest.approx(1.0)}
    assert all(math.isnan(v) for v in threshold_free_metrics(torch.rand(4), torch.zeros(4)).values())


def test_scores_of_a_quadratic_energy() -> None:
    def energy(x: Tensor) -> Tensor:
        return 0.5 * x.flatten(1).pow(2).sum(1) * 3.0

    x = torch.randn(6, 2, 2)
    torch.testing.assert_close(anomaly_scores(energy, x, "gradient_norm"), 9.0 * x.flatten(1).pow(2).sum(1))
    torch.testing.assert_close(anomaly_scores(energy, x, "energy"), energy(x))
    with pytest.raises(ValueError, match="score must be one of 'gradient_norm', 'energy'; got 'likelihood'"):
        anomaly_scores(energy, x, "likelihood")


def test_scores_under_inference_mode_and_leave_the_input_alone() -> None:
    """Lightning validates and tests under ``torch.inference_mode``: the gradient score still works, and
    neither score changes the batch or leaves a graph behind."""
    weights = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)

    def energy(x: Tensor) -> Tensor:
        return (x * weights).pow(2).sum(1)

    x = torch.randn(5, 3)
    with torch.inference_mode():
        batch = x.clone()
        gradient = anomaly_scores(energy, batch, "gradient_norm")
        energies = anomaly_scores(energy, batch, "energy")
    torch.testing.assert_close(gradient, (2 * x * weights.detach() ** 2).pow(2).sum(1))
    torch.testing.assert_close(energies, energy(x).detach())
    assert not gradient.requires_grad and not energies.requires_grad and weights.grad is None
    assert torch.equal(batch, x) and not batch.requires_grad


def test_the_scores_live_in_a_low_level_module_that_evaluation_re_exports() -> None:
    """Models take the scores from :mod:`lightning_ebm.scores`, which needs neither the evaluation
    package nor the models; the old imports from ``lightning_ebm.evaluation.anomaly`` still work."""
    import lightning_ebm.evaluation.anomaly as evaluation_anomaly
    import lightning_ebm.scores as scores

    assert evaluation_anomaly.anomaly_scores is scores.anomaly_scores is anomaly_scores
    assert evaluation_anomaly.SCORES == scores.ANOMALY_SCORES == ("gradient_norm", "energy")
    assert typing.get_args(scores.AnomalyScore) == scores.ANOMALY_SCORES
    code = (
        "import sys, lightning_ebm.scores; "
        "loaded = sorted(m for m in sys.modules if m.startswith('lightning_ebm')); "
        "assert loaded == ['lightning_ebm', 'lightning_ebm.scores', 'lightning_ebm.utils'], loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


class GaussianEnergy(EnergyBasedModel):
    """A fixed standard Gaussian: anomalies far from the origin have high energy and gradient."""

    def __init__(self) -> None:
        super().__init__((2,))
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def energy(self, x: Tensor) -> Tensor:
        return 0.5 * x.pow(2).sum(1) + 0 * self.dummy

    def sample(self, num_samples: int) -> Tensor:
        return torch.randn(num_samples, 2)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        return self.energy(self.batch_data(batch)).mean()

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_callback_logs_every_metric_of_every_score(tmp_path) -> None:
    torch.manual_seed(0)
    normal, anomalies = torch.randn(400, 2) * 0.5, torch.randn(100, 2) * 0.5 + 6.0
    x = torch.cat([normal, anomalies])
    y = torch.cat([torch.zeros(400), torch.ones(100)]).long()
    perm = torch.randperm(500)
    dm = TensorData(normal, batch_size=50, val_data=(x[perm], y[perm]))
    callback = AnomalyDetection(ratio=0.2)
    trainer = L.Trainer(
        max_epochs=1, default_root_dir=tmp_path, callbacks=[callback], enable_progress_bar=False, logger=False
    )
    trainer.fit(GaussianEnergy(), dm)
    for score in ("gradient_norm", "energy"):
        for metric in ("precision", "recall", "f1", "auprc", "auroc"):
            assert callback.last[f"val/anomaly/{score}/{metric}"] == pytest.approx(1.0)
            assert trainer.callback_metrics[f"val/anomaly/{score}/{metric}"] == pytest.approx(1.0)
    assert list((tmp_path / "plots").glob("val_anomaly_scores_*.png"))  # histograms at the last epoch


def test_callback_needs_labels_and_valid_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="score must be one of 'gradient_norm', 'energy'; got 'likelihood'"):
        AnomalyDetection(scores=["energy", "likelihood"])
    with pytest.raises(UserError, match="at least one score of gradient_norm, energy"):
        AnomalyDetection(scores=[])
    with pytest.raises(UserError, match="ratio"):
        AnomalyDetection(ratio=1.5)
    dm = TensorData(torch.randn(100, 2), batch_size=50, val_data=torch.randn(100, 2))
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[AnomalyDetection()], logger=False)
    with pytest.raises(UserError, match="labelled batches"):
        trainer.fit(GaussianEnergy(), dm)
