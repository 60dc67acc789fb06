"""CIFAR-10, CelebA and LSUN data modules on small data written by the tests in the exact on-disk formats."""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.data import jpeg_bytes, write_celeba, write_cifar10, write_lsun_lmdb
from PIL import Image

from lightning_ebm.datamodules import CelebADataModule, CIFAR10DataModule, LSUNDataModule
from lightning_ebm.errors import UserError


def fake_trainer(training: bool = True) -> SimpleNamespace:
    return SimpleNamespace(global_rank=0, world_size=1, training=training)


def check_images(x: torch.Tensor, shape: tuple[int, ...], low: float = -1.0) -> None:
    assert x.shape == shape and x.dtype == torch.float32
    assert float(x.min()) >= low and float(x.max()) <= 1.0
    assert float(x.min()) < low + 0.2 and float(x.max()) > 0.8  # the range is used, not squeezed


# ----------------------------------------------------------------------------------------- CIFAR-10
def test_cifar10_splits_shapes_and_ranges(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    dm = CIFAR10DataModule(str(tmp_path), batch_size=16, val_size=30, seed=0)
    dm.setup("fit")
    assert [dm.train_data.shape[0], dm.val_data.shape[0], dm.test_data.shape[0]] == [70, 30, 12]
    assert torch.equal(torch.cat([dm.train_indices, dm.val_indices]).sort().values, torch.arange(100))
    assert dm.classes == [f"class{i}" for i in range(10)]
    check_images(dm.train_data, (70, 3, 32, 32))
    # pixel (c, h, w) of image i is data[i, 1024 c + 32 h + w], mapped to [-1, 1]
    train = np.concatenate([written[f"data_batch_{i}"] for i in range(1, 6)])
    i = int(dm.val_indices[3])
    expected = torch.from_numpy(train[i].reshape(3, 32, 32).astype(np.float32)) / 127.5 - 1
    torch.testing.assert_close(dm.val_data[3], expected)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and y.dtype == torch.int64 and y.shape == (16,)
    assert sum(b[0].shape[0] for b in dm.val_dataloader()) == 30
    assert torch.equal(torch.cat([b[1] for b in dm.test_dataloader()]), dm.test_labels)

    unit = CIFAR10DataModule(str(tmp_path), batch_size=16, val_size=30, value_range="unit")
    unit.setup()
    check_images(unit.train_data, (70, 3, 32, 32), low=0.0)
    torch.testing.assert_close(unit.train_data * 2 - 1, dm.train_data)
    other = CIFAR10DataModule(str(tmp_path), batch_size=16, val_size=30, seed=1)
    other.setup()
    assert not torch.equal(other.val_indices, dm.val_indices)


def test_cifar10_flips_training_batches_only(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(str(tmp_path), batch_size=64, val_size=0, flip=True)
    dm.setup()
    dm.trainer = fake_trainer(training=True)
    x, y = dm.train_data[:64], dm.train_labels[:64]
    torch.manual_seed(0)
    fx, fy = dm.on_after_batch_transfer((x, y), 0)
    flipped = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(fx, x)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(fx, x)])
    assert bool((flipped | kept).all()) and 10 < int(flipped.sum()) < 54 and torch.equal(fy, y)
    dm.trainer = fake_trainer(training=False)
    assert torch.equal(dm.on_after_batch_transfer((x, y), 0)[0], x)


def test_cifar10_missing_files_error_is_quick_and_complete(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        CIFAR10DataModule(str(tmp_path / "nowhere"), download=False).setup()
    message = str(info.value)
    assert time.monotonic() - start < 5 and "\n" not in message
    for words in ("cifar-10-batches-py", "data_batch_1..5", "test_batch", "batches.meta", "download: true"):
        assert words in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match="lacks data_batch_3"):
        CIFAR10DataModule(str(tmp_path), download=False).setup()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "shape", "labels", "code"])
def test_cifar10_damaged_pickle_is_reported(tmp_path: Path, damage: str) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:2000])
    elif damage == "garbage":
        path.write_bytes(b"not a pickle at all")
    elif damage == "shape":
        entry = {b"data": np.zeros((5, 1024), np.uint8), b"labels": [0] * 5, b"batch_label": b""}
        path.write_bytes(pickle.dumps(entry, protocol=2))
    elif damage == "labels":
        entry = {b"data": np.zeros((5, 3072), np.uint8), b"labels": [0, 1, 2], b"batch_label": b""}
        path.write_bytes(pickle.dumps(entry, protocol=2))
    else:  # a pickle that would run code is refused, not executed
        path.write_bytes(pickle.dumps(SimpleNamespace(data=1)))
    with pytest.raises(UserError, match="data_batch_2 is corrupt or truncated"):
        CIFAR10DataModule(str(tmp_path), batch_size=8, val_size=10).setup()


# ------------------------------------------------------------------------------------------- CelebA
def test_celeba_official_splits_crop_and_range(tmp_path: Path) -> None:
    write_celeba(tmp_path)
    dm = CelebADataModule(str(tmp_path), batch_size=4, image_size=64)
    dm.setup("fit")
    assert [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)] == [10, 4, 3]
    assert Path(dm.val_files[0]).name == "000011.jpg"
    x = next(iter(dm.train_dataloader()))
    check_images(x, (4, 3, 64, 64))
    assert sum(b.shape[0] for b in dm.val_dataloader()) == 4
    # the reference images are the centre 108 x 108 resized to 64, unflipped
    image = Image.open(dm.test_files[0]).convert("RGB")
    crop = np.asarray(image)[55:163, 35:143].astype(np.float32)
    resized = torch.from_numpy(np.array(Image.fromarray(crop.astype(np.uint8)).resize((64, 64), Image.BILINEAR)))
    got = dm.reference_dataset("test")[0]
    assert (got.permute(1, 2, 0) * 127.5 + 127.5 - resized.float()).abs().mean() < 2.0
    small = CelebADataModule(str(tmp_path), batch_size=4, image_size=32, value_range="unit", flip=False)
    small.setup()
    check_images(small.val_dataset[0].unsqueeze(0), (1, 3, 32, 32), low=0.0)


def test_celeba_missing_and_damaged_data(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        CelebADataModule(str(tmp_path), download=False).setup()
    message = str(info.value)
    assert time.monotonic() - start < 5 and "\n" not in message
    for words in (str(tmp_path / "celeba"), "img_align_celeba", "list_eval_partition.txt", "download: true"):
        assert words in message
    folder = write_celeba(tmp_path)
    (folder / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(UserError, match=r"1 of the images listed .* \(first: 000002.jpg\)"):
        CelebADataModule(str(tmp_path), batch_size=4).setup()
    folder = write_celeba(tmp_path)
    partition = folder / "list_eval_partition.txt"
    partition.write_text(partition.read_text() + "000099.jpg 7\n")
    with pytest.raises(UserError, match="partition file .* is corrupt or truncated .*line 18"):
        CelebADataModule(str(tmp_path), batch_size=4).setup()
    folder = write_celeba(tmp_path)
    jpeg = folder / "img_align_celeba" / "000003.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:300])
    dm = CelebADataModule(str(tmp_path), batch_size=4)
    dm.setup()
    with pytest.raises(UserError, match="000003.jpg is corrupt or truncated"):
        dm.train_dataset[2]


# --------------------------------------------------------------------------------------------- LSUN
def test_lsun_lmdb_holdout_resize_and_test_split(tmp_path: Path) -> None:
    write_lsun_lmdb(tmp_path / "bedroom_train_lmdb", 20)
    write_lsun_lmdb(tmp_path / "bedroom_val_lmdb", 3, fmt="JPEG")
    dm = LSUNDataModule(str(tmp_path), batch_size=4, val_size=6, image_size=32)
    dm.setup("fit")
    assert [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)] == [14, 6, 3]
    assert sorted(dm.train_indices + dm.val_indices) == list(range(20))
    x = next(iter(dm.train_dataloader()))
    check_images(x, (4, 3, 32, 32))
    assert sum(b.shape[0] for b in dm.val_dataloader()) == 6
    assert next(iter(dm.test_dataloader())).shape == (3, 3, 32, 32)
    other = LSUNDataModule(str(tmp_path), batch_size=4, val_size=6, image_size=32, seed=1)
    other.setup()
    assert other.val_indices != dm.val_indices
    assert len(dm.reference_dataset("train")) == 14


def test_lsun_folder_source(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    (tmp_path / "bedroom" / "sub").mkdir(parents=True)
    for i in range(9):
        where = tmp_path / "bedroom" / ("sub" if i % 3 == 0 else "") / f"{i}.png"
        where.write_bytes(jpeg_bytes(rng, 80 + 5 * i, 70, "PNG"))
    (tmp_path / "bedroom" / "notes.txt").write_text("not an image")
    dm = LSUNDataModule(str(tmp_path), source="folder", batch_size=3, val_size=2, value_range="unit")
    dm.setup()
    assert [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)] == [7, 2, 0]
    check_images(next(iter(dm.train_dataloader())), (3, 3, 64, 64), low=0.0)
    assert dm.test_dataloader() == []


def test_lsun_missing_and_damaged_data(tmp_path: Path) -> None:
    for source, words in (("lmdb", "bedroom_train_lmdb"), ("folder", "bedroom")):
        start = time.monotonic()
        with pytest.raises(UserError, match=f"LSUN bedroom data not found.*{words}") as info:
            LSUNDataModule(str(tmp_path), source=source).setup()
        assert time.monotonic() - start < 5 and "\n" not in str(info.value)
    broken = tmp_path / "bedroom_train_lmdb"
    broken.mkdir()
    (broken / "data.mdb").write_bytes(b"\0" * 100)
    pytest.importorskip("lmdb")
    with pytest.raises(UserError, match="corrupt or truncated"):
        LSUNDataModule(str(tmp_path)).setup()
    lmdb = pytest.importorskip("lmdb")
    path = tmp_path / "church_outdoor_train_lmdb"
    write_lsun_lmdb(path, 6)
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.put(b"broken", b"RIFF\x00\x00")
    env.close()
    dm = LSUNDataModule(str(tmp_path), category="church_outdoor", batch_size=2, val_size=0)
    dm.setup()
    position = [bytes(k) for k in dm.train_dataset.dataset.keys].index(b"broken")
    with pytest.raises(UserError, match="image broken of .* is corrupt or truncated"):
        dm.train_dataset.dataset[position]


def test_lsun_without_lmdb_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_lmdb(name, *args, **kwargs):  # noqa: ANN001, ANN202
        if name == "lmdb":
            raise ImportError("No module named 'lmdb'")
        return real_import(name, *args, **kwargs)

    (tmp_path / "bedroom_train_lmdb").mkdir()
    (tmp_path / "bedroom_train_lmdb" / "data.mdb").write_bytes(b"")
    monkeypatch.setattr(builtins, "__import__", no_lmdb)
    with pytest.raises(UserError, match=r"pip install lmdb .*lightning-ebm\[lsun\]"):
        LSUNDataModule(str(tmp_path)).setup()


@pytest.mark.parametrize(
    ("cls", "kwargs", "words"),
    [
        (CIFAR10DataModule, {"value_range": "wide"}, "value_range"),
        (CelebADataModule, {"batch_size": 0}, "batch_size"),
        (LSUNDataModule, {"source": "zip"}, "source"),
    ],
)
def test_bad_arguments(cls, kwargs: dict, words: str) -> None:  # noqa: ANN001
    with pytest.raises(UserError, match=words):
        cls(**kwargs)
