"""Every shipped config trains for a few steps under two-process CPU DDP through the command line,
shrunk (narrow networks, a few batches, small data), and resumes from its last checkpoint on two
processes. Both processes end with the same parameters and the same floating-point buffers (batch
norm running statistics under ``sync_batchnorm``).

Data and shrinking overrides: ``helpers.configs`` (small files in the real on-disk formats).
One config runs in the default suite (a DEM with synchronised batch norm on CelebA-shaped images,
about a minute: two launches of two processes); the whole sweep is
``pytest -m slow tests/configs/test_configs_ddp.py`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.configs import CASES

from lightning_ebm.cli import shipped_configs

TESTS = Path(__file__).resolve().parents[1]


DEFAULT = ("dem_celeba.yaml",)


def test_every_shipped_config_has_a_case() -> None:
    assert sorted(CASES) == shipped_configs()


def fit(tmp_path: Path, name: str, args: list[str], epochs: int, digest: str, *extra: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable, "-m", "lightning_ebm", "fit", "--config", name,
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--trainer.callbacks", "[]",
        "--checkpoint.monitor", "null", "--checkpoint.every_n_epochs", "1",
        *args,
        "--trainer.callbacks+=helpers.callbacks.ParameterDigest", "--trainer.callbacks.dirpath", str(tmp_path / digest),
        *extra,
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=TESTS.parent)
    assert result.returncode == 0, result.stderr[-4000:]


def check_config(tmp_path: Path, name: str) -> None:
    make_data, overrides, epochs = CASES[name]
    args = [*make_data(tmp_path), *overrides]
    fit(tmp_path, name, args, epochs, "first")
    ranks = [json.loads((tmp_path / "first" / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["_world_size"] == 2 and ranks[0] == ranks[1]  # parameters and buffers
    if "sync_batchnorm" in (TESTS.parent / "lightning_ebm" / "configs" / name).read_text():
        assert any("running_mean" in key for key in ranks[0])  # the synchronised statistics were compared
    ckpt = tmp_path / "logs" / name.removesuffix(".yaml") / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    for key, value in ranks[0].items():  # the checkpoint holds what the processes trained
        if not key.startswith(("_", "buffer:")):
            assert abs(float(state["state_dict"][key].double().sum()) - value) < 1e-6 * max(1.0, abs(value)), key
    # resumed on two processes for one more epoch, from the checkpoint just written
    fit(tmp_path, name, args, epochs + 1, "resumed", "--ckpt_path", str(ckpt))
    resumed = [json.loads((tmp_path / "resumed" / f"rank{r}.json").read_text()) for r in range(2)]
    assert resumed[0] == resumed[1] and resumed[0] != ranks[0]


@pytest.mark.parametrize("name", DEFAULT)
def test_shipped_config_under_two_process_ddp(tmp_path: Path, name: str) -> None:
    check_config(tmp_path, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(CASES) - set(DEFAULT)))
def test_every_other_shipped_config_under_two_process_ddp(tmp_path: Path, name: str) -> None:
    check_config(tmp_path, name)
