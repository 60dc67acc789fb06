"""Optimisers and schedules, injected into the methods from the config (one mechanism for all).

Every method takes each of its players' optimisers as a *callable* ``params -> Optimizer``
(LightningCLI's ``OptimizerCallable``): in a config, a ``{class_path, init_args}`` spec such as

    energy_optimizer:
      class_path: torch.optim.Adam
      init_args: {lr: 1.0e-4, betas: [0.5, 0.9]}

and in Python a class, a ``functools.partial`` of one, or the same spec as a dict. The methods'
defaults are their papers' settings, written as such specs. Learning rate and momentum follow one
:class:`Schedule` (warm-up, linear decay to 0, step decay, a momentum switch), injected the same way
(``lr_schedule``); its state is in every checkpoint, so a resumed run continues it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

#: ``params -> Optimizer`` (a class, a ``functools.partial`` of one, or a ``{class_path, init_args}`` spec).
OptimizerCallable = Callable[[Iterable], Optimizer]
#: ``optimizer -> LRScheduler`` (the same forms).
LRSchedulerCallable = Callable[[Optimizer], LRScheduler]
_FACTORY_TYPES = (OptimizerCallable, LRSchedulerCallable, typing.Optional[LRSchedulerCallable])  # noqa: UP045


def spec(class_path: str, **init_args: Any) -> dict[str, Any]:
    """A ``{class_path, init_args}`` spec (the form the configs use)."""
    return {"class_path": class_path, "init_args": init_args}


def as_callable(value: Any) -> Callable[..., Any]:
    """A spec dict (``class_path``, ``init_args``) as the callable it describes; callables unchanged."""
    if isinstance(value, Mapping):
        if "class_path" not in value:
            raise ValueError(f"an optimiser or schedule spec needs a class_path, got {dict(value)}")
        module, _, name = str(value["class_path"]).rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return functools.partial(cls, **dict(value.get("init_args") or {}))
    if not callable(value):
        raise TypeError(f"expected a callable or a {{class_path, init_args}} spec, got {value!r}")
    return value


def to_spec(value: Any) -> Any:
    """The ``{class_path, init_args}`` spec of a class or a ``functools.partial`` of one (what a
    checkpoint stores, so that ``load_from_checkpoint`` can rebuild it); specs and None unchanged.
    Other callables (lambdas, functions) cannot be rebuilt: ``ValueError`` says what to pass instead."""
    if value is None or isinstance(value, Mapping):
        return value
    if inspect.isclass(value):
        return {"class_path": f"{value.__module__}.{value.__qualname__}", "init_args": {}}
    if isinstance(value, functools.partial):
        # partial(cls, **kwargs), or jsonargparse's partial(instantiator helpers..., cls, **kwargs)
        classes = [a for a in (value.func, *value.args) if inspect.isclass(a)]
        if classes and all(inspect.isclass(a) or callable(a) for a in value.args):
            return {**to_spec(classes[-1]), "init_args": dict(value.keywords)}
    raise ValueError(
        f"{value!r} cannot be saved in a checkpoint: pass a class, functools.partial(cls, **kwargs) or a "
        "{'class_path': ..., 'init_args': {...}} dict"
    )


def check_factories(function: Callable[..., Any], arguments: Mapping[str, Any]) -> None:
    """``ValueError`` naming every argument of ``function`` typed :data:`OptimizerCallable` or
    :data:`LRSchedulerCallable` whose value is neither a callable nor a spec of an importable class."""
    hints = typing.get_type_hints(function)
    for name, value in arguments.items():
        if hints.get(name) not in _FACTORY_TYPES or value is None:
            continue
        try:
            factory = as_callable(value)
        except (ValueError, TypeError, ImportError, AttributeError) as exc:
            raise ValueError(
                f"{name} must be an optimiser or schedule class, functools.partial(cls, ...) or a "
                f"{{class_path, init_args}} spec; got {value!r} ({exc})"
            ) from None
        try:  # built once on a stand-in parameter: its settings are checked now, not when training starts
            probe = [torch.zeros(1, requires_grad=True)]
            factory(probe) if hints[name] == OptimizerCallable else factory(torch.optim.SGD(probe, lr=1.0))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{name} refuses its settings: {exc}") from None


def build_optimizer(factory: Any, params: Iterable) -> Optimizer:
    """``factory(params)`` for a callable or a spec (:func:`as_callable`)."""
    return as_callable(factory)(params)


class Schedule(LRScheduler):
    """One schedule of the learning rate and the momentum, for every method and player.

    The learning rate of step ``t`` (optimiser steps of this player so far, in its phase) in epoch ``e``
    (of its phase) is the optimiser's own rate times

        factor(t, e) = warmup(t) * linear(t) * gamma ** #{m in milestones : e >= m}
        warmup(t)    = min(1, (t + 1) / warmup_steps)                     (1 when warmup_steps is 0)
        linear(t)    = 1 before linear_decay_start * T, then (T - t) / (T - linear_decay_start * T)

    falling to 0 at the phase's last step ``T`` (``linear_decay_start`` None: no linear decay). The
    momentum is the optimiser's own for the first ``momentum_epochs`` epochs, then ``final_momentum``
    (when given; Hinton 2010, section 9: 0.5 then 0.9).

    The method owning it sets the clock: :meth:`set_phase` the phase's length ``T`` (the run's, or a
    layer's in greedy training: a resumed run of another length sets its own), :meth:`set_epoch` the
    epoch, and it steps the schedule once per update of its player. JEM: ``warmup_steps`` 1,000,
    milestones 160 and 180, ``gamma`` 0.3; PCD: ``linear_decay_start`` 0.

    Args:
        optimizer: the player's optimiser.
        warmup_steps: steps of the linear warm-up.
        linear_decay_start: fraction of the phase after which the rate decays linearly to 0.
        milestones: epochs at whose start the rate is multiplied by ``gamma``.
        gamma: the step-decay factor.
        final_momentum: the momentum after ``momentum_epochs`` epochs (None: the optimiser's throughout).
        momentum_epochs: epochs at the optimiser's own momentum.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        linear_decay_start: float | None = None,
        milestones: Sequence[int] = (),
        gamma: float = 1.0,
        final_momentum: float | None = None,
        momentum_epochs: int = 0,
    ) -> None:
        if warmup_steps < 0 or momentum_epochs < 0:
            raise ValueError(f"warmup_steps and momentum_epochs must be >= 0, got {warmup_steps}, {momentum_epochs}")
        if linear_decay_start is not None and not 0 <= linear_decay_start < 1:
            raise ValueError(f"linear_decay_start must be in [0, 1) or None, got {linear_decay_start}")
        self.warmup_steps = int(warmup_steps)
        self.linear_decay_start = None if linear_decay_start is None else float(linear_decay_start)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.final_momentum = None if final_momentum is None else float(final_momentum)
        self.momentum_epochs = int(momentum_epochs)
        self.total_steps: int | None = None
        self.epoch = 0
        self.initial_momenta = [group.get("momentum") for group in optimizer.param_groups]
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        """``factor(step, self.epoch)`` of the class docstring."""
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        linear = 1.0
        if self.linear_decay_start is not None and self.total_steps is not None:
            begin = self.linear_decay_start * self.total_steps
            if step >= begin:
                linear = max(0.0, (self.total_steps - step) / (self.total_steps - begin))
        return warmup * linear * self.gamma ** sum(self.epoch >= m for m in self.milestones)

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]

    def step(self, epoch: int | None = None) -> None:
        """One step: the player made one update, and the rate of its next one is set (its method steps
        the schedule itself, once per update, so torch's checks of the order of the calls do not apply)."""
        if epoch is not None:
            raise ValueError("Schedule.step takes no epoch: set_epoch sets it")
        self._step_count += 1
        self.last_epoch += 1
        self._apply(changed_only=True)

    def _apply(self, changed_only: bool = False) -> None:
        """Set the rates of :meth:`get_lr`; with ``changed_only`` a device-tensor rate (the fast path's:
        changed in place, read by its graphs) is written only when its value changes, since each write is
        a kernel launch."""
        lrs = [float(lr) for lr in self.get_lr()]
        last = getattr(self, "_last_lr", None) or [None] * len(lrs)
        for group, lr, previous in zip(self.optimizer.param_groups, lrs, last):
            if not isinstance(group["lr"], torch.Tensor):
                group["lr"] = lr
            elif not (changed_only and lr == previous):
                group["lr"].fill_(lr)
        self._last_lr = lrs  # (numbers in checkpoints, on either path)

    def set_phase(self, total_steps: int) -> None:
        """The number of steps ``T`` of the phase the linear decay ends with; the current rate follows."""
        if total_steps < 1:
            raise ValueError(f"a phase needs at least one step, got {total_steps}")
        self.total_steps = int(total_steps)
        self._apply()

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the phase: it sets the step decay and the momentum; the current rate follows."""
        self.epoch = int(epoch)
        self._apply()
        if self.final_momentum is not None:
            for group, initial in zip(self.optimizer.param_groups, self.initial_momenta):
                group["momentum"] = initial if self.epoch < self.momentum_epochs else self.final_momentum


def build_schedule(factory: Any, optimizer: Optimizer) -> LRScheduler | None:
    """``factory(optimizer)`` for a callable or spec (:func:`as_callable`), None for None."""
    return None if factory is None else as_callable(factory)(optimizer)
