"""DBN and DBM on real binarized MNIST (the test split in ``../shared/data/mnist``): the shipped
configs through the command line, narrowed and shortened, every phase of them. Skipped where the
real files are absent (a fresh clone)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers.cli import run_cli, small_config
from helpers.data import real_mnist_dir

from lightning_ebm.cli import CONFIG_DIR
from lightning_ebm.models import DBM, DBN


def test_published_architectures_and_schedules_in_the_configs() -> None:
    dbn = yaml.safe_load((CONFIG_DIR / "dbn_mnist.yaml").read_text())
    model = dbn["model"]["init_args"]
    assert model["layer_sizes"] == [784, 500, 500, 2000] and model["layer_epochs"] == [30, 30, 30]
    assert dbn["trainer"]["max_epochs"] == sum(model["layer_epochs"])
    dbm = yaml.safe_load((CONFIG_DIR / "dbm_mnist.yaml").read_text())
    model = dbm["model"]["init_args"]
    assert model["layer_sizes"] == [784, 500, 1000]
    assert (model["num_chains"], model["gibbs_steps"], model["lr_schedule"]["init_args"]["linear_decay_start"]) == (
        100,
        5,
        0.0,
    )
    assert 10 <= model["mean_field_steps"] <= 30 and model["optimizer"]["init_args"]["lr"] == 0.001
    assert dbm["trainer"]["max_epochs"] - sum(model["layer_epochs"]) == 500  # 300,000 joint updates of 100
    for config in (dbn, dbm):
        assert config["data"]["init_args"]["binarize"] == "static"
        assert config["data"]["init_args"]["batch_size"] == 100


CASES = {
    # name: (overrides, epochs, model class, scalars that must be in TensorBoard)
    "dbn_mnist.yaml": (
        ["--model.init_args.layer_sizes", "[784, 40, 30, 50]", "--model.init_args.layer_epochs", "[1, 1, 1]"],
        3,
        DBN,
        ["train/layer0/reconstruction_error", "train/layer2/free_energy_gap", "val/layer1/pseudo_log_likelihood",
         "val/log_likelihood", "train/log_likelihood"],
    ),
    "dbm_mnist.yaml": (
        ["--model.init_args.layer_sizes", "[784, 40, 50]", "--model.init_args.layer_epochs", "[1, 1]",
         "--model.init_args.eval_mean_field_steps", "10"],
        3,
        DBM,
        ["train/layer1/reconstruction_error", "train/mean_field_free_energy", "train/energy_samples",
         "val/mean_field_free_energy", "val/log_likelihood"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_shipped_deep_config_trains_through_every_phase_on_real_mnist(tmp_path: Path, name: str) -> None:
    overrides, epochs, cls, tags = CASES[name]
    config = yaml.safe_load(small_config(tmp_path, name).read_text())
    for callback in config["trainer"]["callbacks"]:
        callback["init_args"]["every_n_epochs"] = 1
    (tmp_path / name).write_text(yaml.safe_dump(config))
    data_dir = real_mnist_dir(tmp_path)
    common = [
        "--config", str(tmp_path / name),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--trainer.enable_progress_bar", "false",
        "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
        "--data.data_dir", str(data_dir), "--data.download", "false", "--data.source", "test-split",
        "--data.val_size", "1000", "--data.test_size", "1000", *overrides,
    ]  # fmt: skip
    fit = ["fit", *common, "--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", "20"]
    assert run_cli([*fit, "--trainer.log_every_n_steps", "5", "--checkpoint.every_n_epochs", "1"]) == 0
    run = tmp_path / "logs" / name.removesuffix(".yaml") / "version_0"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run)).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in tags:
        assert tag in scalars, tag
    assert "layer0/filters" in events.Tags()["images"]
    bounds = [s.value for s in events.Scalars("val/log_likelihood")]
    assert all(-400 < b < -80 for b in bounds), bounds  # barely trained: far from chance (-543)

    ckpt = run / "checkpoints" / "last.ckpt"
    model = cls.load_from_checkpoint(ckpt)
    assert model.sample(3, num_steps=2).shape == (3, 1, 28, 28)
    assert torch.isfinite(model.energy(torch.zeros(2, 1, 28, 28))).all()
    if cls is DBM:
        assert bool(model.composed) and model.persistent_chains.shape == (100, 784 + 40 + 50)
        assert len(events.Scalars("val/log_likelihood")) == 1  # only once joint training had started
    else:
        assert int(model.depth) == 3 and len(bounds) == 3  # the RBM, then the 2- and 3-layer DBN
    assert run_cli(["test", *common, "--ckpt_path", str(ckpt)]) == 0


@pytest.mark.slow
def test_depth_pays_on_real_mnist(tmp_path: Path) -> None:
    """The issue's comparison, narrowed (784-100-200): the DBM's AIS test bound beats an RBM of its
    first-layer size trained for the same time, and the DBN's bound is no worse than its first RBM's
    likelihood. ``benchmarks/boltzmann_depth.py`` run as a program (3 pretraining epochs per layer, 5
    joint epochs, AIS with 5,000 betas and 100 chains, one thread); full width: docs/dbm.md's figures."""
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "boltzmann_depth.py"
    out = tmp_path / "results.json"
    cmd = [sys.executable, str(script), "--mnist-dir", str(real_mnist_dir(tmp_path)), "--h1", "100", "--h2", "200",
           "--pretrain-epochs", "3", "--joint-epochs", "5", "--batch-size", "100", "--betas", "5000",
           "--chains", "100", "--threads", "1", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=870)  # within the suite's 900 s
    results = json.loads(out.read_text())
    names = {"dbm": "dbm_784_100_200", "rbm_same_time": "rbm_784_100_same_time",
             "dbn_first_rbm": "dbn_first_rbm_784_100", "dbn": "dbn_784_100_200_bound"}  # fmt: skip
    ll = {name: results[key]["test_log_likelihood"] for name, key in names.items()}
    print(ll, f"(DBM trained {results['dbm_784_100_200']['train_s']:.0f} s)")
    assert ll["dbm"] > ll["rbm_same_time"], ll
    assert ll["dbn"] >= ll["dbn_first_rbm"] - 0.5, ll
