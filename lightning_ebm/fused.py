"""The fast path: a method's whole training update captured once as a CUDA graph and replayed.

A training step of these methods is hundreds of small kernels (two or three players' forward and
backward passes, Langevin or Gibbs chains, optimiser steps), each a launch plus Python and Lightning
overhead: on a GPU they are launch-bound. :class:`CapturedUpdate` runs a method's
:meth:`~lightning_ebm.models.EnergyBasedModel.update` eagerly for a few warm-up steps (optimiser
states and persistent chains are created then), captures it with :func:`torch.cuda.graph` (whole-step
capture: forward, backward, optimiser steps and random numbers), and replays the graph for every
later batch after copying the batch into the graph's static input tensors. The update keeps every
tensor it carries from step to step in place (parameters, optimiser states, chains, replay buffers),
never synchronises with the host, and returns its metrics as tensors that the graph overwrites at
each replay: the method reads them only on logging steps.

Python control flow is frozen at capture, so each variant of the update (a step that also updates the
generator, the layer in training, a logging step) has its own graph, sharing one memory pool.
Hyper-parameters that the kernels take by value (momentum, betas, weight decay) are part of the key:
a change (the momentum switch of the RBM recipe) captures anew. Learning rates become device tensors
so that the schedules change them between replays.

On a CPU, or where capture is not possible (DDP, a precision plugin with a gradient scaler, an
optimiser whose step this torch cannot capture: :func:`make_capturable`), the update runs eagerly:
the same function, so results are those of the reference path. For tests without a GPU,
:class:`CapturedUpdate` emulates capture on CPU tensors: it "replays" by running the update again on
the static inputs, copies the results into the outputs recorded at capture, and checks on every
replay that a real replay would have done the same: no state tensor rebound, no Python attribute
changed, no host synchronisation (:class:`HostSyncDetector`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

Batch = Tensor | Sequence[Tensor]


def _tensors(batch: Batch) -> list[Tensor]:
    return [batch] if isinstance(batch, Tensor) else list(batch)


def _rebuild(batch: Batch, tensors: list[Tensor]) -> Batch:
    return tensors[0] if isinstance(batch, Tensor) else type(batch)(tensors)


def optimizer_signature(optimizers: Sequence[torch.optim.Optimizer]) -> tuple:
    """The hyper-parameters the optimisers' kernels take by value (all but the learning rate)."""
    return tuple(
        tuple(
            (k, v) for k, v in sorted(group.items()) if k not in ("params", "lr") and isinstance(v, (int, float, tuple))
        )
        for optimizer in optimizers
        for group in optimizer.param_groups
    )


#: The optimiser flags that :func:`make_capturable` sets; checkpoints keep the optimisers' own
#: (:func:`eager_optimizer_states`), so that they resume on any path.
KERNEL_FLAGS = ("capturable", "fused", "foreach")


def kernel_flags(optimizers: Sequence[torch.optim.Optimizer]) -> list[list[dict[str, Any]]]:
    """Per optimiser and parameter group, the :data:`KERNEL_FLAGS` it was built with."""
    return [[{k: group[k] for k in KERNEL_FLAGS if k in group} for group in opt.param_groups] for opt in optimizers]


def make_capturable(
    optimizers: Sequence[torch.optim.Optimizer], own_flags: list[list[dict[str, Any]]] | None = None
) -> str | None:
    """Optimisers whose step a CUDA graph can capture, with learning rates that the graph reads from the
    device; returns why that is not possible (None when it is), after putting the optimisers back as
    configured (``own_flags``, :func:`kernel_flags`'s answer before the fast path first changed them;
    by default the flags they have now) with learning rates as numbers.

    Optimisers with a ``capturable`` option (Adam, AdamW, RMSprop, ...) get it: their step counts stay on
    the device, and their ``step()`` refuses to be captured without it, fused or not. AdaGrad and SGD
    have none and run their fused kernels instead (the others read AdaGrad's step count on the host and
    take a rate by value). Existing step counts move to their parameters' devices; learning rates become
    device tensors (:func:`tensor_learning_rates`). Then a copy of each parameter group's settings steps
    a stand-in parameter, captured as a CUDA graph on a GPU: a version of torch without the kernel, or
    an optimiser that cannot be captured, is found here rather than in the middle of a training step.
    On a CPU (the tests' emulation of the fast path) optimisers take their fused kernels where they have
    one, which read no step count on the host either: capturable steps need a GPU.
    """
    own = kernel_flags(optimizers) if own_flags is None else own_flags
    reason = _prepare(optimizers)
    if reason is not None:
        for optimizer, groups in zip(optimizers, own):
            for group, flags in zip(optimizer.param_groups, groups):
                as_configured(group, flags)
            optimizer.__dict__.pop("_warned_capturable_if_run_uncaptured", None)
    return reason


def _prepare(optimizers: Sequence[torch.optim.Optimizer]) -> str | None:
    """:func:`make_capturable`'s changes and probes, without the undoing."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            if not capturable_kernel(group, gpu=group["params"][0].is_cuda):
                return f"{type(optimizer).__name__} has neither a capturable nor a fused kernel"
        optimizer._warned_capturable_if_run_uncaptured = True  # (its warm-up steps run uncaptured, on purpose)
        for param, state in optimizer.state.items():
            if isinstance(state.get("step"), Tensor):
                state["step"] = state["step"].to(param.device, torch.float32)
    tensor_learning_rates(optimizers)
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            reason = _probe_step(optimizer, group)
            if reason is not None:
                return reason
    return None


def capturable_kernel(group: dict[str, Any], gpu: bool) -> bool:
    """Set ``group``'s flags for a step without host reads (see :func:`make_capturable`); False if it has
    no such kernel."""
    if "capturable" in group and (gpu or "fused" not in group):
        group["capturable"] = True
    elif "fused" in group:
        group["fused"], group["foreach"] = True, False
    else:
        return False
    return True


def _probe_step(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> str | None:
    """Why a step of ``group``'s settings cannot be captured (None when it can): a fresh optimiser of
    the same class and settings steps a stand-in parameter twice, then once inside a CUDA graph."""
    like = group["params"][0]
    param = torch.zeros(4, device=like.device, dtype=like.dtype, requires_grad=True)
    param.grad = torch.ones_like(param)
    name = type(optimizer).__name__
    try:
        probe = type(optimizer)([param], lr=0.0)
        probe.param_groups[0].update(
            {k: v.clone() if isinstance(v, Tensor) else v for k, v in group.items() if k != "params"}
        )
        probe._warned_capturable_if_run_uncaptured = True
        if not like.is_cuda:
            probe.step()
            return None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            probe.step()
            probe.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            probe.step()
        graph.replay()
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - the reason is the answer
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return f"{name}'s step cannot be captured with this torch ({type(exc).__name__}: {first})"
    return None


def as_configured(group: dict[str, Any], own: dict[str, Any]) -> None:
    """A parameter group (live, or a state dict's) with its optimiser's own flags and its learning rate
    as a number."""
    group.update(own)
    if isinstance(group["lr"], Tensor):
        group["lr"] = float(group["lr"])


def eager_optimizer_states(states: list[dict[str, Any]], flags: list[list[dict[str, Any]]]) -> None:
    """Optimiser state dicts (a checkpoint's) as the eager path would have saved them: the optimisers'
    own :data:`KERNEL_FLAGS`, learning rates as numbers and, where neither ``capturable`` nor ``fused``
    is on, step counts on the host. The live optimisers are not touched (a state dict shares its
    per-parameter state dicts with them: those are replaced, not changed)."""
    for state, groups in zip(states, flags):
        for group, own in zip(state["param_groups"], groups):
            as_configured(group, own)
            if own.get("capturable") or own.get("fused"):
                continue
            for index in group["params"]:
                entry = state["state"].get(index)
                if entry is not None and isinstance(entry.get("step"), Tensor):
                    state["state"][index] = {**entry, "step": entry["step"].detach().to("cpu", torch.float32)}


def to_channels_last(module: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Convolution weights (and the optimiser states shaped like them) in the channels-last layout."""
    module.to(memory_format=torch.channels_last)
    for optimizer in optimizers:
        for param, state in optimizer.state.items():
            for name, value in state.items():
                if isinstance(value, Tensor) and value.dim() == 4 and value.shape == param.shape:
                    state[name] = value.contiguous(memory_format=torch.channels_last)


def tensor_learning_rates(optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Learning rates as float32 tensors on their parameters' devices (changed in place by the schedules,
    read by the graph), also where a restored state brought numbers or tensors of another device."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            device, lr = group["params"][0].device, group["lr"]
            if not isinstance(lr, Tensor) or lr.device != device or lr.dtype != torch.float32:
                group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)


#: Operators that read a device value back to the host (or need host data), and so stall the
#: device and cannot be captured: ``.item()``, ``bool(t)``, ``nonzero``, boolean masks, ``torch.tensor(data)``.
HOST_SYNC_OPS = {
    "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero", "aten::nonzero_static",
    "aten::masked_select", "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim", "aten::equal",
    "aten::allclose", "aten::lift_fresh", "aten::lift_fresh_copy",
}  # fmt: skip


class HostSyncDetector(TorchDispatchMode):
    """Records the operators dispatched inside it, and those of them that synchronise with the host
    (:data:`HOST_SYNC_OPS`, and indexing with a boolean mask), with ``raise_on_sync`` raising at once."""

    def __init__(self, raise_on_sync: bool = False) -> None:
        super().__init__()
        self.raise_on_sync = raise_on_sync
        self.ops = 0
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops += 1
        name = func._schema.name
        boolean_index = name in ("aten::index", "aten::index_put_", "aten::index_put") and any(
            isinstance(i, Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []) or []
        )
        if name in HOST_SYNC_OPS or boolean_index:
            self.syncs.append(name)
            if self.raise_on_sync:
                raise RuntimeError(f"{name} synchronises with the host inside a captured update")
        return func(*args, **(kwargs or {}))


def _state_of(modules: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer]) -> Iterator[tuple]:
    """What a replay must leave as it found it: the identity of every tensor the update carries from step to
    step (parameters, buffers, optimiser states, tensor attributes such as chains and replay buffers) and
    every plain Python attribute of the modules."""
    for module in modules:
        for prefix, sub in module.named_modules():
            for name, value in vars(sub).items():
                if name.startswith("_") and name not in ("_buffer",):
                    continue
                if isinstance(value, Tensor):
                    yield (prefix, name, id(value))
                elif isinstance(value, (int, float, str, bool, type(None))):
                    yield (prefix, name, value)
                elif hasattr(value, "__dict__") and not isinstance(value, nn.Module):  # chains, buffers
                    yield from ((prefix, name, k, id(v)) for k, v in vars(value).items() if isinstance(v, Tensor))
                    yield from ((prefix, name, k, v) for k, v in vars(value).items() if isinstance(v, (int, float)))
                elif isinstance(value, list):
                    for i, item in enumerate(value):
                        if hasattr(item, "__dict__") and not isinstance(item, nn.Module):
                            yield from (
                                (prefix, name, i, k, id(v)) for k, v in vars(item).items() if isinstance(v, Tensor)
                            )
            for name, p in sub.named_parameters(recurse=False):  # (gradients are made and used within a step)
                yield (prefix, name, id(p), p.requires_grad)
            for name, b in sub.named_buffers(recurse=False):
                yield (prefix, name, id(b))
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            yield tuple(id(v) if isinstance(v, Tensor) else v for k, v in sorted(group.items()) if k != "params")
        for state in optimizer.state.values():
            yield tuple((k, id(v)) for k, v in sorted(state.items()) if isinstance(v, Tensor))


#: Eager calls of each variant of an update before it is captured (optimiser states, chains and the
#: libraries' workspaces are made then, as capture requires).
WARMUP_STEPS = 3


class CapturedUpdate:
    """Runs ``update(batch, *key)`` as one CUDA graph per ``key`` (see the module docstring).

    Args:
        update: the function to capture; it must keep its state in place and return a dict of tensors.
        optimizers: the raw optimisers it steps (their by-value hyper-parameters key the graphs).
        warmup_steps: eager calls of each key before it is captured (:data:`WARMUP_STEPS`).
        modules: the modules whose state a replay must keep in place (checked when emulating on a CPU).
        kernel_flags: the optimisers' own flags before :func:`make_capturable` (None if it was not called),
            which their checkpointed states keep.
    """

    def __init__(
        self,
        update: Callable[..., dict[str, Tensor]],
        optimizers: Sequence[torch.optim.Optimizer],
        warmup_steps: int | None = None,
        modules: Sequence[nn.Module] = (),
        kernel_flags: list[list[dict[str, Any]]] | None = None,
    ) -> None:
        self.update = update
        self.kernel_flags = kernel_flags
        self.optimizers = list(optimizers)
        self.modules = list(modules)
        self.warmup_steps = WARMUP_STEPS if warmup_steps is None else warmup_steps
        self.graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, list[Tensor], dict[str, Tensor]]] = {}
        self.calls: dict[Hashable, int] = {}
        self.pool = None
        self.stream: torch.cuda.Stream | None = None
        self.replays = 0
        #: Why capture was given up (every step then runs eagerly), or None.
        self.failed: str | None = None
        #: Optimiser steps made by the last call (a replay makes those of its capture), counted by step hooks:
        #: the fast path steps the optimisers past Lightning's wrappers, which count steps (``global_step``).
        self.last_steps = 0
        self.steps_of: dict[Hashable, int] = {}
        self._counted = 0
        self._hooks = [optimizer.register_step_post_hook(self._count_step) for optimizer in self.optimizers]

    def reset(self) -> None:
        """Forget every graph (state tensors were replaced: a rollback, a checkpoint restored)."""
        self.graphs.clear()
        self.calls.clear()
        self.steps_of.clear()

    def close(self) -> None:
        """Forget every graph and stop counting the optimisers' steps (the fast path starts anew)."""
        self.reset()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _count_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._counted += 1

    def __call__(self, batch: Batch, *key: Hashable) -> dict[str, Tensor]:
        self._counted = 0
        outputs, replayed = self._call(batch, key)
        self.last_steps = self.steps_of[replayed] if replayed is not None else self._counted
        return outputs

    def _call(self, batch: Batch, key: tuple) -> tuple[dict[str, Tensor], Hashable | None]:
        """The update's outputs, and the key of the graph replayed (None for an eager call or a capture)."""
        if self.failed is not None:
            return self._eager(batch, key), None
        tensors = _tensors(batch)
        full_key = (key, tuple((t.shape, t.dtype) for t in tensors), optimizer_signature(self.optimizers))
        entry = self.graphs.get(full_key)
        if entry is None:
            calls = self.calls.get(full_key, 0)
            self.calls[full_key] = calls + 1
            if calls < self.warmup_steps:
                return self._eager(batch, key), None
            try:
                entry = self._capture(batch, key, full_key)
            except Exception as exc:  # noqa: BLE001 - reported, and training goes on eagerly
                if not _on_cuda(batch):
                    raise
                self.failed = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc) else ''}"
                warn_fallback(f"capturing the update failed ({self.failed})")
                self.graphs.clear()
                self._counted = 0
                return self._eager(batch, key), None
            self.steps_of[full_key] = self._counted
            if entry[0] is None:  # emulated: capturing ran the update, as a replay would have
                return entry[2], None
        graph, inputs, outputs = entry
        for static, value in zip(inputs, tensors):
            static.copy_(value, non_blocking=True)
        if graph is None:
            self._emulated_replay(batch, key, inputs, outputs)
        else:
            graph.replay()
        self.replays += 1
        return outputs, full_key

    def _emulated_replay(self, batch: Batch, key: tuple, inputs: list[Tensor], outputs: dict[str, Tensor]) -> None:
        """On a CPU: the update again on the static inputs, checked to be what a graph replay would do."""
        before = list(_state_of(self.modules, self.optimizers))
        with HostSyncDetector(raise_on_sync=True):
            fresh = self.update(_rebuild(batch, inputs), *key)
        changed = [a for a, b in zip(before, _state_of(self.modules, self.optimizers)) if a != b]
        if changed or set(fresh) != set(outputs):
            raise RuntimeError(
                f"a replayed update would differ from the update: state rebound or changed {changed[:3]}"
            )
        for name, value in fresh.items():
            outputs[name].copy_(value)

    def _eager(self, batch: Batch, key: tuple) -> dict[str, Tensor]:
        """A warm-up call on a side stream (as capture requires of what it captures)."""
        if not _on_cuda(batch):
            return self.update(batch, *key)
        if self.stream is None:
            self.stream = torch.cuda.Stream()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            out = self.update(batch, *key)
        torch.cuda.current_stream().wait_stream(self.stream)
        return out

    def _capture(self, batch: Batch, key: tuple, full_key: Hashable) -> tuple:
        inputs = [t.clone(memory_format=torch.channels_last if t.dim() == 4 else torch.contiguous_format)
                  for t in _tensors(batch)]  # fmt: skip
        if not _on_cuda(batch):  # emulated: the outputs of this first call are those later calls update
            entry = (None, inputs, dict(self.update(_rebuild(batch, inputs), *key)))
            self.graphs[full_key] = entry
            return entry
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        torch.cuda.synchronize()
        # thread_local: unsafe CUDA calls of other threads (a data loader pinning memory) do not spoil the capture
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            outputs = self.update(_rebuild(batch, inputs), *key)
        entry = (graph, inputs, outputs)
        self.graphs[full_key] = entry
        return entry


def _on_cuda(batch: Batch) -> bool:
    return _tensors(batch)[0].is_cuda


def fused_step_unavailable(trainer: Any) -> str | None:
    """Why the fast path cannot run with ``trainer`` (None when it can)."""
    if trainer is None:
        return "no trainer"
    if trainer.strategy.root_device.type != "cuda":
        return "not on a CUDA device"
    if trainer.world_size > 1:
        return "several processes (the graphs would hold DDP's all-reduce)"
    if getattr(trainer.precision_plugin, "scaler", None) is not None:
        return "a gradient scaler (16-mixed precision); use bf16-mixed or 32"
    return None


def warn_fallback(reason: str) -> None:
    warnings.warn(f"fused_step: {reason}; training steps run eagerly", stacklevel=3)
