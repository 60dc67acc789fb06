"""A run saved by N processes resumes on M through the command line (gloo, CPU): JEM's replay buffer
and PCD's persistent chains are pooled and shared out equally, the run goes on and its next checkpoint
holds every process's share. 1 -> 3 (JEM's buffer of 80 slots for 8 classes does not divide by 3;
PCD's 20 chains neither) runs in the default suite; 1 -> 2 and 2 -> 1 with ``pytest -m slow``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.configs import CASES

TESTS = Path(__file__).resolve().parents[1]


def fit(tmp_path: Path, name: str, processes: int, epochs: int, *extra: str) -> Path:
    make_data, overrides, _ = CASES[f"{name}.yaml"]
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    strategy = ["--trainer.strategy", "ddp", "--trainer.devices", str(processes)] if processes > 1 else []
    cmd = [
        sys.executable, "-m", "lightning_ebm", "fit", "--config", name, *make_data(tmp_path), *overrides, *strategy,
        "--trainer.accelerator", "cpu", "--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", "3",
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0", "--trainer.callbacks", "[]",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--checkpoint.monitor", "null", *extra,
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    versions = sorted((tmp_path / "logs" / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return versions[-1] / "checkpoints" / "last.ckpt"


def check(tmp_path: Path, name: str, saved: int, resumed: int) -> None:
    small = ["--data.batch_size", "20"] if name != "jem_toy" else []  # 3 processes' batches from the fake MNIST
    first = fit(tmp_path, name, saved, 1, *small)
    saved_state = torch.load(first, weights_only=True)
    before = saved_state["per_rank_state"]
    last = fit(tmp_path, name, resumed, 2, "--ckpt_path", str(first), *small)
    after = torch.load(last, weights_only=True)
    assert after["global_step"] > saved_state["global_step"]  # the resumed run went on
    for key, value in after["per_rank_state"].items():
        assert value.shape[0] == resumed, key  # every process's share, of equal sizes
        if key not in before:  # state the resumed run began (a DBM's next layer)
            continue
        pooled = before[key].reshape(-1, *before[key].shape[2:]).shape[0]
        assert value.shape[1] == max(pooled // resumed, 1) or name == "jem_toy", (key, value.shape)
        if name == "jem_toy":
            assert value.shape[1] % 8 == 0 and value.shape[1] == max(pooled // (8 * resumed), 1) * 8


@pytest.mark.parametrize("name", ["jem_toy", "rbm_mnist_pcd"])
def test_saved_by_one_process_resumed_on_three(tmp_path: Path, name: str) -> None:
    check(tmp_path, name, 1, 3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["jem_toy", "rbm_mnist_pcd", "dbm_mnist"])
@pytest.mark.parametrize(("saved", "resumed"), [(1, 2), (2, 1)])
def test_saved_by_n_resumed_on_m(tmp_path: Path, name: str, saved: int, resumed: int) -> None:
    check(tmp_path, name, saved, resumed)
