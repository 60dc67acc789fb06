"""The fast path's optimisers (:func:`lightning_ebm.fused.make_capturable`): what torch requires of an
optimiser whose step a CUDA graph captures, the same updates as the eager optimisers, and checkpoints
that hold the optimisers' own settings (so that a run saved on the fast path resumes on either path)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from helpers.fused import carried_state, fit, raw_optimizers

from lightning_ebm.fused import (
    capturable_kernel,
    eager_optimizer_states,
    kernel_flags,
    make_capturable,
)
from lightning_ebm.optim import Schedule


def optimizer_classes() -> list[type[torch.optim.Optimizer]]:
    return [c for c in vars(torch.optim).values() if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)
            and c is not torch.optim.Optimizer]  # fmt: skip


def checks_capture(cls: type[torch.optim.Optimizer]) -> bool:
    """Whether ``cls.step`` refuses to run inside a graph capture unless every group is ``capturable``
    (torch's own rule, read from its source)."""
    return "graph_capture_health_check()" in inspect.getsource(cls.step)


def test_every_optimiser_that_checks_for_capture_is_made_capturable() -> None:
    """Adam's step refuses capture unless ``capturable`` is set, also when it is fused: on a GPU every
    optimiser whose step checks gets it (one that checks without having the option is refused); SGD and
    AdaGrad (which do not check) get their fused kernels."""
    checked = [c for c in optimizer_classes() if checks_capture(c)]
    options = [c for c in checked if "capturable" in inspect.signature(c).parameters]
    assert torch.optim.Adam in options and torch.optim.AdamW in options
    for cls in set(checked) - set(options):  # (Adafactor: it checks, but has no such option)
        optimizer = cls([torch.nn.Parameter(torch.zeros(3))], lr=0.01)
        assert not capturable_kernel(optimizer.param_groups[0], gpu=True), cls
        assert make_capturable([optimizer]) == f"{cls.__name__} has neither a capturable nor a fused kernel"
    for cls in options:
        kwargs = {"fused": True} if cls in (torch.optim.Adam, torch.optim.AdamW) else {}
        group = cls([torch.nn.Parameter(torch.zeros(3))], lr=0.01, **kwargs).param_groups[0]
        assert capturable_kernel(group, gpu=True) and group["capturable"] is True, cls
    for cls in (torch.optim.SGD, torch.optim.Adagrad):
        optimizer = cls([torch.nn.Parameter(torch.zeros(3))], lr=0.01)
        assert make_capturable([optimizer]) is None  # (the probe steps the fused kernel on the CPU)
        assert optimizer.param_groups[0]["fused"] is True and optimizer.param_groups[0]["foreach"] is False
        assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)


def test_on_a_cpu_adam_takes_its_fused_kernel() -> None:
    """The tests' emulation: capturable steps need a GPU, Adam's fused CPU kernel reads no host step count."""
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=0.01)
    assert make_capturable([optimizer]) is None
    assert optimizer.param_groups[0]["fused"] is True and optimizer.param_groups[0]["capturable"] is False


def test_an_optimiser_without_a_capturable_kernel_is_named() -> None:
    optimizer = torch.optim.LBFGS([torch.nn.Parameter(torch.zeros(3))])
    assert make_capturable([optimizer]) == "LBFGS has neither a capturable nor a fused kernel"


def test_a_step_that_fails_is_found_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe steps a copy of each group's settings: an optimiser whose kernel this torch lacks is
    reported with the reason, and left as it was configured."""
    optimizer = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(3))], lr=0.01, lr_decay=0.1)

    def missing_kernel(*args: object, **kwargs: object) -> None:
        raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")

    monkeypatch.setattr(torch, "_fused_adagrad_", missing_kernel)
    reason = make_capturable([optimizer])
    assert reason is not None and reason.startswith("Adagrad's step cannot be captured with this torch (RuntimeError")
    group = optimizer.param_groups[0]
    assert group["fused"] is None and group["foreach"] is None
    assert type(group["lr"]) is float and group["lr"] == pytest.approx(0.01)  # (float32 on the device)


def quadratic_steps(optimizer: torch.optim.Optimizer, x: torch.nn.Parameter, steps: int) -> None:
    """``steps`` steps on a well-conditioned quadratic (rounding is not amplified)."""
    curvature, shift = torch.tensor([1.0, 3.0, 0.5, 2.0]), torch.tensor([0.5, -1.0, 2.0, 0.0])
    for _ in range(steps):
        optimizer.zero_grad()
        loss = 0.5 * (curvature * (x - shift).square()).sum()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize(
    "cls, kwargs",
    [(torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4}),
     (torch.optim.Adagrad, {"lr": 0.05, "weight_decay": 1e-5})],
)  # fmt: skip
def test_the_fast_paths_optimisers_step_as_the_eager_ones_and_checkpoint_as_them(
    cls: type[torch.optim.Optimizer], kwargs: dict
) -> None:
    """Steps of the prepared optimiser (fused kernel, learning rate on the device) equal the eager
    optimiser's; its state dict, made eager, loads into an eager optimiser that then continues exactly
    as the eager optimiser continues; the live optimiser keeps its fast-path settings."""
    start = torch.tensor([-1.0, 1.5, 0.3, -0.2])
    x_eager, x_fast = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    eager, fast = cls([x_eager], **kwargs), cls([x_fast], **kwargs)
    flags = kernel_flags([fast])
    quadratic_steps(fast, x_fast, 1)  # state exists before the fast path starts (a resumed run)
    quadratic_steps(eager, x_eager, 1)
    assert make_capturable([fast]) is None
    quadratic_steps(fast, x_fast, 20)
    quadratic_steps(eager, x_eager, 20)
    torch.testing.assert_close(x_fast, x_eager, rtol=1e-6, atol=1e-7)

    states = [fast.state_dict()]
    eager_optimizer_states(states, flags)
    saved = states[0]
    assert type(saved["param_groups"][0]["lr"]) is float and saved["param_groups"][0]["lr"] == pytest.approx(
        kwargs["lr"]
    )
    assert {k: saved["param_groups"][0][k] for k in flags[0][0]} == flags[0][0]
    assert isinstance(fast.param_groups[0]["lr"], torch.Tensor) and fast.param_groups[0]["fused"] is True  # live: kept

    x_resumed = torch.nn.Parameter(x_fast.detach().clone())
    resumed = cls([x_resumed], **kwargs)
    resumed.load_state_dict(saved)
    quadratic_steps(resumed, x_resumed, 10)
    quadratic_steps(eager, x_eager, 10)
    torch.testing.assert_close(x_resumed, x_eager, rtol=1e-6, atol=1e-7)


def test_checkpointed_adam_state_is_the_eager_adams() -> None:
    """A capturable Adam keeps its step count on the device as float32; the checkpoint gives the eager
    Adam its own flags and a host step count, without touching the live state."""
    x = torch.nn.Parameter(torch.ones(4))
    adam = torch.optim.Adam([x], lr=1e-3)
    flags = kernel_flags([adam])
    quadratic_steps(adam, x, 3)
    adam.param_groups[0]["capturable"] = True  # what make_capturable sets (its probe needs a GPU)
    adam.param_groups[0]["lr"] = torch.tensor(1e-3)
    live_step = adam.state[x]["step"]
    states = [adam.state_dict()]
    eager_optimizer_states(states, flags)
    group, entry = states[0]["param_groups"][0], states[0]["state"][0]
    assert group["capturable"] is False and group["lr"] == pytest.approx(1e-3) and type(group["lr"]) is float
    assert entry["step"].device.type == "cpu" and float(entry["step"]) == 3.0
    assert adam.state[x]["step"] is live_step and adam.param_groups[0]["capturable"] is True


@pytest.mark.parametrize("name", ["rbm_pcd_sparse", "jem"])
def test_a_checkpoint_of_the_fast_path_resumes_on_the_eager_path(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run saved on the fast path (optimisers prepared: fused kernels, learning rates as tensors) holds
    the optimisers as configured, and resumed eagerly it ends where the same run saved and resumed on the
    eager path ends (within the rounding of the two kernels): parameters, chains and buffers, optimiser
    states."""
    checkpoint = str(tmp_path / "fast.ckpt")
    fast, _ = fit(name, fused=True, monkeypatch=monkeypatch, epochs=1, save=checkpoint)
    own = fast._captured.kernel_flags
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for state, groups in zip(saved["optimizer_states"], own):
        for group, flags in zip(state["param_groups"], groups):
            assert type(group["lr"]) is float and {k: group[k] for k in flags} == flags
    resumed, _ = fit(name, fused=False, monkeypatch=monkeypatch, epochs=2, resume=checkpoint)
    assert all(type(g["lr"]) is float for opt in raw_optimizers(resumed) for g in opt.param_groups)
    eager_checkpoint = str(tmp_path / "eager.ckpt")
    fit(name, fused=False, monkeypatch=monkeypatch, epochs=1, save=eager_checkpoint)
    reference, _ = fit(name, fused=False, monkeypatch=monkeypatch, epochs=2, resume=eager_checkpoint)
    a, b = carried_state(reference), carried_state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key].double(), a[key].double(), rtol=1e-5, atol=1e-6, msg=key)


def test_a_schedule_writes_a_device_rate_only_when_it_changes() -> None:
    """On the fast path a rate is a device tensor and each write a kernel launch: the schedule writes
    it when its value changes (the linear decay: every step, to ``lr (T - t) / T``), not otherwise."""
    constant = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    decaying = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    assert make_capturable([constant, decaying]) is None
    flat, linear = Schedule(constant), Schedule(decaying, linear_decay_start=0.0)
    flat.set_phase(4)
    linear.set_phase(4)
    versions = (constant.param_groups[0]["lr"]._version, decaying.param_groups[0]["lr"]._version)
    for t in range(1, 4):
        flat.step()
        linear.step()
        assert float(decaying.param_groups[0]["lr"]) == pytest.approx(0.1 * (4 - t) / 4)
        assert decaying.param_groups[0]["lr"]._version == versions[1] + t
    assert constant.param_groups[0]["lr"]._version == versions[0]
    assert float(constant.param_groups[0]["lr"]) == pytest.approx(0.1)


def test_a_restored_rate_becomes_the_graphs_tensor_again() -> None:
    """A restored optimiser state (a checkpoint's numbers, a snapshot's tensor of another device or
    dtype) gets its rates back as float32 tensors on the parameters' device, with their values."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    restored = torch.tensor(0.25, dtype=torch.float64)  # (a snapshot's copy of another dtype)
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": restored})
    assert make_capturable([optimizer]) is None
    for group, value in zip(optimizer.param_groups, (0.1, 0.25)):
        lr = group["lr"]
        assert isinstance(lr, torch.Tensor) and lr.dtype == torch.float32 and lr.device == group["params"][0].device
        assert float(lr) == pytest.approx(value)
