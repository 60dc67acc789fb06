"""Calibration of a classifier: expected calibration error and reliability diagrams (Guo et al. 2017).

The predictions are grouped by confidence (the largest class probability) into ``num_bins``
equal-width bins ``(0, 1/M], (1/M, 2/M], ..., ((M-1)/M, 1]`` (a confidence of exactly 0 goes to the
first). With ``n_b`` predictions in bin ``b``, their accuracy ``acc_b`` and mean confidence
``conf_b``, the expected calibration error is

    ECE = sum_b (n_b / n) * |acc_b - conf_b|.

A reliability diagram plots ``acc_b`` against the bins; a calibrated classifier lies on the diagonal.
JEM (Grathwohl et al. 2020, Sec. 5) reports ECE on CIFAR-100: 4.87 % against 22.32 % for the same
network trained as a plain classifier.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def calibration_bins(probabilities: Tensor, labels: Tensor, num_bins: int = 20) -> dict[str, Tensor]:
    """Per-bin counts, accuracies and mean confidences of the predictions.

    Args:
        probabilities: ``(n, K)`` class probabilities (rows summing to 1).
        labels: ``(n,)`` true classes.
        num_bins: number of equal-width confidence bins in [0, 1].

    Returns:
        ``edges`` (``num_bins + 1``), ``count``, ``accuracy`` and ``confidence`` per bin (0 where a bin
        is empty), all float64 on the CPU.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be at least 1, got {num_bins}")
    probabilities = probabilities.detach().double().cpu()
    labels = labels.detach().cpu().long().flatten()
    if probabilities.dim() != 2 or probabilities.shape[0] != labels.shape[0]:
        raise ValueError(f"probabilities must be (n, K) with n = {labels.shape[0]}, got {tuple(probabilities.shape)}")
    confidence, prediction = probabilities.max(1)
    correct = (prediction == labels).double()
    # bin b holds confidences in (b/M, (b+1)/M]; 0 joins the first bin
    bins = (torch.ceil(confidence * num_bins).long() - 1).clamp(0, num_bins - 1)
    count = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, torch.ones_like(confidence))
    hits = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, correct)
    conf_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, confidence)
    safe = count.clamp_min(1)
    return {
        "edges": torch.linspace(0, 1, num_bins + 1, dtype=torch.float64),
        "count": count,
        "accuracy": hits / safe,
        "confidence": conf_sum / safe,
    }


def expected_calibration_error(probabilities: Tensor, labels: Tensor, num_bins: int = 20) -> float:
    """ECE (a fraction in [0, 1]) of ``(n, K)`` class probabilities against the true ``labels``."""
    bins = calibration_bins(probabilities, labels, num_bins)
    weights = bins["count"] / bins["count"].sum()
    return float((weights * (bins["accuracy"] - bins["confidence"]).abs()).sum())


def reliability_diagram(bins: dict[str, Tensor], title: str = "") -> Any:
    """A matplotlib figure: accuracy per confidence bin (bars) against the diagonal, with the ECE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges, count = bins["edges"].numpy(), bins["count"]
    width = edges[1] - edges[0]
    weights = count / count.sum().clamp_min(1)
    ece = float((weights * (bins["accuracy"] - bins["confidence"]).abs()).sum())
    occupied = (count > 0).numpy()
    figure, ax = plt.subplots(figsize=(4.5, 4.5))
    left, accuracy = edges[:-1][occupied], bins["accuracy"].numpy()[occupied]
    gap = (bins["confidence"] - bins["accuracy"]).numpy()[occupied]
    ax.bar(left, accuracy, width=width, align="edge", edgecolor="black", color="tab:blue", label="accuracy")
    ax.bar(left, gap, width=width, bottom=accuracy, align="edge", color="tab:red", alpha=0.3, label="gap")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} ECE {100 * ece:.2f}%".strip())
    ax.legend(loc="upper left")
    figure.tight_layout()
    return figure
