"""A replay buffer of persistent SGLD chains (Du & Mordatch 2019; Grathwohl et al. 2020, Sec. 4).

Short-run Langevin chains started from noise give poor negative samples; starting them from the
final states of earlier chains makes them effectively long-run. The buffer keeps ``size`` such states.
Each training step draws a batch of them (uniformly, with replacement), restarts each draw with
probability ``reinit_prob`` from the noise distribution ``U(low, high)`` (so that the chains keep
exploring), runs the sampler, and writes the chains' final states back where they were drawn.

With ``num_classes`` the slots are labelled ``slot % num_classes`` (equal shares per class) and a
draw for labels ``y`` only picks slots of those classes: the class-conditional buffer of JEM's
``p(x|y)`` term and of class-conditional sampling. A buffer of unconditional samples can still give
class-conditional start states by sampling-importance-resampling: if the stored states follow
``p(x)``, a slot drawn with probability proportional to ``p(y | x_slot)`` follows
``p(x | y) = p(y | x) p(x) / p(y)`` (``log_weights`` of :meth:`draw`).

The buffer is plain tensors (no module, no registered buffer) so that a method can hand it to the
base class's per-process state (:meth:`EnergyBasedModel.per_rank_state`): under DDP each process
keeps and checkpoints its own buffer. Every operation stays on the buffer's device and draws its
randomness from PyTorch's global generator, without synchronising with the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class ReplayBuffer:
    """``size`` stored samples of shape ``shape``, initialised from ``U(low, high)``.

    Args:
        size: number of stored samples (10,000 in JEM).
        shape: shape of one sample.
        reinit_prob: probability ``rho`` that a drawn sample is replaced by fresh noise (0.05 in JEM).
        low: lower end of the uniform noise.
        high: upper end of the uniform noise.
        num_classes: label the slots ``slot % num_classes`` to allow class-conditional draws
            (``size`` must then be a multiple of ``num_classes``).
        device: where the samples live.
        dtype: their floating-point type.
        samples: start from these stored samples (``(size, *shape)``) instead of fresh noise; no
            random numbers are drawn then (restoring a buffer leaves the random streams alone).
        restart: ``restart(n, y)`` gives ``n`` states to start and restart chains from (``y``: their
            labels, or None) instead of ``U(low, high)``, e.g. JEM++'s per-class Gaussians.
    """

    def __init__(
        self,
        size: int,
        shape: Sequence[int],
        reinit_prob: float = 0.05,
        low: float = -1.0,
        high: float = 1.0,
        num_classes: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        samples: Tensor | None = None,
        restart: Callable[[int, Tensor | None], Tensor] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"the buffer size must be at least 1, got {size}")
        if not 0.0 <= reinit_prob <= 1.0:
            raise ValueError(f"reinit_prob must be in [0, 1], got {reinit_prob}")
        if not low < high:
            raise ValueError(f"the noise range needs low < high, got [{low}, {high}]")
        if num_classes is not None and (num_classes < 1 or size % num_classes):
            raise ValueError(f"the buffer size ({size}) must be a multiple of num_classes ({num_classes})")
        self.shape = tuple(int(d) for d in shape)
        self.reinit_prob = float(reinit_prob)
        self.low, self.high = float(low), float(high)
        self.num_classes = num_classes
        self.restart = restart
        if samples is None and restart is not None:
            labels = torch.arange(size, device=device) % num_classes if num_classes else None
            self.samples = restart(size, labels).to(device=device, dtype=dtype)
        elif samples is None:
            self.samples = self.noise(size, device=device, dtype=dtype)
        elif tuple(samples.shape) != (size, *self.shape):
            raise ValueError(f"stored samples shaped {tuple(samples.shape)}, expected {(size, *self.shape)}")
        else:
            self.samples = samples.to(device=device, dtype=dtype)

    def __len__(self) -> int:
        return self.samples.shape[0]

    @property
    def device(self) -> torch.device:
        return self.samples.device

    def noise(self, n: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """``n`` draws of ``U(low, high)``, shaped ``(n, *shape)``."""
        device = self.samples.device if device is None and hasattr(self, "samples") else device
        dtype = dtype or self.samples.dtype
        return torch.rand(n, *self.shape, device=device, dtype=dtype) * (self.high - self.low) + self.low

    def labels(self, indices: Tensor) -> Tensor:
        """The class of each slot in ``indices`` (``slot % num_classes``)."""
        if self.num_classes is None:
            raise ValueError("this buffer has no classes (num_classes=None)")
        return indices % self.num_classes

    def indices(self, n: int, y: Tensor | None = None, log_weights: Tensor | None = None) -> Tensor:
        """``n`` slots drawn uniformly with replacement; with labels ``y`` (shape ``(n,)``), each
        among the slots of its class; with ``y`` and ``log_weights`` (``(size, K)``, e.g. the
        classifier's ``log p(k | x)`` of the stored states), slot ``i`` for label ``y_j`` with
        probability ``exp(log_weights[i, y_j]) / sum_l exp(log_weights[l, y_j])``, whatever the slots'
        own labels (sampling-importance-resampling; the buffer needs no ``num_classes``)."""
        if log_weights is not None:
            if y is None:
                raise ValueError("log_weights need the labels y to draw for")
            if log_weights.dim() != 2 or log_weights.shape[0] != len(self):
                raise ValueError(f"log_weights shaped {tuple(log_weights.shape)}, expected ({len(self)}, classes)")
            weights = torch.softmax(log_weights.to(self.device, torch.float64).T, dim=1)  # (K, size), rows sum to 1
            candidates = torch.multinomial(weights, n, replacement=True)  # n draws for every class, no host sync
            return candidates.gather(0, y.to(self.device).long().view(1, -1)).squeeze(0)
        if y is None:
            return torch.randint(0, len(self), (n,), device=self.device)
        if self.num_classes is None:
            raise ValueError("class-conditional draws need a buffer built with num_classes")
        per_class = len(self) // self.num_classes
        offset = torch.randint(0, per_class, (n,), device=self.device)
        return y.to(self.device).long() + self.num_classes * offset

    def draw(
        self, n: int, y: Tensor | None = None, reinit_prob: float | None = None, log_weights: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Start states of ``n`` chains and the slots they came from (chosen by :meth:`indices`).

        Each state is the stored sample, or with probability ``reinit_prob`` (default: the buffer's)
        a fresh one (``restart``, by default ``U(low, high)``). Returns ``(x, indices)``; write the
        chains' ends back with :meth:`write`.
        """
        rho = self.reinit_prob if reinit_prob is None else reinit_prob
        idx = self.indices(n, y, log_weights)
        stored = self.samples[idx]
        restart = torch.rand(n, device=self.device) < rho
        fresh = self.noise(n) if self.restart is None else self.restart(n, y).to(stored)
        x = torch.where(restart.view(-1, *([1] * len(self.shape))), fresh, stored)
        return x, idx

    def write(self, indices: Tensor, x: Tensor) -> None:
        """Store the chains' final states ``x`` in the slots ``indices`` (from :meth:`draw`)."""
        self.samples[indices] = x.detach().to(self.samples.dtype)
