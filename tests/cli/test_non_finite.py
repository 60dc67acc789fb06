"""A run whose parameters become NaN stops with one line and status 2, and never writes or keeps a
checkpoint of NaN weights; the divergence guard, where configured, heals the run instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.cli import run_cli
from tiny_cli_model import tiny_config

from lightning_ebm.plugins import AtomicCheckpointIO, NonFiniteCheckpointError

NAN_AT_STEP_6 = ["--trainer.callbacks+=tiny_cli_model.NaNAt", "--trainer.callbacks.step", "6"]  # in epoch 1 of 4 steps


def test_the_writer_refuses_non_finite_weights(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    writer = AtomicCheckpointIO()
    writer.save_checkpoint({"state_dict": {"w": torch.ones(3), "steps": torch.tensor(7)}, "global_step": 7}, path)
    good = path.read_bytes()
    weights = {"w": torch.tensor([1.0, float("nan")]), "b": torch.tensor([float("inf")]), "steps": torch.tensor(9)}
    with pytest.raises(NonFiniteCheckpointError) as raised:
        writer.save_checkpoint({"state_dict": weights, "global_step": 9}, path)
    message = str(raised.value)
    assert "became NaN or infinite (w, b) at step 9" in message and f"{path} was not written" in message
    assert f"the last good checkpoint is {path}" in message and "lower the learning rate" in message
    assert "DivergenceGuard" in message
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_diverged_run_stops_with_status_2_and_keeps_the_last_good_checkpoint(tmp_path: Path, capsys) -> None:
    assert run_cli(["fit", "--config", str(tiny_config(tmp_path)), *NAN_AT_STEP_6]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    checkpoints = tmp_path / "logs" / "tiny" / "version_0" / "checkpoints"
    assert len(errors) == 1 and "training diverged: the model's parameters became NaN or infinite" in errors[0]
    assert "at step 8" in errors[0] and "the last good checkpoint is " + str(checkpoints) in errors[0]
    for path in checkpoints.iterdir():  # epoch 0's checkpoints, finite; none of epoch 1
        checkpoint = torch.load(path, weights_only=False)
        assert checkpoint["global_step"] == 4
        assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_the_divergence_guard_heals_the_run_before_any_checkpoint_sees_nan(tmp_path: Path) -> None:
    guard = ["--trainer.callbacks+=lightning_ebm.callbacks.DivergenceGuard"]
    assert run_cli(["fit", "--config", str(tiny_config(tmp_path)), *NAN_AT_STEP_6, *guard]) == 0
    last = tmp_path / "logs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == 8
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
