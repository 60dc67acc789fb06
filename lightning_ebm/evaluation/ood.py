"""Out-of-distribution detection with a classifier-as-energy-model (Grathwohl et al. 2020, Sec. 5.2).

Three scores, each higher for examples the model deems in-distribution:

* ``log_px``: ``log p(x) + log Z = -E(x)`` (the unnormalised log-density; ``Z`` is the same for all);
* ``max_prob``: ``max_y p(y|x)``, the classifier's confidence (Hendrycks & Gimpel 2017);
* ``neg_grad_norm``: ``-||grad_x log p(x)||`` (flattened per example): JEM's "approximate mass",
  large where the density is flat, i.e. near a mode.

The AUROC counts in-distribution examples as positives, as the paper's tables do; it is computed
with the project's :func:`~lightning_ebm.evaluation.anomaly.threshold_free_metrics`.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from lightning_ebm.evaluation.anomaly import threshold_free_metrics
from lightning_ebm.utils import check_choices, input_gradient

OODScore = Literal["log_px", "max_prob", "neg_grad_norm"]
OOD_SCORES: tuple[OODScore, ...] = typing.get_args(OODScore)


def ood_scores(
    energy: Callable[[Tensor], Tensor], logits: Callable[[Tensor], Tensor], x: Tensor, score: OODScore = "log_px"
) -> Tensor:
    """The score of each example of ``x`` (higher = more in-distribution), shape ``(batch,)``, detached.

    Args:
        energy: the model's ``energy`` (``E(x) = -log p(x) - log Z``).
        logits: the model's class logits (for ``max_prob``).
        x: a batch of examples.
        score: ``log_px``, ``max_prob`` or ``neg_grad_norm``.
    """
    check_choices(ood_scores, {"score": score})
    if score == "log_px":
        with torch.no_grad():
            return -energy(x).detach()
    if score == "max_prob":
        with torch.no_grad():
            return logits(x).softmax(1).max(1).values.detach()
    _, grad = input_gradient(energy, x)  # also under Lightning's inference mode (validation, test)
    return -grad.flatten(1).norm(dim=1)


def ood_auroc(in_scores: Tensor, out_scores: Tensor) -> float:
    """AUROC of telling in-distribution (positives) from out-of-distribution examples by a score."""
    scores = torch.cat([in_scores.flatten(), out_scores.flatten()])
    labels = torch.cat([torch.ones(in_scores.numel()), torch.zeros(out_scores.numel())])
    return threshold_free_metrics(scores, labels)["auroc"]
