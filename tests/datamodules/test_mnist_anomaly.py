"""MNIST anomaly detection (one digit is the anomaly, Zenati et al. 2018 / MEG): the split's sizes and
contents, labels, ranges, seeding and clear errors; on the real MNIST test split and on small fake files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from helpers.data import fake_mnist, real_mnist_dir

from lightning_ebm.datamodules import MNISTAnomalyDataModule, MNISTDataModule
from lightning_ebm.errors import UserError


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_mnist_dir(tmp_path_factory.mktemp("mnist"))


def anomaly(data_dir: Path, **kwargs) -> MNISTAnomalyDataModule:
    dm = MNISTAnomalyDataModule(str(data_dir), **{"source": "test-split", **kwargs})
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("digit", [1, 4])
def test_real_protocol_sizes_and_contents(real_dir: Path, digit: int) -> None:
    dm = anomaly(real_dir, anomaly_digit=digit)
    images, digits = MNISTDataModule(str(real_dir), source="test-split").load_images()
    num_anomalous = int((digits == digit).sum())  # 1,135 ones, 982 fours in the official test split
    assert num_anomalous == {1: 1135, 4: 982}[digit]
    num_normal = 10_000 - num_anomalous
    assert dm.train_data.shape == (int(0.8 * num_normal), 1, 28, 28)  # 7,092 for digit 1
    assert dm.test_data.shape[0] == num_normal - int(0.8 * num_normal) + num_anomalous  # 2,908 for digit 1
    assert dm.val_data.shape[0] == 0  # the published protocol has no validation set
    # training: normal digits only; test: every anomalous image and the other normal ones
    assert not bool((dm.train_digits == digit).any()) and int(dm.train_labels.sum()) == 0
    assert torch.equal(dm.test_labels, (dm.test_digits == digit).long())
    assert int(dm.test_labels.sum()) == num_anomalous
    everything = torch.cat([dm.train_indices, dm.test_indices]).sort().values
    assert torch.equal(everything, torch.arange(10_000))  # disjoint, covering
    # images are the file's, in [-1, 1]
    assert torch.equal(dm.test_data[:, 0], images[dm.test_indices].float() / 255 * 2 - 1)
    assert float(dm.train_data.min()) == -1.0 and float(dm.train_data.max()) == 1.0
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 28, 28) and y.shape == (64,) and dm.data_shape == (1, 28, 28)
    xs, ys = zip(*dm.test_dataloader())
    assert torch.equal(torch.cat(ys), dm.test_labels) and sum(b.shape[0] for b in xs) == dm.test_data.shape[0]


def test_real_seeding_validation_and_range(real_dir: Path) -> None:
    a, b, c = anomaly(real_dir), anomaly(real_dir), anomaly(real_dir, seed=1)
    assert torch.equal(a.train_indices, b.train_indices) and not torch.equal(a.train_indices, c.train_indices)
    v = anomaly(real_dir, val_fraction=0.1, value_range="unit")
    assert v.val_data.shape[0] == 1000 and 0 < int(v.val_labels.sum()) < 1000  # both classes
    parts = torch.cat([v.train_indices, v.val_indices, v.test_indices]).sort().values
    assert torch.equal(parts, torch.arange(10_000))
    assert not bool((v.train_digits == 1).any())
    assert float(v.train_data.min()) == 0.0 and float(v.train_data.max()) == 1.0


def test_fake_full_source_pools_training_and_test_files(tmp_path: Path) -> None:
    """With ``full`` the 70,000 images of both files are pooled: here 100 + 20 fake images, 12 of them 3s."""
    arrays = fake_mnist(tmp_path, n_train=100, n_test=20)  # labels 0..9 cyclically
    dm = MNISTAnomalyDataModule(str(tmp_path), anomaly_digit=3, batch_size=8, value_range="unit")
    dm.setup()
    assert dm.train_data.shape[0] == int(0.8 * 108) == 86 and dm.test_data.shape[0] == 120 - 86
    assert int(dm.test_labels.sum()) == 12
    pooled = torch.cat([arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]]).float() / 255
    assert torch.equal(dm.train_data[:, 0], pooled[dm.train_indices])


def test_missing_data_is_a_fast_clear_error(tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        MNISTAnomalyDataModule(str(tmp_path), download=False).setup()
    assert time.perf_counter() - start < 3.0
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "train-images-idx3-ubyte" in message
    assert "download: true" in message


def test_corrupt_file_is_reported(tmp_path: Path) -> None:
    fake_mnist(tmp_path, n_train=40, n_test=30)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(UserError, match="corrupt or truncated") as info:
        MNISTAnomalyDataModule(str(tmp_path), source="test-split", batch_size=4).setup()
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"anomaly_digit": 10}, "anomaly_digit"), ({"train_fraction": 1.0}, "train_fraction"),
     ({"val_fraction": 1.0}, "val_fraction"), ({"value_range": "01"}, "value_range must be one of 'unit', 'symmetric'"),
     ({"batch_size": 0}, "batch_size"), ({"source": "x"}, "source must be one of 'full', 'test-split'")],
)  # fmt: skip
def test_bad_arguments(kwargs: dict, words: str) -> None:
    with pytest.raises(UserError, match=words):
        MNISTAnomalyDataModule(**kwargs)
