"""MNIST data module: splits, preprocessing, binarisation, sharding, and clear errors.

The tests marked ``real`` read the real MNIST test split from ``../shared/data/mnist`` (the two
``.gz`` files torchvision downloads) and are skipped where that folder is absent; the others build
small fake files in torchvision's on-disk format.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from helpers.data import MNIST_TEST_FILES, SHARED_DATA, fake_mnist, idx_bytes, real_mnist_dir

from lightning_ebm.datamodules import MNISTDataModule
from lightning_ebm.datamodules.mnist import parse_idx
from lightning_ebm.errors import UserError

REAL = SHARED_DATA / "mnist"
REAL_FILES = MNIST_TEST_FILES


@pytest.fixture
def real_dir(tmp_path: Path) -> Path:
    """A data_dir holding copies of the real test files in torchvision's layout (MNIST/raw/)."""
    return real_mnist_dir(tmp_path)


def real_module(data_dir: Path, **kwargs) -> MNISTDataModule:
    kwargs = {"source": "test-split", "val_size": 1000, "test_size": 2000, **kwargs}
    dm = MNISTDataModule(data_dir=str(data_dir), **kwargs)
    dm.setup("fit")
    return dm


def fake_trainer(rank: int = 0, world_size: int = 1, training: bool = True) -> SimpleNamespace:
    return SimpleNamespace(global_rank=rank, world_size=world_size, training=training)


# ------------------------------------------------------------------------------ the real test split
def test_test_split_sizes_ranges_and_labels(real_dir: Path) -> None:
    dm = real_module(real_dir)
    sizes = [dm.train_data.shape[0], dm.val_data.shape[0], dm.test_data.shape[0]]
    assert sizes == [7000, 1000, 2000]
    indices = torch.cat([dm.train_indices, dm.val_indices, dm.test_indices])
    assert torch.equal(indices.sort().values, torch.arange(10_000))  # disjoint and covering
    assert dm.train_data.shape[1:] == (1, 28, 28) == dm.data_shape and dm.train_data.dtype == torch.float32
    assert float(dm.train_data.min()) == 0.0 and float(dm.train_data.max()) == 1.0
    for labels in (dm.train_labels, dm.val_labels, dm.test_labels):
        assert labels.dtype == torch.int64 and labels.unique().tolist() == list(range(10))
    # the images are the file's, at the recorded positions
    images = parse_idx(gzip.decompress((REAL / REAL_FILES[0]).read_bytes()), 3)
    labels = parse_idx(gzip.decompress((REAL / REAL_FILES[1]).read_bytes()), 1)
    assert torch.equal(dm.val_data[:, 0] * 255, images[dm.val_indices].float())
    assert torch.equal(dm.test_labels, labels[dm.test_indices].long())

    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (100, 1, 28, 28) and y.shape == (100,) and y.dtype == torch.int64
    assert sum(b[0].shape[0] for b in dm.val_dataloader()) == 1000  # no shuffling, nothing dropped
    assert torch.equal(torch.cat([b[1] for b in dm.test_dataloader()]), dm.test_labels)

    symmetric = real_module(real_dir, value_range="symmetric")
    assert float(symmetric.train_data.min()) == -1.0 and float(symmetric.train_data.max()) == 1.0
    torch.testing.assert_close(symmetric.train_data, dm.train_data * 2 - 1)

    other = real_module(real_dir, seed=1)
    assert not torch.equal(other.val_indices, dm.val_indices)


def test_static_binarisation_is_seeded(real_dir: Path) -> None:
    grey = real_module(real_dir)
    a = real_module(real_dir, binarize="static", value_range="symmetric")  # binary data ignores the range
    b = real_module(real_dir, binarize="static")
    c = real_module(real_dir, binarize="static", seed=1)
    for split in ("train_data", "val_data", "test_data"):
        x = getattr(a, split)
        assert x.unique().tolist() == [0.0, 1.0]
        assert abs(float(x.mean()) - float(getattr(grey, split).mean())) < 0.01
        assert torch.equal(x, getattr(b, split))
    assert torch.equal(c.train_data, real_module(real_dir, binarize="static", seed=1).train_data)
    # another seed draws other pixels: compare the images that both seeds put in the training set
    rows_a = a.train_data[torch.isin(a.train_indices, c.train_indices)]
    rows_c = c.train_data[torch.isin(c.train_indices, a.train_indices)]
    assert rows_a.shape[0] > 1000 and not torch.equal(rows_a, rows_c)


def test_dynamic_binarisation_redraws_training_batches_only(real_dir: Path) -> None:
    dm = real_module(real_dir, binarize="dynamic")
    static = real_module(real_dir, binarize="static")
    assert torch.equal(dm.val_data, static.val_data) and torch.equal(dm.test_data, static.test_data)
    grey = real_module(real_dir)
    assert torch.equal(dm.train_data, grey.train_data)  # intensities, binarised per batch

    dm.trainer = fake_trainer(training=True)
    x, y = next(iter(dm.train_dataloader()))
    first, y1 = dm.on_after_batch_transfer((x, y), 0)
    second, y2 = dm.on_after_batch_transfer((x, y), 0)
    assert first.unique().tolist() == [0.0, 1.0] and not torch.equal(first, second)
    assert torch.equal(y1, y) and torch.equal(y2, y)
    assert abs(float(first.mean()) - float(x.mean())) < 0.02

    dm.trainer = fake_trainer(training=False)  # validation: the fixed, statically binarised data
    xv, yv = next(iter(dm.val_dataloader()))
    out, _ = dm.on_after_batch_transfer((xv, yv), 0)
    assert out is xv and out.unique().tolist() == [0.0, 1.0]


def test_flatten_shapes(real_dir: Path) -> None:
    dm = real_module(real_dir, flatten=True, batch_size=50)
    assert dm.data_shape == (784,)
    assert dm.train_data.shape == (7000, 784) and dm.test_data.shape == (2000, 784)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (50, 784)


def test_training_batches_are_sharded_by_rank(real_dir: Path) -> None:
    seen = []
    for rank in range(2):
        dm = real_module(real_dir, batch_size=500)
        dm.train_labels = torch.arange(dm.train_data.shape[0])  # labels become positions in train_data
        dm.trainer = fake_trainer(rank=rank, world_size=2)
        loader = dm.train_dataloader()
        assert len(loader) == 7  # 3,500 images per rank
        seen.append(torch.cat([y for _, y in loader]))
        val = torch.cat([x for x, _ in dm.val_dataloader()])
        assert val.shape[0] == 500  # half of the validation set, in order
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    assert len(seen[0]) + len(seen[1]) == 7000


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("source", ["test-split", "full"])
def test_missing_files_name_the_directory_and_files(tmp_path: Path, source: str) -> None:
    with pytest.raises(UserError) as info:
        MNISTDataModule(data_dir=str(tmp_path), source=source, download=False).setup()
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "t10k-images-idx3-ubyte" in message
    assert "download: true" in message and "yann.lecun.com" in message and "\n" not in message
    if source == "full":
        assert "train-images-idx3-ubyte" in message


def test_truncated_real_gz_is_reported(real_dir: Path) -> None:
    path = real_dir / "MNIST" / "raw" / REAL_FILES[0]
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="corrupt or truncated") as info:
        real_module(real_dir)
    assert str(path) in str(info.value) and "download" in str(info.value)


@pytest.mark.parametrize("damage", ["bad-magic", "truncated", "bad-gzip", "short"])
def test_damaged_files_are_reported(tmp_path: Path, damage: str) -> None:
    arrays = fake_mnist(tmp_path, n_train=40, n_test=30)
    raw = tmp_path / "MNIST" / "raw"
    images = raw / "t10k-images-idx3-ubyte"
    data = idx_bytes(arrays["t10k-images-idx3-ubyte"])
    if damage == "bad-magic":
        images.write_bytes(idx_bytes(arrays["t10k-images-idx3-ubyte"], magic=1234))
    elif damage == "truncated":
        images.write_bytes(data[:5000])
    elif damage == "short":
        images.write_bytes(data[:6])
    else:
        images.unlink()
        images = raw / "t10k-images-idx3-ubyte.gz"
        images.write_bytes(gzip.compress(data)[:1000])
    for source in ("test-split", "full"):
        dm = MNISTDataModule(data_dir=str(tmp_path), source=source, val_size=5, test_size=5, batch_size=10)
        with pytest.raises(UserError, match="corrupt or truncated") as info:
            dm.setup()
        assert str(images) in str(info.value) and "delete it and download it again" in str(info.value)
    if damage == "bad-gzip":
        assert not (raw / "t10k-images-idx3-ubyte").exists()  # nothing half-written for torchvision


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"binarize": "foo"}, "binarize must be one of 'none', 'static', 'dynamic'; got 'foo'"),
        ({"value_range": "01"}, "value_range must be one of 'unit', 'symmetric'"),
        ({"source": "test"}, "source must be one of 'full', 'test-split'"),
        ({"batch_size": 0}, "batch_size"),
        ({"val_size": -1}, "val_size"),
        ({"source": "test-split", "test_size": 0}, "test_size"),
    ],
)
def test_bad_arguments(kwargs: dict, words: str) -> None:
    with pytest.raises(UserError, match=words):
        MNISTDataModule(**kwargs)


def test_sizes_that_do_not_fit(tmp_path: Path) -> None:
    fake_mnist(tmp_path, n_train=40, n_test=30)
    dm = MNISTDataModule(data_dir=str(tmp_path), source="test-split", val_size=15, test_size=10, batch_size=10)
    with pytest.raises(UserError, match=r"leave 5 of the 30 images .* fewer than batch_size \(10\)"):
        dm.setup()
    with pytest.raises(UserError, match="lower val_size or batch_size"):
        MNISTDataModule(data_dir=str(tmp_path), val_size=35, batch_size=10).setup()


def test_failed_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:1/"])  # refused at once
    dm = MNISTDataModule(data_dir=str(tmp_path), download=True, source="test-split")
    with pytest.raises(UserError, match="downloading MNIST into .* failed") as info:
        dm.setup()
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "\n" not in message


# ----------------------------------------------------------------------- the full source (torchvision)
@pytest.mark.parametrize("gz", [False, True])
def test_full_source_loads_through_torchvision(tmp_path: Path, gz: bool) -> None:
    arrays = fake_mnist(tmp_path, n_train=100, n_test=20, gz=gz)
    # download=True with the files present must not touch the network (there is none here)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=10, batch_size=30, value_range="symmetric", download=gz)
    dm.setup()
    assert [dm.train_data.shape[0], dm.val_data.shape[0], dm.test_data.shape[0]] == [90, 10, 20]
    assert torch.equal(torch.cat([dm.train_indices, dm.val_indices]).sort().values, torch.arange(100))
    train_images = arrays["train-images-idx3-ubyte"]
    torch.testing.assert_close(dm.val_data[:, 0], train_images[dm.val_indices].float() / 127.5 - 1)
    assert torch.equal(dm.train_labels, arrays["train-labels-idx1-ubyte"][dm.train_indices])
    torch.testing.assert_close(dm.test_data[:, 0], arrays["t10k-images-idx3-ubyte"].float() / 127.5 - 1)
    assert dm.test_labels.dtype == torch.int64 and dm.test_labels.tolist() == [i % 10 for i in range(20)]
    assert len(dm.train_dataloader()) == 3
    assert sum(x.shape[0] for x, _ in dm.predict_dataloader()) == 20
    if gz:  # decompressed next to the .gz for torchvision, which only reads plain files
        assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert dm.hparams.val_size == 10


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.train_batches: list[torch.Tensor] = []
        self.val_batches: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.train_batches.append(batch[0].clone())
        return self.w * batch[0].mean()

    def validation_step(self, batch, batch_idx):
        self.val_batches.append(batch[0].clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_dynamic_binarisation_inside_a_trainer(tmp_path: Path) -> None:
    fake_mnist(tmp_path, n_train=100, n_test=20)
    # one batch of all 80 training images per epoch: a fixed binarisation would give the same pixel sums
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=20, batch_size=80, binarize="dynamic", flatten=True)
    model = _Recorder()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert len(model.train_batches) == 2 and all(b.shape == (80, 784) for b in model.train_batches)
    assert all(b.unique().tolist() == [0.0, 1.0] for b in model.train_batches)
    assert not torch.equal(model.train_batches[0].sum(0), model.train_batches[1].sum(0))
    assert dm.train_data.unique().numel() > 2  # the stored training data stays grey
    val = torch.cat(model.val_batches)
    assert torch.equal(val, torch.cat([dm.val_data, dm.val_data]))  # fixed across epochs


def test_no_validation_split_with_flattened_images(real_dir: Path) -> None:
    dm = real_module(real_dir, val_size=0, flatten=True)
    assert dm.val_data.shape == (0, 784) and dm.train_data.shape == (8000, 784)
