"""Every shipped config, shrunk: the data it needs (small files written in the exact on-disk formats,
no download, no ``../shared``) and the overrides that narrow its networks, for quick runs through the
command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from helpers.data import fake_mnist, kdd_lines, write_celeba, write_cifar10, write_kdd, write_lsun_lmdb


def mnist(tmp_path: Path) -> list[str]:
    fake_mnist(tmp_path / "data", n_train=300, n_test=100)
    return ["--data.data_dir", str(tmp_path / "data"), "--data.download", "false", "--data.val_size", "50"]


def mnist_classifier(tmp_path: Path) -> list[str]:
    return [*mnist(tmp_path), "--data.test_size", "50", "--data.batch_size", "32"]


def celeba(tmp_path: Path) -> list[str]:
    write_celeba(tmp_path / "data", counts=(16, 4, 2))
    return ["--data.data_dir", str(tmp_path / "data"), "--data.batch_size", "4"]


def lsun(tmp_path: Path) -> list[str]:
    (tmp_path / "data").mkdir()
    write_lsun_lmdb(tmp_path / "data" / "bedroom_train_lmdb", 24)
    write_lsun_lmdb(tmp_path / "data" / "bedroom_val_lmdb", 8)  # LSUN's released validation set: the test split
    return ["--data.data_dir", str(tmp_path / "data"), "--data.batch_size", "4", "--data.val_size", "8"]


def kdd(tmp_path: Path) -> list[str]:
    write_kdd(tmp_path / "data", kdd_lines(1200))
    return ["--data.data_dir", str(tmp_path / "data"), "--data.download", "false", "--data.batch_size", "64",
            "--data.eval_batch_size", "100",
            "--model.init_args.data_shape", "[51]", "--model.init_args.energy_net.init_args.in_features", "51",
            "--model.init_args.generator.init_args.out_features", "51",
            "--model.init_args.statistics_net.init_args.data_features", "51"]  # fmt: skip


def cifar(tmp_path: Path) -> list[str]:
    write_cifar10(tmp_path / "data")
    return ["--data.data_dir", str(tmp_path / "data"), "--data.download", "false", "--data.batch_size", "8",
            "--data.val_size", "20"]  # fmt: skip


def stacked(tmp_path: Path) -> list[str]:
    fake_mnist(tmp_path / "data", n_train=5300, n_test=100)  # the digits' validation split is 5,000
    return ["--data.data_dir", str(tmp_path / "data"), "--data.download", "false", "--data.num_train", "256",
            "--data.num_val", "64", "--data.num_test", "64", "--data.batch_size", "16",
            "--data.eval_batch_size", "64"]  # fmt: skip


def mnist_anomaly(tmp_path: Path) -> list[str]:
    fake_mnist(tmp_path / "data", n_train=300, n_test=100)
    return ["--data.data_dir", str(tmp_path / "data"), "--data.download", "false", "--data.batch_size", "16",
            "--data.eval_batch_size", "100"]  # fmt: skip


def toy(tmp_path: Path) -> list[str]:
    return ["--data.num_samples", "4096"]


def dcgan(prefix: str = "--model.init_args.") -> list[str]:
    return [f"{prefix}num_experts", "16", f"{prefix}feature_net.init_args.base_channels", "8",
            f"{prefix}generator.init_args.base_channels", "8"]  # fmt: skip


def rbm(pcd: bool) -> list[str]:
    extra = ["--model.init_args.num_chains", "20"] if pcd else []
    return ["--model.init_args.n_hidden", "20", "--model.init_args.k", "1", "--model.init_args.sample_steps", "5",
            *extra]  # fmt: skip


STACK = ["--model.init_args.layer_sizes", "[784, 30, 20]", "--model.init_args.layer_epochs", "[1, 1]",
         "--model.init_args.sample_steps", "5"]  # fmt: skip
NARROW_MEG = [x for net in ("energy_net", "generator", "statistics_net")
              for x in (f"--model.init_args.{net}.init_args.hidden", "[32, 32]")]  # fmt: skip
NARROW_CONV_MEG = [x for net in ("energy_net", "generator", "statistics_net")
                   for x in (f"--model.init_args.{net}.init_args.width", "16")]  # fmt: skip
SMALL_JEM = ["--model.init_args.sgld_steps", "2", "--model.init_args.lr_schedule.init_args.warmup_steps", "1"]

#: Per shipped config: the data it needs, the shrinking overrides, the epochs of a first run.
CASES: dict[str, tuple[Callable[[Path], list[str]], list[str], int]] = {
    "dbm_mnist.yaml": (mnist, [*STACK, "--model.init_args.num_chains", "7", "--model.init_args.eval_mean_field_steps",
                               "5", "--model.init_args.method", "pcd", "--model.init_args.layer_num_chains", "5"], 3),
    "dbn_mnist.yaml": (mnist, [*STACK, "--model.init_args.bound_samples", "2"], 1),
    "dem_celeba.yaml": (celeba, dcgan(), 1),
    "dem_lsun.yaml": (lsun, dcgan(), 1),
    "dem_mnist.yaml": (mnist, ["--model.init_args.feature_net.init_args.hidden", "[32]",
                               "--model.init_args.feature_net.init_args.out_features", "32",
                               "--model.init_args.generator.init_args.hidden", "[32, 32]",
                               "--model.init_args.num_experts", "8"], 1),
    "dem_toy.yaml": (toy, ["--model.init_args.mcmc_steps", "5"], 1),
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
    "mnist_classifier.yaml": (mnist_classifier, ["--model.init_args.net.init_args.channels", "[4, 8]",
                                                 "--model.init_args.net.init_args.hidden", "16"], 1),
    "meg_toy.yaml": (toy, [*NARROW_MEG, "--model.init_args.mcmc_steps", "5"], 1),
    "rbm_mnist.yaml": (mnist, rbm(pcd=False), 1),
    "rbm_mnist_pcd.yaml": (mnist, rbm(pcd=True), 1),
}  # fmt: skip
