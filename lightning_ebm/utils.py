"""Small helpers shared by models, samplers, callbacks and evaluation (written once here)."""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in evaluation mode (batch norm on its running statistics, no dropout) for the
    block, and give each back the mode it had."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def input_gradient(fn: Callable[[Tensor], Tensor], x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """``(fn(x), grad_x sum(fn(x)))`` for a function with one value per example.

    Works where Lightning evaluates under ``inference_mode`` (validation, test): the gradient is taken
    on a normal copy of ``x``. Without ``create_graph`` both results are detached; with it (a penalty
    on the gradient that is itself minimised) ``x`` must be a leaf that requires grad, and both keep
    their graphs.
    """
    if create_graph:
        values = fn(x)
        (grad,) = torch.autograd.grad(values.sum(), x, create_graph=True)
        return values, grad
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        values = fn(x)
        (grad,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), grad.detach()


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` annotation (also inside ``Optional``), else None."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        choices = [c for arg in typing.get_args(annotation) if (c := literal_choices(arg)) is not None]
        if choices:
            return tuple(v for c in choices for v in c) + ((None,) if type(None) in typing.get_args(annotation) else ())
    return None


def check_choices(function: Callable[..., Any], arguments: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the choices for every argument of ``function`` annotated with a
    ``Literal`` whose value in ``arguments`` is not one of them. The command line checks these itself
    (and lists them in ``--help``); this is the same check for objects built in Python."""
    hints = typing.get_type_hints(function)
    for name, value in arguments.items():
        choices = literal_choices(hints.get(name))
        if choices is not None and value not in choices:
            listed = ", ".join(repr(c) for c in choices)
            raise ValueError(f"{name} must be one of {listed}; got {value!r}")


def check_bounds(
    positive: dict[str, float | None] | None = None,
    non_negative: dict[str, float | None] | None = None,
    probability: dict[str, float | None] | None = None,
) -> None:
    """``ValueError`` naming the first number that is not ``> 0`` (``positive``), ``>= 0``
    (``non_negative``) or in ``[0, 1]`` (``probability``); None values are not checked."""
    rules = (
        (positive, lambda v: v > 0, "greater than 0"),
        (non_negative, lambda v: v >= 0, "0 or more"),
        (probability, lambda v: 0 <= v <= 1, "in [0, 1]"),
    )
    for values, ok, words in rules:
        for name, value in (values or {}).items():
            if value is not None and not ok(value):
                raise ValueError(f"{name} must be {words}, got {value}")
