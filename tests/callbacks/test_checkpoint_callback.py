"""The command line's checkpoint callback with a metric logged only every few epochs."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_ebm.callbacks import PeriodicMetricCheckpoint


class _Linear(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        return self.net(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx) -> None:  # noqa: ANN001
        self.log("val/loss", self.net(batch[0]).pow(2).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _EveryOtherEpoch(L.Callback):
    """Logs ``val/score`` = a fixed value per epoch, on odd epochs only (like FID every 2 epochs)."""

    VALUES = {1: 5.0, 3: 2.0, 5: 7.0}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch in self.VALUES:
            pl_module.log("val/score", self.VALUES[trainer.current_epoch])


def _fit(tmp_path: Path, monitor: str) -> PeriodicMetricCheckpoint:
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    checkpoint = PeriodicMetricCheckpoint(dirpath=tmp_path, monitor=monitor, mode="min", save_last=True)
    trainer = L.Trainer(
        max_epochs=6,
        callbacks=[_EveryOtherEpoch(), checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_Linear(), data, data)
    return checkpoint


def test_best_is_judged_on_the_epochs_the_metric_exists_and_last_is_kept_every_epoch(tmp_path: Path) -> None:
    checkpoint = _fit(tmp_path, "val/score")
    assert float(checkpoint.best_model_score) == 2.0  # the minimum of the three logged values
    assert "epoch=3" in Path(checkpoint.best_model_path).name
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["epoch"] == 5  # written after the final epoch, which logged no score


def test_a_metric_never_logged_is_reported(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="val/scroe.*never logged.*val/loss"):
        checkpoint = _fit(tmp_path, "val/scroe")
    assert checkpoint.best_model_path == ""
    assert (tmp_path / "last.ckpt").is_file()


def test_last_is_rewritten_when_the_monitored_metric_does_not_improve(tmp_path: Path) -> None:
    """Lightning's own callback rewrites last.ckpt only with a new best; ours at every epoch."""
    with pytest.warns(UserWarning, match="never logged"):
        checkpoint = _fit(tmp_path, "val/loss_never_better")  # never logged: no best at all
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["epoch"] == 5 and checkpoint.best_model_path == ""
