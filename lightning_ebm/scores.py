"""Per-example anomaly scores of an energy function (Kumar et al. 2019, Sec. 4, after Zhai et al. 2016).

Low level on purpose (torch and :mod:`lightning_ebm.utils` only), so that models (MEG's
``anomaly_score``) and :mod:`lightning_ebm.evaluation.anomaly` (which re-exports these and adds the
metrics) share one definition without a model importing the evaluation package.

* ``energy``: ``E(x)`` itself (lower = more probable, so a high energy is anomalous);
* ``gradient_norm``: the squared score norm ``||grad_x E(x)||^2`` (flattened per example); the
  gradient penalty of MEG pushes training data to critical points of ``E``, so a large gradient
  flags a point off the data manifold.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from lightning_ebm.utils import check_choices, input_gradient

AnomalyScore = Literal["gradient_norm", "energy"]
#: the anomaly scores, in the order the callbacks evaluate them by default.
ANOMALY_SCORES: tuple[AnomalyScore, ...] = typing.get_args(AnomalyScore)


def anomaly_scores(energy: Callable[[Tensor], Tensor], x: Tensor, score: AnomalyScore = "gradient_norm") -> Tensor:
    """Anomaly score of each example of ``x`` (higher = more anomalous), shape ``(batch,)``, detached.

    Args:
        energy: the model's ``energy`` (a batch to a ``(batch,)`` tensor).
        x: a batch of examples.
        score: ``gradient_norm`` for ``||grad_x E(x)||^2`` or ``energy`` for ``E(x)``.
    """
    check_choices(anomaly_scores, {"score": score})
    if score == "energy":
        with torch.no_grad():
            return energy(x).detach()
    _, grad = input_gradient(energy, x)  # also under Lightning's inference mode (validation, test)
    return grad.flatten(1).pow(2).sum(1)
