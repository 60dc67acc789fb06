"""Two-process CPU DDP (gloo) through the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers.data import fake_mnist, kdd_lines, write_kdd
from helpers.ddp_cli import fit_two_processes

from lightning_ebm.models import DEM, MEG

TESTS = Path(__file__).resolve().parents[1]


def test_dem_toy_trains_under_two_process_ddp(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "lightning_ebm", "fit", "--config", "dem_toy",
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "8", "--trainer.limit_val_batches", "2",
        "--trainer.enable_progress_bar", "false", "--data.num_samples", "8192",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.callbacks+=helpers.callbacks.ParameterDigest",
        "--trainer.callbacks.dirpath", str(tmp_path / "digest"),
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "digest" / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["_world_size"] == 2
    assert ranks[0] == ranks[1]  # gradients were averaged: both ranks hold the same parameters
    ckpt = tmp_path / "dem_toy" / "version_0" / "checkpoints" / "last.ckpt"
    model = DEM.load_from_checkpoint(ckpt)
    total = sum(float(p.detach().double().sum()) for p in model.energy_net.parameters())
    assert abs(total - sum(v for k, v in ranks[0].items() if k.startswith("energy_net."))) < 1e-6
    assert model.sample(4).shape == (4, 2)
    assert not torch.isnan(model.energy(torch.zeros(2, 2))).any()


def test_rbm_pcd_keeps_per_rank_chains_through_a_ddp_checkpoint(tmp_path: Path) -> None:
    """rbm_mnist_pcd.yaml on 2 processes: identical parameters, but each rank its own persistent chains,
    all of them in the checkpoint, and each rank gets its own back on resume."""
    fake_mnist(tmp_path / "data", n_train=1200, n_test=200)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"

    def fit(epochs: int, *extra: str) -> None:
        cmd = [
            sys.executable, "-m", "lightning_ebm", "fit", "--config", "rbm_mnist_pcd",
            "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
            "--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", "3",
            "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.callbacks", "[]",
            "--checkpoint.monitor", "null", "--checkpoint.every_n_epochs", "1",
            "--model.init_args.n_hidden", "50", "--model.init_args.num_chains", "7",
            "--data.data_dir", str(tmp_path / "data"), "--data.download", "false", "--data.val_size", "200",
            "--trainer.callbacks+=helpers.callbacks.ParameterDigest",
            "--trainer.callbacks.dirpath", str(tmp_path / f"digest{epochs}"),
            "--trainer.callbacks+=helpers.callbacks.ChainDigest",
            "--trainer.callbacks.dirpath", str(tmp_path / f"digest{epochs}"),
            *extra,
        ]  # fmt: skip
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]

    fit(1)
    params = [json.loads((tmp_path / "digest1" / f"rank{r}.json").read_text()) for r in range(2)]
    assert params[0] == params[1]
    chains = [json.loads((tmp_path / "digest1" / f"chains{r}.json").read_text()) for r in range(2)]
    assert chains[0]["end"] != chains[1]["end"]  # per-rank chains, not rank 0's broadcast
    ckpt = tmp_path / "rbm_mnist_pcd" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["per_rank_state"]["persistent_chains"]
    assert saved.shape == (2, 7, 784)
    assert [float(c.double().sum()) for c in saved] == [chains[0]["end"], chains[1]["end"]]

    fit(2, "--ckpt_path", str(ckpt))
    resumed = [json.loads((tmp_path / "digest2" / f"chains{r}.json").read_text()) for r in range(2)]
    assert [r["start"] for r in resumed] == [c["end"] for c in chains]  # each rank continues its own chains


def test_deep_boltzmann_machines_train_under_two_process_ddp(tmp_path: Path) -> None:
    """dbn_mnist.yaml and dbm_mnist.yaml (narrowed) through every phase on 2 processes: identical
    parameters on both ranks; the DBM's fantasy particles per rank, all in the checkpoint."""
    fake_mnist(tmp_path / "data", n_train=1200, n_test=200)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    for name, sizes, epochs in (("dbn_mnist", "[784, 30, 20]", "[1, 1]"), ("dbm_mnist", "[784, 30, 20]", "[1, 1]")):
        cmd = [
            sys.executable, "-m", "lightning_ebm", "fit", "--config", name,
            "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
            "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "3",
            "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.callbacks", "[]",
            "--checkpoint.every_n_epochs", "1",
            "--model.init_args.layer_sizes", sizes, "--model.init_args.layer_epochs", epochs,
            "--model.init_args.method", "pcd",
            f"--model.init_args.{'num_chains' if name == 'dbn_mnist' else 'layer_num_chains'}", "5",
            "--data.data_dir", str(tmp_path / "data"), "--data.download", "false", "--data.val_size", "200",
            "--trainer.callbacks+=helpers.callbacks.ParameterDigest",
            "--trainer.callbacks.dirpath", str(tmp_path / name),
            "--trainer.callbacks+=helpers.callbacks.ChainDigest",
            "--trainer.callbacks.dirpath", str(tmp_path / name),
        ]  # fmt: skip
        if name == "dbm_mnist":
            cmd += ["--model.init_args.num_chains", "7", "--model.init_args.eval_mean_field_steps", "5"]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        params = [json.loads((tmp_path / name / f"rank{r}.json").read_text()) for r in range(2)]
        assert params[0] == params[1]
        state = torch.load(tmp_path / name / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
        state = state["per_rank_state"]
        assert state["layers.0.persistent_chains"].shape == (2, 5, 784)  # every rank's pretraining chains
        assert not torch.equal(state["layers.1.persistent_chains"][0], state["layers.1.persistent_chains"][1])
        if name == "dbm_mnist":
            chains = [json.loads((tmp_path / name / f"chains{r}.json").read_text()) for r in range(2)]
            assert chains[0]["end"] != chains[1]["end"]
            assert state["persistent_chains"].shape == (2, 7, 784 + 30 + 20)


def test_meg_trains_under_two_process_ddp_and_scores_the_whole_split(tmp_path: Path) -> None:
    """meg_kdd99.yaml on 2 processes: the gradient penalty's double backward and the statistics
    network's update are averaged (identical parameters on both ranks), and the anomaly metrics are
    those of the whole validation split (every rank's scores gathered), so both ranks log the same."""
    write_kdd(tmp_path / "data", kdd_lines(2400))
    params, metrics = fit_two_processes(
        tmp_path, "meg_kdd99",
        "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3",
         "--data.data_dir", str(tmp_path / "data"),
        "--data.batch_size", "64", "--data.eval_batch_size", "50", "--model.init_args.data_shape", "[51]",
        "--model.init_args.energy_net.init_args.in_features", "51",
        "--model.init_args.generator.init_args.out_features", "51",
        "--model.init_args.statistics_net.init_args.data_features", "51",
    )  # fmt: skip
    assert params[0]["_world_size"] == 2 and params[0] == params[1]
    assert metrics[0] == metrics[1] and "val/anomaly/gradient_norm/f1" in metrics[0]
    ckpt = tmp_path / "meg_kdd99" / "version_0" / "checkpoints" / "last.ckpt"
    model = MEG.load_from_checkpoint(ckpt)
    assert model.energy_updates == 6
    assert model.sample(3).shape == (3, 51)
