"""Anomaly detection with an energy function: scores and the metrics the papers report.

An energy model scores an example as anomalous when it is improbable under the model. Two scores
are in use (Kumar et al. 2019, Sec. 4, after Zhai et al. 2016):

* ``energy``: ``E(x)`` itself (lower = more probable, so a high energy is anomalous);
* ``gradient_norm``: the squared score norm ``||grad_x E(x)||^2`` (flattened per example); the
  gradient penalty of MEG pushes training data to critical points of ``E``, so a large gradient
  flags a point off the data manifold.

The scores themselves live in :mod:`lightning_ebm.scores` (models use them too) and are re-exported
here. The metrics follow the protocols of the published tables: precision, recall and F1 when the
``ratio`` highest scores are flagged (KDD99, DAGMM protocol: the top 20 %), and the threshold-free
areas under the precision-recall curve (AUPRC, the MNIST protocol of Zenati et al. 2018) and the
ROC curve (AUROC).
"""

from __future__ import annotations

import torch
from torch import Tensor

# the scores' old home: every import of them from here keeps working
from lightning_ebm.scores import ANOMALY_SCORES, AnomalyScore, anomaly_scores  # noqa: F401

SCORES = ANOMALY_SCORES  # the name they have always had here


def top_fraction_metrics(scores: Tensor, labels: Tensor, ratio: float = 0.2) -> dict[str, float]:
    """Precision, recall and F1 of flagging the ``ratio`` highest scores as anomalies.

    The threshold is the ``1 - ratio`` quantile of the scores (linear interpolation, as NumPy's
    ``percentile``); an example is flagged when its score is at or above it.

    Args:
        scores: ``(n,)`` anomaly scores, higher = more anomalous.
        labels: ``(n,)`` 1 for an anomaly, 0 for a normal example.
        ratio: the fraction flagged (the expected share of anomalies, 0.2 for KDD99).
    """
    scores, labels = scores.detach().double().cpu().flatten(), labels.detach().cpu().flatten().bool()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.numel()} scores but {labels.numel()} labels")
    threshold = torch.quantile(scores, 1.0 - ratio)
    flagged = scores >= threshold
    true_positives = float((flagged & labels).sum())
    precision = true_positives / max(float(flagged.sum()), 1.0)
    recall = true_positives / max(float(labels.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def threshold_free_metrics(scores: Tensor, labels: Tensor) -> dict[str, float]:
    """AUPRC (average precision, anomalies as the positive class) and AUROC.

    Ties are handled as by scikit-learn's ``average_precision_score`` and ``roc_auc_score``.
    """
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision

    scores, labels = scores.detach().double().cpu().flatten(), labels.detach().cpu().flatten().long()
    if labels.min() == labels.max():
        nan = float("nan")  # undefined with a single class
        return {"auprc": nan, "auroc": nan}
    return {
        "auprc": float(binary_average_precision(scores, labels)),
        "auroc": float(binary_auroc(scores, labels)),
    }


def anomaly_metrics(scores: Tensor, labels: Tensor, ratio: float = 0.2) -> dict[str, float]:
    """All the metrics: ``precision``, ``recall``, ``f1`` (top-``ratio`` threshold), ``auprc``, ``auroc``."""
    return {**top_fraction_metrics(scores, labels, ratio), **threshold_free_metrics(scores, labels)}
