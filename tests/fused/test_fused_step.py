"""The fast path (``fused_step``) without a GPU: for every method, training with the update captured and
replayed (emulated on the CPU: each replay checked to leave every state tensor in place, to change no
Python attribute and to read nothing back to the host) ends exactly where the eager reference ends;
and the update of every method makes no host synchronisation."""

from __future__ import annotations

import pytest
import torch
from helpers.fused import CASES, carried_state, first_batch, fit, raw_optimizers, update_keys

from lightning_ebm.fused import CapturedUpdate, HostSyncDetector, make_capturable


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_fast_path_ends_where_the_eager_step_ends(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    eager, none = fit(name, fused=False, monkeypatch=monkeypatch)
    fused, replays = fit(name, fused=True, monkeypatch=monkeypatch)
    assert none == 0 and replays >= 4, replays  # after the warm-ups and captures, replays
    assert fused.trainer.global_step == eager.trainer.global_step > 0  # its optimiser steps counted alike
    a, b = carried_state(eager), carried_state(fused)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key].double(), a[key].double(), rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_host_synchronisation_inside_an_update(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """After training (optimiser states and chains exist), one update of each variant, logging or not,
    dispatches no operator that reads a device value back to the host."""
    model, _ = fit(name, fused=False, monkeypatch=monkeypatch)
    batch = first_batch(name)
    assert make_capturable(raw_optimizers(model)) is None  # the optimisers as the fast path runs them
    model._captured = CapturedUpdate(model.update, raw_optimizers(model))  # the update on the fast path's terms
    for key in update_keys(model):
        for log in (False, True):
            with HostSyncDetector() as detector:
                model.update(batch, key, log)
            assert detector.syncs == [], (key, log, detector.syncs)
            assert detector.ops > 0


def test_emulated_replay_catches_a_rebound_state_tensor() -> None:
    """The emulation is a real check: an update that rebinds its state (as ``self.chains = new``) would be
    wrong under a CUDA graph, and the emulated replay refuses it."""

    class Rebinds(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.chains = torch.zeros(3)

        def update(self, batch: torch.Tensor, log: bool) -> dict[str, torch.Tensor]:
            self.chains = self.chains + batch  # rebound, not updated in place
            return {"sum": self.chains.sum()} if log else {}

    module = Rebinds()
    runner = CapturedUpdate(module.update, [], warmup_steps=1, modules=[module])
    runner(torch.ones(3), True)  # warm-up
    runner(torch.ones(3), True)  # capture
    with pytest.raises(RuntimeError, match="rebound or changed"):
        runner(torch.ones(3), True)


def test_emulated_replay_catches_a_host_synchronisation() -> None:
    class Syncs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("total", torch.zeros(()))

        def update(self, batch: torch.Tensor, log: bool) -> dict[str, torch.Tensor]:
            if float(batch.sum()) > 0:  # reads the device: not capturable
                self.total.add_(batch.sum())
            return {}

    module = Syncs()
    runner = CapturedUpdate(module.update, [], warmup_steps=0, modules=[module])
    runner(torch.ones(3), False)  # capture
    with pytest.raises(RuntimeError, match="_local_scalar_dense"):
        runner(torch.ones(3), False)
