"""Mode coverage: Gaussian-mixture toys (VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al. 2018) and
StackedMNIST (Metz et al. 2017; Kumar et al. 2019), where a mode is the tuple of digits of the channels."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# The mode ids belong to the StackedMNIST data (a mode is a tuple of digits); re-exported here.
from lightning_ebm.datamodules.stacked_mnist import mode_digits, mode_ids

__all__ = ["mode_digits", "mode_histogram_metrics", "mode_ids", "mode_metrics"]


def mode_metrics(samples: Tensor, centres: Tensor, std: float, threshold: float = 3.0) -> dict[str, float]:
    """Mode coverage and sample quality of samples from a model of a Gaussian mixture.

    A sample is *high quality* if it lies within ``threshold`` standard deviations (Euclidean
    distance) of its nearest centre; a mode is *covered* if it is the nearest centre of at least one
    high-quality sample. ``kl`` is KL(p || uniform) where p is the histogram of the high-quality
    samples over their nearest modes (0 when every mode gets the same share; ``log K`` when there
    is no high-quality sample at all).

    Args:
        samples: ``(n, d)`` samples.
        centres: ``(K, d)`` mode centres.
        std: standard deviation of each component.
        threshold: quality radius in units of ``std``.

    Returns:
        ``modes`` (number covered), ``hq_fraction`` (fraction of high-quality samples) and ``kl``.
    """
    samples = samples.detach().float().reshape(samples.shape[0], -1).cpu()
    centres = centres.float().cpu()
    k = centres.shape[0]
    finite = torch.isfinite(samples).all(1)
    dist = torch.cdist(samples[finite], centres)
    nearest_dist, nearest = dist.min(1)
    hq = nearest_dist < threshold * std
    counts = torch.bincount(nearest[hq], minlength=k).double()
    total = counts.sum()
    if total > 0:
        p = counts / total
        nz = p > 0
        kl = float((p[nz] * torch.log(p[nz] * k)).sum())
    else:
        kl = math.log(k)
    return {
        "modes": float((counts > 0).sum()),
        "hq_fraction": float(hq.sum()) / samples.shape[0],
        "kl": kl,
    }


def mode_histogram_metrics(ids: Tensor, num_modes: int) -> dict[str, float]:
    """Modes seen and ``KL(p || uniform)`` of the histogram ``p`` of mode ids over ``num_modes`` modes.

    ``KL(p || u) = sum_m p_m log(p_m num_modes)`` (natural log, empty modes contribute 0): 0 when every
    mode gets the same share, ``log(num_modes)`` when all samples fall in one mode. This is the
    StackedMNIST metric of Metz et al. (2017), Srivastava et al. (2017) and Kumar et al. (2019).

    Args:
        ids: ``(N,)`` mode ids in ``0 .. num_modes - 1`` (e.g. :func:`mode_ids` of classified digits).
        num_modes: the number of modes (``10**n`` for ``n`` stacks).

    Returns:
        ``modes`` (distinct ids seen) and ``kl``.
    """
    ids = ids.detach().long().flatten().cpu()
    if ids.numel() == 0:
        raise ValueError("mode_histogram_metrics needs at least one sample")
    if int(ids.min()) < 0 or int(ids.max()) >= num_modes:
        raise ValueError(f"mode ids must lie in 0..{num_modes - 1}, got {int(ids.min())}..{int(ids.max())}")
    counts = torch.bincount(ids, minlength=num_modes).double()
    p = counts / counts.sum()
    nz = p > 0
    return {"modes": float(nz.sum()), "kl": float((p[nz] * torch.log(p[nz] * num_modes)).sum())}
