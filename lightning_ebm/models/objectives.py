"""Loss terms shared by the methods (regularisers and estimators), written once here."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def score_penalty(energies: Tensor, x: Tensor) -> Tensor:
    """Zero-centred gradient penalty ``mean_i ||grad_x E(x_i)||^2`` (Kumar et al. 2019, Eq. 8).

    The first term of Hyvarinen's score-matching objective: it pushes the data points to critical
    points of the energy. The gradient of each example is flattened before its squared norm is
    taken (the authors' code takes the norm over the channel axis of images, which silently
    rescales the weight of the penalty). The result keeps its graph, so it can be minimised.

    Args:
        energies: ``E(x)``, shape ``(batch,)``, computed from ``x`` with ``x.requires_grad``.
        x: the batch the energies were computed from.
    """
    (grad,) = torch.autograd.grad(energies.sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


def jsd_mutual_information(positive: Tensor, negative: Tensor) -> Tensor:
    """Jensen-Shannon mutual information ``I_JSD(X; Z)`` from a statistics network's scores.

    ``I_JSD`` is the Jensen-Shannon divergence between the joint ``p(x, z)`` and the product of the
    marginals ``p(x) p(z)`` (Hjelm et al. 2018, Deep InfoMax). Its variational lower bound is
    ``log 2 - BCE``, where ``BCE`` is the binary cross-entropy of the statistics network ``T``
    classifying pairs from the joint (``positive = T(x, z)``) against pairs from the product of
    marginals (``negative = T(x, z')`` with ``z'`` shuffled across the batch). The estimate lies
    in ``[-inf, log 2]``: about 0 when ``x`` and ``z`` are independent (``T`` can do no better than
    chance), ``log 2`` when ``T`` tells joint and product apart perfectly. Maximising it over ``T``
    tightens the bound; maximising it over the generator raises the entropy of ``x = G(z)``.
    """
    bce = 0.5 * (F.softplus(-positive).mean() + F.softplus(negative).mean())
    return math.log(2.0) - bce
