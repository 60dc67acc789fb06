"""Every shipped config on the fast path, through the command line (networks narrowed, small data in the
real formats, the CPU standing in for a GPU): its update is captured and replayed, and every replay is
checked by the emulation (:class:`lightning_ebm.fused.CapturedUpdate`) to keep every state tensor in
place, change no Python attribute and read nothing back to the host, with each config's own options
(networks, samplers, schedules, replay buffers, greedy phases)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cli import run_cli
from helpers.configs import CASES

import lightning_ebm.fused as fused
import lightning_ebm.models.base as base

#: The configs that train no energy-based model (the classifier has no fast path).
NO_FAST_PATH = {"mnist_classifier.yaml"}
#: Smaller batches where the configs' own would leave too few batches of the small data for replays.
MORE_BATCHES = ["--data.batch_size", "25"]
EXTRA = {name: MORE_BATCHES for name in ("dbm_mnist.yaml", "dbn_mnist.yaml", "dem_mnist.yaml", "jem_mnist.yaml",
                                          "rbm_mnist.yaml", "rbm_mnist_pcd.yaml")}  # fmt: skip


@pytest.mark.parametrize("name", sorted(set(CASES) - NO_FAST_PATH))
def test_the_config_runs_on_the_fast_path(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "fused_step_unavailable", lambda trainer: None)  # the CPU stands in for a GPU
    monkeypatch.setattr(fused, "WARMUP_STEPS", 1)  # (fewer batches)
    make_data, overrides, _ = CASES[name]
    report = tmp_path / "fast_path.json"
    args = [
        "fit", "--config", name, *make_data(tmp_path), *overrides, *EXTRA.get(name, []),
        "--model.init_args.fused_step", "true",
        "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu", "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "8", "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps",
        "0", "--trainer.log_every_n_steps", "2", "--trainer.default_root_dir", str(tmp_path / "logs"),
        "--checkpoint.monitor", "null", "--trainer.callbacks", "[]",
        "--trainer.callbacks+=helpers.callbacks.FastPathReport", "--trainer.callbacks.path", str(report),
    ]  # fmt: skip
    assert run_cli(args) == 0
    record = json.loads(report.read_text())
    assert record["on"] and record["failed"] is None, record
    assert record["replays"] >= 4 and record["graphs"] >= 2, record  # logging and quiet steps both replayed
