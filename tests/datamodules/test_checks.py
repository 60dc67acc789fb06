"""What every data module checks, written once for all of them: downloads on by default (and, offline,
a quick clear error with the manual route), batch sizes, ``Literal`` choices, and unreadable data
reported as such."""

from __future__ import annotations

import inspect
import re
import socket
import time
from pathlib import Path

import pytest
from helpers.data import deny_reading, fake_mnist, kdd_lines, write_celeba, write_cifar10, write_kdd

from lightning_ebm.datamodules import (
    CelebADataModule,
    CIFAR10DataModule,
    KDD99DataModule,
    LSUNDataModule,
    MNISTAnomalyDataModule,
    MNISTDataModule,
    StackedMNISTDataModule,
    Toy2DDataModule,
)
from lightning_ebm.errors import UserError
from lightning_ebm.utils import literal_choices

ALL = (
    CelebADataModule, CIFAR10DataModule, KDD99DataModule, LSUNDataModule, MNISTAnomalyDataModule, MNISTDataModule,
    StackedMNISTDataModule, Toy2DDataModule,
)  # fmt: skip
DOWNLOADABLE = (CelebADataModule, CIFAR10DataModule, KDD99DataModule, MNISTAnomalyDataModule, MNISTDataModule,
                StackedMNISTDataModule)  # fmt: skip


# ------------------------------------------------------------------------------------------ downloads
@pytest.mark.parametrize("cls", DOWNLOADABLE)
def test_downloads_are_on_by_default(cls: type) -> None:
    assert inspect.signature(cls).parameters["download"].default is True


@pytest.mark.parametrize(
    ("cls", "what", "where", "fix"),
    [
        (MNISTDataModule, "MNIST", "MNIST/raw", "t10k-labels-idx1-ubyte.gz from https://ossci-datasets"),
        (MNISTAnomalyDataModule, "MNIST", "MNIST/raw", "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz"),
        (StackedMNISTDataModule, "MNIST", "MNIST/raw", "t10k-labels-idx1-ubyte.gz from https://ossci-datasets"),
        (CIFAR10DataModule, "CIFAR-10", "", "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
        (CelebADataModule, "CelebA", "celeba", "img_align_celeba.zip and list_eval_partition.txt from https://"),
        (KDD99DataModule, "KDD99", "", "fetch http://kdd.ics.uci.edu/databases/kddcup99/kddcup.data_10_percent.gz"),
    ],
)
def test_offline_the_default_download_fails_quickly_with_the_manual_route(
    tmp_path: Path, cls: type, what: str, where: str, fix: str
) -> None:
    """The conftest cuts the network, as on a machine without internet: the download is attempted (the
    default) and fails at once into one line saying what, where, why and how to get the files by hand."""
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        cls(str(tmp_path)).setup()
    message = str(info.value)
    assert time.perf_counter() - start < 10
    assert message.startswith(f"downloading {what} into {tmp_path / where} failed (")
    assert re.match(r"downloading .* failed \(\S.*\)\. ", message)  # with the reason (no network, no gdown)
    assert fix in message and "download: false" in message and "\n" not in message
    assert socket.getdefaulttimeout() is None  # the download's timeout was put back


@pytest.mark.parametrize("cls", DOWNLOADABLE)
def test_download_false_never_touches_the_network(tmp_path: Path, cls: type) -> None:
    with pytest.raises(UserError, match="not found") as info:
        cls(str(tmp_path), download=False).setup()
    assert "download: true" in str(info.value)


# ------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("batch_size", [0, -1])
def test_batch_size_below_one_is_refused(cls: type, batch_size: int) -> None:
    with pytest.raises(UserError, match=f"batch_size must be at least 1, got {batch_size}"):
        cls(batch_size=batch_size)


@pytest.mark.parametrize(
    ("cls", "kwargs", "words"),
    [
        (KDD99DataModule, {"eval_batch_size": 0}, "eval_batch_size must be at least 1, got 0"),
        (StackedMNISTDataModule, {"eval_batch_size": -2}, "eval_batch_size must be at least 1, got -2"),
        (MNISTAnomalyDataModule, {"eval_batch_size": 0}, "eval_batch_size must be at least 1, got 0"),
        (Toy2DDataModule, {"num_val_samples": 0}, "num_val_samples must be at least 1, got 0"),
        (MNISTDataModule, {"val_size": -1}, "val_size must be 0 or more, got -1"),
        (CIFAR10DataModule, {"val_size": -1}, "val_size must be 0 or more, got -1"),
        (CIFAR10DataModule, {"num_workers": -1}, "num_workers must be 0 or more, got -1"),
        (LSUNDataModule, {"val_size": -5}, "val_size must be 0 or more, got -5"),
        (StackedMNISTDataModule, {"num_test": -1}, "num_test must be 0 or more, got -1"),
        (CelebADataModule, {"crop": 0}, "crop must be at least 1, got 0"),
        (CelebADataModule, {"image_size": 0}, "image_size must be at least 1, got 0"),
    ],
)
def test_sizes_out_of_range_are_refused(cls: type, kwargs: dict, words: str) -> None:
    with pytest.raises(UserError, match=words):
        cls(**kwargs)


def _literal_options(cls: type) -> dict[str, tuple]:
    hints = __import__("typing").get_type_hints(cls.__init__)
    return {name: choices for name, hint in hints.items() if (choices := literal_choices(hint)) is not None}


EXPECTED_OPTIONS = {
    MNISTDataModule: {"binarize": ("none", "static", "dynamic"), "value_range": ("unit", "symmetric"),
                      "source": ("full", "test-split")},
    CIFAR10DataModule: {"value_range": ("symmetric", "unit")},
    CelebADataModule: {"value_range": ("symmetric", "unit")},
    LSUNDataModule: {"source": ("lmdb", "folder"), "value_range": ("symmetric", "unit")},
    KDD99DataModule: {"scaling": ("minmax", "none")},
    Toy2DDataModule: {"name": ("swissroll", "8gaussians", "25gaussians", "rings", "checkerboard", "2spirals")},
    StackedMNISTDataModule: {"source": ("full", "test-split"), "value_range": ("unit", "symmetric")},
    MNISTAnomalyDataModule: {"source": ("full", "test-split"), "value_range": ("unit", "symmetric")},
}  # fmt: skip


@pytest.mark.parametrize("cls", ALL)
def test_every_option_of_a_few_values_is_a_literal_and_checked(cls: type) -> None:
    """The choices are ``Literal`` annotations (the command line lists and checks them); built in Python,
    a value outside them is a UserError naming the option, its choices and the value."""
    options = _literal_options(cls)
    assert options == EXPECTED_OPTIONS[cls]
    for name, choices in options.items():
        listed = ", ".join(repr(c) for c in choices)
        with pytest.raises(UserError, match=f"^{name} must be one of {listed}; got 'bogus'$"):
            cls(**{name: "bogus"})
        defaults = inspect.signature(cls).parameters[name].default
        assert defaults in choices


# ------------------------------------------------------------------------------------------ permissions
PERMISSION = r"cannot read .* \(permission denied\): fix its permissions"


def test_an_unreadable_mnist_directory_is_not_reported_as_missing(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    fake_mnist(tmp_path, n_train=40, n_test=30)
    raw = tmp_path / "MNIST" / "raw"
    deny_reading(monkeypatch, raw)
    for cls in (MNISTDataModule, MNISTAnomalyDataModule, StackedMNISTDataModule):
        with pytest.raises(UserError, match=PERMISSION) as info:
            cls(str(tmp_path), download=False, source="test-split").setup()
        assert f"the MNIST directory {raw} (permission denied)" in str(info.value)
        assert "not found" not in str(info.value)


@pytest.mark.parametrize("source", ["test-split", "full"])
@pytest.mark.parametrize("gz", [False, True])
def test_an_unreadable_mnist_file_is_reported_as_such(tmp_path: Path, monkeypatch, source: str, gz: bool) -> None:  # noqa: ANN001
    fake_mnist(tmp_path, n_train=40, n_test=30, gz=gz)
    path = tmp_path / "MNIST" / "raw" / ("t10k-labels-idx1-ubyte" + (".gz" if gz else ""))
    deny_reading(monkeypatch, path)
    dm = MNISTDataModule(str(tmp_path), download=False, source=source, val_size=5, test_size=5, batch_size=10)
    with pytest.raises(UserError, match=PERMISSION) as info:
        dm.setup()
    assert f"cannot read MNIST file {path} (permission denied)" in str(info.value)


def test_an_unreadable_parent_directory_is_named(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    fake_mnist(tmp_path / "a" / "b", n_train=40, n_test=30)
    deny_reading(monkeypatch, tmp_path / "a")
    with pytest.raises(UserError, match=PERMISSION) as info:
        MNISTDataModule(str(tmp_path / "a" / "b"), download=False).setup()
    assert f"the directory {tmp_path / 'a'} may not be entered" in str(info.value)


def test_unreadable_kdd99_data(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    path = write_kdd(tmp_path / "data", kdd_lines(200))
    with monkeypatch.context() as m:
        deny_reading(m, path)
        with pytest.raises(UserError, match=f"cannot read KDD99 file {path} \\(permission denied\\)"):
            KDD99DataModule(str(tmp_path / "data"), batch_size=8).setup()
    with monkeypatch.context() as m:
        deny_reading(m, tmp_path / "data")
        with pytest.raises(UserError, match=f"the KDD99 directory {tmp_path / 'data'} \\(permission denied\\)"):
            KDD99DataModule(str(tmp_path / "data"), batch_size=8, download=False).setup()


def test_unreadable_cifar10_data(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    with monkeypatch.context() as m:
        deny_reading(m, folder / "data_batch_2")
        with pytest.raises(UserError, match=PERMISSION) as info:
            CIFAR10DataModule(str(tmp_path), batch_size=8, val_size=10).setup()
        assert f"CIFAR-10 file {folder / 'data_batch_2'}" in str(info.value)
    with monkeypatch.context() as m:
        deny_reading(m, folder)
        with pytest.raises(UserError, match=PERMISSION) as info:
            CIFAR10DataModule(str(tmp_path), batch_size=8, val_size=10, download=False).setup()
        assert f"the CIFAR-10 directory {folder}" in str(info.value) and "lacks" not in str(info.value)


def test_unreadable_celeba_data(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    folder = write_celeba(tmp_path)
    cases = [
        (folder / "list_eval_partition.txt", "CelebA partition file"),
        (folder / "img_align_celeba", "CelebA image folder"),
        (folder, "the CelebA directory"),
    ]
    for denied, what in cases:
        with monkeypatch.context() as m:
            deny_reading(m, denied)
            with pytest.raises(UserError, match=PERMISSION) as info:
                CelebADataModule(str(tmp_path), batch_size=4, download=False).setup()
            assert f"{what} {denied}" in str(info.value)
    jpeg = folder / "img_align_celeba" / "000002.jpg"
    dm = CelebADataModule(str(tmp_path), batch_size=4)
    dm.setup()
    deny_reading(monkeypatch, jpeg)
    with pytest.raises(UserError, match=f"cannot read image {jpeg} \\(permission denied\\)"):
        dm.train_dataset[1]  # not "corrupt or truncated": the file is fine, the permissions are not


def test_unreadable_lsun_folders(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from helpers.data import jpeg_bytes
    from numpy.random import default_rng

    (tmp_path / "bedroom" / "sub").mkdir(parents=True)
    for i in range(6):
        (tmp_path / "bedroom" / ("sub" if i % 2 else "") / f"{i}.png").write_bytes(
            jpeg_bytes(default_rng(i), 70, 70, "PNG")
        )
    for denied in (tmp_path / "bedroom", tmp_path / "bedroom" / "sub"):
        with monkeypatch.context() as m:
            deny_reading(m, denied)
            with pytest.raises(UserError, match=PERMISSION) as info:
                LSUNDataModule(str(tmp_path), source="folder", batch_size=2, val_size=0).setup()
            assert str(denied) in str(info.value) and "not found" not in str(info.value)
    (tmp_path / "bedroom_train_lmdb").mkdir()
    (tmp_path / "bedroom_train_lmdb" / "data.mdb").write_bytes(b"")
    for denied in (tmp_path / "bedroom_train_lmdb", tmp_path / "bedroom_train_lmdb" / "data.mdb"):
        with monkeypatch.context() as m:
            deny_reading(m, denied)
            with pytest.raises(UserError, match=PERMISSION) as info:
                LSUNDataModule(str(tmp_path), batch_size=2, val_size=0).setup()
            assert str(denied) in str(info.value) and "corrupt" not in str(info.value)
