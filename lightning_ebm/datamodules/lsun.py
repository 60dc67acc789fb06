"""LSUN scenes (Yu et al. 2015), e.g. the 3,033,042 bedrooms of DCGAN, decoded lazily.

Two sources:

* ``lmdb``: the LMDB database of the official release, ``<data_dir>/<category>_train_lmdb/`` (``data.mdb``,
  ``lock.mdb``), whose values are encoded images (webp in the released files, JPEG in some copies) under
  arbitrary keys, as ``torchvision.datasets.LSUN`` reads them. Needs the ``lmdb`` package
  (``pip install lmdb``, or ``pip install "lightning-ebm[lsun]"``). The keys are listed once in
  :meth:`LSUNDataModule.setup` and kept in memory (torchvision instead pickles them into a cache
  file in the working directory); the database is opened read-only, lazily in each process.
* ``folder``: image files (jpg, png, webp, ...) anywhere under ``<data_dir>/<category>/``, e.g. an export
  of the database.

Splits: LSUN's ``<category>_val_lmdb`` holds only 300 images, and torchvision's ``LSUN(classes="val")``
means the validation images of every category; neither is a validation set of the training
category's size. So ``val_size`` training images are held out by a seeded permutation for
validation, and the test set is ``<category>_val_lmdb`` when it exists (``lmdb`` source), else empty.

Preprocessing (DCGAN's): the shorter side resized to ``image_size`` (64), then the centre
``image_size`` x ``image_size`` crop; values in [-1, 1] (or [0, 1]).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable
from typing import Literal

from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset

from lightning_ebm.datamodules.images import (
    ImageFiles,
    LazyImageDataModule,
    ValueRange,
    decode_image,
    image_transform,
    list_image_files,
    seeded_holdout,
)
from lightning_ebm.datamodules.utils import check_at_least, check_holdout, check_options, check_readable
from lightning_ebm.errors import UserError

Source = Literal["lmdb", "folder"]
SOURCES = typing.get_args(Source)
HOMEPAGE = "https://github.com/fyu/lsun"


def _import_lmdb():  # noqa: ANN202
    try:
        import lmdb
    except ImportError:
        raise UserError(
            "reading LSUN's LMDB files needs the lmdb package: pip install lmdb "
            '(or pip install "lightning-ebm[lsun]"), or use source: folder with exported images'
        ) from None
    return lmdb


_ENVIRONMENTS: dict[tuple[int, str], object] = {}  # (process id, path) -> open read-only environment


def _open_lmdb(path: str):  # noqa: ANN202
    """The process's read-only environment of ``path`` (LMDB allows one per path and process; forks need their own)."""
    key = (os.getpid(), os.path.realpath(path))
    if key in _ENVIRONMENTS:
        return _ENVIRONMENTS[key]
    lmdb = _import_lmdb()
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False, max_readers=8)
    except lmdb.Error as exc:
        raise UserError(
            f"LSUN database {path} is corrupt or truncated, or not an LMDB database ({exc}); download it again"
        ) from None
    _ENVIRONMENTS[key] = env
    return env


def list_lmdb_keys(path: str) -> list[bytes]:
    """All keys of the LMDB database at ``path``, in the database's order."""
    lmdb = _import_lmdb()
    env = _open_lmdb(path)
    try:
        with env.begin(write=False) as txn:
            return list(txn.cursor().iternext(keys=True, values=False))
    except lmdb.Error as exc:
        raise UserError(f"LSUN database {path} is corrupt or truncated ({exc}); download it again") from None


class LMDBImages(Dataset):
    """Images stored encoded under ``keys`` in the LMDB database at ``path``; an item is the image tensor."""

    def __init__(self, path: str, keys: list[bytes], transform: Callable[[Image.Image], Tensor]) -> None:
        self.path = path
        self.keys = keys
        self.transform = transform

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Tensor:
        key = self.keys[index]
        with _open_lmdb(self.path).begin(write=False) as txn:
            value = txn.get(key)
        name = f"{key.decode(errors='replace')} of {self.path}"
        if value is None:
            raise UserError(f"LSUN database {self.path} has no image {name}: it changed since setup; restart")
        return self.transform(decode_image(bytes(value), name))


class LSUNDataModule(LazyImageDataModule):
    """LSUN images of one category as batches of float32 images ``(B, 3, image_size, image_size)`` (no labels).

    After :meth:`setup`, ``train_dataset``, ``val_dataset``, ``test_dataset`` are the lazily decoded
    data sets and ``train_indices``/``val_indices`` the held-out split's positions in the database's
    key order (or the sorted file list).

    Args:
        data_dir: directory holding ``<category>_train_lmdb/`` (``lmdb``) or ``<category>/`` (``folder``).
        category: LSUN scene category (``bedroom``, ``church_outdoor``, ...).
        image_size: side of the square images.
        source: ``lmdb`` or ``folder``.
        batch_size: images per training batch (per process under DDP).
        val_size: training images held out for validation (0 for none).
        seed: seed of the held-out split and of the shuffling.
        flip: random horizontal flips of training images (DCGAN used none).
        value_range: ``symmetric`` for [-1, 1] or ``unit`` for [0, 1].
        num_workers: ``DataLoader`` worker processes decoding images.
    """

    def __init__(
        self,
        data_dir: str = "data",
        category: str = "bedroom",
        image_size: int = 64,
        source: Source = "lmdb",
        batch_size: int = 64,
        val_size: int = 3000,
        seed: int = 0,
        flip: bool = False,
        value_range: ValueRange = "symmetric",
        num_workers: int = 0,
    ) -> None:
        check_options(type(self).__init__, locals())
        super().__init__(batch_size, num_workers, seed, value_range, image_size)
        check_at_least(0, val_size=val_size)
        self.save_hyperparameters()
        self.data_dir = os.path.expanduser(str(data_dir))
        self.category = category
        self.source = source
        self.val_size = val_size
        self.flip = flip
        self._items: Dataset | None = None  # every training image, unaugmented
        self._train_items: Dataset | None = None  # the same with flips
        self.train_indices: list[int] | None = None
        self.val_indices: list[int] | None = None

    @property
    def location(self) -> str:
        """The training database (``lmdb``) or image folder (``folder``)."""
        name = f"{self.category}_train_lmdb" if self.source == "lmdb" else self.category
        return os.path.join(self.data_dir, name)

    def _missing_error(self, what: str) -> UserError:
        if self.source == "lmdb":
            how = (
                f"expected an LMDB database (data.mdb) there. Download {self.category}_train_lmdb.zip with the "
                f"download script of {HOMEPAGE} (python download.py -c {self.category}) and unzip it into "
                f"{self.data_dir}/, or use source: folder"
            )
        else:
            how = (
                f"expected image files (jpg, png, webp) under it; export them from the LMDB database (the "
                f"export command of {HOMEPAGE}'s data.py) into that folder, or use source: lmdb"
            )
        return UserError(f"LSUN {self.category} data not found: {what}; {how}")

    def _transform(self, train: bool):  # noqa: ANN202
        return image_transform(
            self.image_size, resize_first=True, flip=self.flip and train, value_range=self.value_range
        )

    def _load_items(self, train: bool) -> Dataset:
        check_readable(f"the LSUN {self.category} data", self.location)  # denied access is not absence
        if self.source == "lmdb":
            database = os.path.join(self.location, "data.mdb")
            check_readable(f"the LSUN {self.category} database", database)
            if not os.path.isfile(database):
                raise self._missing_error(f"no {database}")
            keys = list_lmdb_keys(self.location)
            return LMDBImages(self.location, keys, self._transform(train))
        if not os.path.isdir(self.location):
            raise self._missing_error(f"no folder {self.location}")
        files = list_image_files(self.location)
        if not files:
            raise self._missing_error(f"no image files under {self.location}")
        return ImageFiles(files, self._transform(train))

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        items = self._load_items(train=False)
        n = len(items)
        check_holdout(n, self.batch_size, f"LSUN {self.category} images", val_size=self.val_size)
        train_idx, val_idx = seeded_holdout(n, self.val_size, self.seed)
        self.train_indices, self.val_indices = train_idx.tolist(), val_idx.tolist()
        if isinstance(items, LMDBImages):
            train_items = LMDBImages(items.path, items.keys, self._transform(train=True))
        else:
            train_items = ImageFiles(items.paths, self._transform(train=True))
        self._items = items
        self.train_dataset = Subset(train_items, self.train_indices)
        self.val_dataset = Subset(items, self.val_indices)
        self.test_dataset = self._test_items()

    def _test_items(self) -> Dataset:
        path = os.path.join(self.data_dir, f"{self.category}_val_lmdb")
        if self.source == "lmdb":
            check_readable(f"the LSUN {self.category} test data", path, os.path.join(path, "data.mdb"))
        if self.source != "lmdb" or not os.path.isfile(os.path.join(path, "data.mdb")):
            return ImageFiles([], self._transform(train=False))
        return LMDBImages(path, list_lmdb_keys(path), self._transform(train=False))

    def reference_dataset(self, split: str) -> Dataset:
        assert self._items is not None and self.test_dataset is not None, "call setup() first"
        if split == "test":
            return self.test_dataset
        return Subset(self._items, self.train_indices if split == "train" else self.val_indices)
