"""Every shipped config trains for a few steps under two-process CPU DDP through the command line,
shrunk (narrow networks, a few batches, small data), and resumes from its last checkpoint on two
processes. Both processes end with the same parameters and the same floating-point buffers (batch
norm running statistics under ``sync_batchnorm``).

Data: the MNIST configs read the real MNIST test split (skipped where it is absent), the image ones
the small fakes of ``test_image_datamodules.py``, KDD99 the generated rows of ``helpers.data``.
One config runs in the default suite (a DEM with synchronised batch norm on CelebA-shaped images,
about a minute: two launches of two processes); the whole sweep is
``pytest -m slow tests/test_configs_ddp.py`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers.data import kdd_lines, real_mnist_dir, write_kdd

from lightning_ebm.cli import shipped_configs

TESTS = Path(__file__).resolve().parents[1]


def mnist(tmp_path: Path) -> list[str]:
    data = real_mnist_dir(tmp_path / "data")
    return ["--data.data_dir", str(data), "--data.download", "false", "--data.source", "test-split",
            "--data.val_size", "200", "--data.test_size", "200"]  # fmt: skip


def celeba(tmp_path: Path) -> list[str]:
    from helpers.data import write_celeba

    write_celeba(tmp_path / "data", counts=(16, 4, 2))
    return ["--data.data_dir", str(tmp_path / "data"), "--data.batch_size", "4"]


def lsun(tmp_path: Path) -> list[str]:
    from helpers.data import write_lsun_lmdb

    (tmp_path / "data").mkdir()
    write_lsun_lmdb(tmp_path / "data" / "bedroom_train_lmdb", 24)
    return ["--data.data_dir", str(tmp_path / "data"), "--data.batch_size", "4", "--data.val_size", "8"]


def kdd(tmp_path: Path) -> list[str]:
    write_kdd(tmp_path / "data", kdd_lines(1200))
    return ["--data.data_dir", str(tmp_path / "data"), "--data.batch_size", "64", "--data.eval_batch_size", "100",
            "--model.init_args.data_shape", "[51]", "--model.init_args.energy_net.init_args.in_features", "51",
            "--model.init_args.generator.init_args.out_features", "51",
            "--model.init_args.statistics_net.init_args.data_features", "51"]  # fmt: skip


def cifar(tmp_path: Path) -> list[str]:
    from helpers.data import write_cifar10

    write_cifar10(tmp_path / "data")
    return ["--data.data_dir", str(tmp_path / "data"), "--data.batch_size", "8", "--data.val_size", "20"]


def mnist_test_split(tmp_path: Path, *extra: str) -> list[str]:
    data = real_mnist_dir(tmp_path / "data")
    return ["--data.data_dir", str(data), "--data.download", "false", "--data.source", "test-split", *extra]


def stacked(tmp_path: Path) -> list[str]:
    return mnist_test_split(tmp_path, "--data.num_train", "256", "--data.num_val", "64", "--data.num_test", "64",
                            "--data.batch_size", "16", "--data.eval_batch_size", "64")  # fmt: skip


def mnist_anomaly(tmp_path: Path) -> list[str]:
    return mnist_test_split(tmp_path, "--data.batch_size", "16", "--data.eval_batch_size", "100")


def toy(tmp_path: Path) -> list[str]:
    return ["--data.num_samples", "4096"]


def dcgan(prefix: str = "--model.init_args.") -> list[str]:
    return [f"{prefix}num_experts", "16", f"{prefix}feature_net.init_args.base_channels", "8",
            f"{prefix}generator.init_args.base_channels", "8"]  # fmt: skip


def rbm(pcd: bool) -> list[str]:
    extra = ["--model.init_args.num_chains", "20"] if pcd else []
    return ["--model.init_args.n_hidden", "20", "--model.init_args.k", "1", *extra]


STACK = ["--model.init_args.layer_sizes", "[784, 30, 20]", "--model.init_args.layer_epochs", "[1, 1]"]
NARROW_MEG = [f"--model.init_args.{net}.init_args.hidden" for net in ("energy_net", "generator", "statistics_net")]
NARROW_CONV_MEG = [x for net in ("energy_net", "generator", "statistics_net")
                   for x in (f"--model.init_args.{net}.init_args.width", "16")]  # fmt: skip

SMALL_JEM = ["--model.init_args.sgld_steps", "2", "--model.init_args.warmup_steps", "1"]

#: Per shipped config: the data it needs, the shrinking overrides, the epochs of the first run.
CASES: dict[str, tuple[Callable[[Path], list[str]], list[str], int]] = {
    "dbm_mnist.yaml": (mnist, [*STACK, "--model.init_args.num_chains", "7", "--model.init_args.eval_mean_field_steps",
                               "5", "--model.init_args.rbm", '{"method": "pcd", "num_chains": 5}'], 3),
    "dbn_mnist.yaml": (mnist, [*STACK, "--model.init_args.bound_samples", "2"], 1),
    "dem_celeba.yaml": (celeba, dcgan(), 1),
    "dem_lsun.yaml": (lsun, dcgan(), 1),
    "dem_mnist.yaml": (mnist, ["--model.init_args.feature_net.init_args.hidden", "[32]",
                               "--model.init_args.feature_net.init_args.out_features", "32",
                               "--model.init_args.generator.init_args.hidden", "[32, 32]",
                               "--model.init_args.num_experts", "8"], 1),
    "dem_toy.yaml": (toy, [], 1),
    "meg_cifar.yaml": (cifar, NARROW_CONV_MEG, 1),
    "meg_kdd99.yaml": (kdd, [], 1),
    "meg_mnist_anomaly.yaml": (mnist_anomaly, NARROW_CONV_MEG, 1),
    "meg_stackedmnist3.yaml": (stacked, NARROW_CONV_MEG, 1),
    "meg_stackedmnist4.yaml": (stacked, NARROW_CONV_MEG, 1),
    "jem_cifar.yaml": (cifar, [*SMALL_JEM, "--model.init_args.buffer_size", "20",
                               "--model.init_args.classifier.init_args.depth", "10",
                               "--model.init_args.classifier.init_args.widen_factor", "1"], 1),
    "jem_mnist.yaml": (mnist, [*SMALL_JEM, "--model.init_args.buffer_size", "20",
                               "--model.init_args.classifier.init_args.channels", "[4, 8]",
                               "--model.init_args.classifier.init_args.hidden", "16"], 1),
    "jem_toy.yaml": (toy, [*SMALL_JEM, "--model.init_args.buffer_size", "80"], 1),
    "mnist_classifier.yaml": (mnist, ["--model.init_args.net.init_args.channels", "[4, 8]",
                                      "--model.init_args.net.init_args.hidden", "16"], 1),
    "meg_toy.yaml": (toy, [x for arg in NARROW_MEG for x in (arg, "[32, 32]")], 1),
    "rbm_mnist.yaml": (mnist, rbm(pcd=False), 1),
    "rbm_mnist_pcd.yaml": (mnist, rbm(pcd=True), 1),
}  # fmt: skip
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
