"""Learning-rate schedules shared by the methods (picklable, so that their state is in checkpoints)."""

from __future__ import annotations

from collections.abc import Sequence


class WarmupStepDecay:
    """A ``LambdaLR`` factor: linear warm-up over ``warmup_steps`` optimiser steps, times ``gamma`` for
    every milestone epoch reached (JEM: 1,000 warm-up iterations, x0.3 at epochs 160 and 180).

    ``factor(step) = min(1, (step + 1) / warmup_steps) * gamma ** #{m in milestones : epoch >= m}``.
    The owner sets :attr:`epoch` at the start of every epoch; ``LambdaLR`` saves this object's
    attributes in its state dict, so a resumed run continues the schedule.

    Args:
        warmup_steps: optimiser steps of the linear warm-up (0 for none).
        milestones: epochs (0-based) at whose start the rate is multiplied by ``gamma``.
        gamma: the decay factor.
    """

    def __init__(self, warmup_steps: int = 0, milestones: Sequence[int] = (), gamma: float = 1.0) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be 0 or more, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.epoch = 0

    def __call__(self, step: int) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        return warmup * self.gamma ** sum(self.epoch >= m for m in self.milestones)


class LinearDecay:
    """A ``LambdaLR`` factor: constant, then a linear decay to 0 at the last step.

    ``factor(step) = 1`` before ``start * total_steps``, then falling linearly to 0 at ``total_steps``
    (``start`` 0: decay over the whole run). Picklable, so ``LambdaLR`` keeps it in its state dict and a
    resumed run continues the schedule.

    Args:
        total_steps: scheduler steps of the whole run.
        start: fraction of the run after which the decay begins, in ``[0, 1)``.
    """

    def __init__(self, total_steps: int, start: float = 0.0) -> None:
        if total_steps < 1 or not 0 <= start < 1:
            raise ValueError(f"need total_steps >= 1 and 0 <= start < 1, got {total_steps} and {start}")
        self.total_steps = int(total_steps)
        self.start = float(start)

    def __call__(self, step: int) -> float:
        begin = self.start * self.total_steps
        if step < begin:
            return 1.0
        return max(0.0, (self.total_steps - step) / (self.total_steps - begin))
