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

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_ebm.evaluation.anomaly import threshold_free_metrics

OOD_SCORES = ("log_px", "max_prob", "neg_grad_norm")


def ood_scores(
    energy: Callable[[Tensor], Tensor], logits: Callable[[Tensor], Tensor], x: Tensor, score: str = "log_px"
) -> Tensor:
    """The score of each example of ``x`` (higher = more in-distribution), shape ``(batch,)``.

    Args:
        energy: the model's ``energy`` (``E(x) = -log p(x) - log Z``).
        logits: the model's class logits (for ``max_prob``).
        x: a batch of examples.
        score: ``log_px``, ``max_prob`` or ``neg_grad_norm``.
    """
    if score == "log_px":
        with torch.no_grad():
            return -energy(x).detach()
    if score == "max_prob":
        with torch.no_grad():
            return logits(x).softmax(1).max(1).values.detach()
    if score != "neg_grad_norm":
        raise ValueError(f"unknown OOD score {score!r}; choose one of {', '.join(OOD_SCORES)}")
    with torch.inference_mode(False), torch.enable_grad():  # Lightning validates under inference mode
        x = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(x).sum(), x)
    return -grad.flatten(1).norm(dim=1).detach()


def ood_auroc(in_scores: Tensor, out_scores: Tensor) -> float:
    """AUROC of telling in-distribution (positives) from out-of-distribution examples by a score."""
    scores = torch.cat([in_scores.flatten(), out_scores.flatten()])
    labels = torch.cat([torch.ones(in_scores.numel()), torch.zeros(out_scores.numel())])
    return threshold_free_metrics(scores, labels)["auroc"]
