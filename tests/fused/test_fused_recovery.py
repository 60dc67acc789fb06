"""The divergence guard on the fast path (emulated on the CPU): a forced blow-up is rolled back, the
optimisers' rates come back as the graphs read them (device tensors, lowered by ``lr_factor``), the
update is captured anew and replayed, and the run ends finite with every optimiser step counted."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers.callbacks import LearningRateBlowUp
from helpers.fused import tiny_jem

import lightning_ebm.models.base as base
from lightning_ebm.callbacks import DivergenceGuard
from lightning_ebm.datamodules import Toy2DDataModule


class Replays(L.Callback):
    """The fast path's replays at the end of each batch."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        captured = pl_module._captured
        self.seen.append(-1 if captured is None else captured.replays)


def test_the_guard_recovers_a_run_on_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "fused_step_unavailable", lambda trainer: None)  # the CPU stands in for a GPU
    L.seed_everything(0)
    model = tiny_jem(num_classes=8, buffer_size=80, sgld_steps=3, sgld_step_size=0.05, sgld_noise=0.05,
                     init_range=[-2, 2], fused_step=True)  # fmt: skip
    guard = DivergenceGuard(every_n_steps=4, max_loss=1e3, max_energy=1e3, lr_factor=0.5)
    replays = Replays()
    trainer = L.Trainer(
        max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu",
        callbacks=[LearningRateBlowUp(range(10, 13)), guard, replays],
    )  # fmt: skip
    data = Toy2DDataModule(name="8gaussians", num_samples=512, batch_size=64, labels=True, num_val_samples=128)
    with pytest.warns(RuntimeWarning, match="DivergenceGuard: .* rolled back to the state of step"):
        trainer.fit(model, data)
    assert guard.recoveries >= 1 and trainer.global_step == 3 * 8  # every optimiser step counted
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model.replay_buffer.samples).all()
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.device == next(model.parameters()).device and lr.dtype == torch.float32
    assert float(lr) < 1e-3  # lowered by lr_factor, not 1e6 times larger
    assert model._captured is not None and model._captured.failed is None
    assert replays.seen[-1] > replays.seen[12] >= 0  # captured anew after the rollback, and replayed
