"""Where ``torch._dynamo.explain`` breaks each method's update into several graphs, and why each break
is harmless to the fast path.

The fast path captures the update with ``torch.cuda.graph``: it records the kernels that the update
launches on the capturing stream, below Python and below dynamo, so every kernel of a variant of the
update (all players' forward and backward passes, the chains, the optimiser steps) lands in that
variant's one CUDA graph, whatever dynamo makes of the Python code. Dynamo's breaks matter only to
``torch.compile``, which the fast path does not use. Each break that remains is named here with the
reason it cannot go; any other break (a ``.item()``, a data-dependent branch, a new library call) fails
this test, so none creeps in unseen.
"""

from __future__ import annotations

import re

import pytest
import torch
from helpers.fused import CASES, first_batch, fit, raw_optimizers, update_keys

from lightning_ebm.fused import CapturedUpdate

#: (what dynamo says, where: the source line or function it stops at) -> why the break stays.
NAMED_BREAKS: dict[tuple[str, str], str] = {
    ("torch.autograd.grad", r"^(input_gradient|score_penalty)$"):
        "input gradients of the energy, the Langevin / SGLD / MALA drift and the score penalty: dynamo traces "
        "torch.autograd.grad only with the experimental trace_autograd_ops",
    ("requires_grad_() intermediate leaked as output", r"^(input_gradient|energy_loss)$"):
        "the leaf those input gradients are taken with respect to",
    ("marked as skipped", r"optimizer\.(step|zero_grad)\("):
        "torch.optim excludes its optimisers' step and zero_grad from dynamo (torch._disable_dynamo)",
    ("torch.compiler.disable()", r"torch/optim/"):
        "the fused SGD and AdaGrad kernels' entry points are compiler.disable()d in torch.optim",
    ("Tensor.backward()", r"\.backward\(\)"):
        "a backward pass: compiled models run it through AOTAutograd, outside the traced graph",
}  # fmt: skip


def named(reason: str, frame: object) -> str | None:
    """The justification of a break, or None for a break not named in :data:`NAMED_BREAKS`."""
    places = (getattr(frame, "name", ""), (getattr(frame, "line", "") or "").strip(), getattr(frame, "filename", ""))
    for (says, where), why in NAMED_BREAKS.items():
        if says in reason and any(re.search(where, place) for place in places):
            return why
    return None


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_graph_break_of_the_update_is_named(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = fit(name, fused=False, monkeypatch=monkeypatch)
    model._captured = CapturedUpdate(model.update, raw_optimizers(model))  # the update on the fast path's terms
    batch = first_batch(name)
    for key in update_keys(model):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model.update)(batch, key, True)
        unnamed = [
            (b.reason.splitlines()[0], b.user_stack[-1].name, b.user_stack[-1].line)
            for b in explained.break_reasons
            if named(b.reason, b.user_stack[-1] if b.user_stack else None) is None
        ]
        assert unnamed == [], (key, unnamed)
        assert explained.graph_count >= 1
    torch._dynamo.reset()
