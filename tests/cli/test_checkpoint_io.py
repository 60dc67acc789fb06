"""A run killed while it writes a checkpoint leaves the previous checkpoint usable, and the command
line installs the atomic writer and the CPU-capable batch-norm synchronisation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.boltzmann import BARS_AND_STRIPES, TensorData

from lightning_ebm.cli import EBMCLI, resolve_config_args
from lightning_ebm.models import RBM
from lightning_ebm.plugins import AtomicCheckpointIO, SyncBatchNormPlugin


def fit_rbm(tmp_path: Path, epochs: int) -> tuple[RBM, L.Trainer]:
    L.seed_everything(0)
    rbm = RBM(9, 6, num_filters=0)
    trainer = L.Trainer(
        max_epochs=epochs, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, plugins=[AtomicCheckpointIO()],
    )  # fmt: skip
    trainer.fit(rbm, datamodule=TensorData(BARS_AND_STRIPES.repeat(4, 1), batch_size=8))
    return rbm, trainer


def test_a_write_that_fails_halfway_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    rbm, trainer = fit_rbm(tmp_path, 1)
    last = tmp_path / "last.ckpt"
    trainer.save_checkpoint(last)
    saved_W = rbm.layer.W.detach().clone()
    with torch.no_grad():
        rbm.layer.W.add_(1.0)  # the next checkpoint would hold other weights
    real_save = torch.save
    where: list[str] = []

    def save_half_then_fail(obj, f, *args, **kwargs) -> None:
        where.extend(p.name for p in tmp_path.iterdir() if p.name != "last.ckpt")
        real_save({"partial": torch.zeros(1000)}, f)  # some bytes reach the file, then the writer dies
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(last)
    monkeypatch.setattr(torch, "save", real_save)
    # written to a temporary file next to the destination, so that the rename is atomic
    assert len(where) == 1 and where[0].startswith(".last.ckpt.") and where[0].endswith(".tmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the temporary file is gone
    torch.testing.assert_close(RBM.load_from_checkpoint(last).layer.W, saved_W)


def test_a_process_killed_while_writing_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    """SIGKILL in the middle of a checkpoint write (no Python cleanup runs): ``last.ckpt`` is the
    previous checkpoint, complete, and loads."""
    _, trainer = fit_rbm(tmp_path, 1)
    last = tmp_path / "last.ckpt"
    trainer.save_checkpoint(last)
    before = last.read_bytes()
    script = textwrap.dedent(
        f"""
        import sys, time, torch
        from lightning_ebm.plugins import AtomicCheckpointIO
        real_save = torch.save
        def slow_save(obj, f, *args, **kwargs):
            f.write(b"x" * 100_000)  # half a checkpoint on disk
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
        torch.save = slow_save
        AtomicCheckpointIO().save_checkpoint({{"state_dict": {{}}}}, {str(last)!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert last.read_bytes() == before
    assert RBM.load_from_checkpoint(last).layer.W.shape == (9, 6)


def test_the_command_line_installs_the_atomic_writer_and_cpu_sync_batchnorm(tmp_path: Path) -> None:
    argv = ["--config", "dem_toy", "--trainer.sync_batchnorm", "true", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    cli = EBMCLI(args=resolve_config_args(argv), run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert isinstance(cli.trainer._accelerator_connector._layer_sync, SyncBatchNormPlugin)
