"""MNIST (LeCun et al. 1998): 28 x 28 grey-scale digits, held in memory, optionally binarised.

Two sources of images:

* ``full``: torchvision's ``MNIST`` data set; the 60,000 training images are split into a training
  and a validation set (``val_size`` images held out by a seeded permutation), and the official
  10,000 test images are the test set.
* ``test-split``: only the two files of the official test split (``t10k-images-idx3-ubyte`` and
  ``t10k-labels-idx1-ubyte``, plain or ``.gz``) are read, and a seeded permutation carves them into
  validation (``val_size``), test (``test_size``) and training (the rest) parts. This is for machines
  that only have those two files; its numbers are not comparable with published MNIST results.

Binarisation follows the usual practice of the EBM / VAE literature: each pixel intensity ``p`` in
[0, 1] is replaced by a draw of Bernoulli(``p``), either once (``static``) or afresh every time a
training batch is drawn (``dynamic``).
"""

from __future__ import annotations

import math
import os
import typing
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from lightning_ebm.datamodules.utils import (
    InMemoryLoaders,
    check_at_least,
    check_holdout,
    check_options,
    check_readable,
    download,
    find_file,
    read_bytes,
    read_error,
)
from lightning_ebm.errors import UserError

Binarize = Literal["none", "static", "dynamic"]
ValueRange = Literal["unit", "symmetric"]
Source = Literal["full", "test-split"]
BINARIZE_CHOICES = typing.get_args(Binarize)
VALUE_RANGES = typing.get_args(ValueRange)
SOURCES = typing.get_args(Source)
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: where the files can be fetched by hand (torchvision's mirrors, in its order)
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_MAGIC = {3: 2051, 1: 2049}  # IDX magic numbers of uint8 images (3 dimensions) and labels (1 dimension)


def _corrupt(path: str, problem: str) -> UserError:
    return UserError(
        f"MNIST file {path} is corrupt or truncated ({problem}); delete it and download it again "
        f"(download: true, or copy it from {MIRRORS[0]} or {MIRRORS[1]})"
    )


def parse_idx(data: bytes, ndim: int, path: str = "<bytes>") -> Tensor:
    """Parse an uncompressed IDX file of MNIST (uint8 images or labels) into a uint8 tensor.

    Args:
        data: the whole file, uncompressed.
        ndim: 3 for an image file (``(N, 28, 28)``), 1 for a label file (``(N,)``).
        path: file name for the error messages.

    Raises:
        UserError: bad magic number, wrong image size, or a size that disagrees with the header.
    """
    header = 4 * (ndim + 1)
    if len(data) < header:
        raise _corrupt(path, f"only {len(data)} bytes, fewer than the {header}-byte header")
    magic = int.from_bytes(data[:4], "big")
    if magic != _MAGIC[ndim]:
        raise _corrupt(path, f"magic number {magic}, expected {_MAGIC[ndim]}")
    dims = [int.from_bytes(data[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [28, 28]:
        raise _corrupt(path, f"images of {dims[1]} x {dims[2]} pixels, expected 28 x 28")
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise _corrupt(path, f"{len(data)} bytes where the header announces {expected}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(*dims)


def _read_file(path: str) -> bytes:
    """The uncompressed bytes of ``path`` (decompressed in memory if it ends in ``.gz``)."""
    return read_bytes(path, "MNIST file", _corrupt)


def _check_header(path: str, ndim: int) -> None:
    """Check an uncompressed IDX file's magic number and size without reading it whole."""
    try:
        with open(path, "rb") as f:
            head = f.read(4 * (ndim + 1))
        size = os.path.getsize(path)
    except OSError as exc:
        raise read_error("MNIST file", path, exc) from None
    if len(head) < 4 * (ndim + 1) or int.from_bytes(head[:4], "big") != _MAGIC[ndim]:
        parse_idx(head, ndim, path)  # raises with the precise problem
    dims = [int.from_bytes(head[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim)]
    if size != len(head) + math.prod(dims):
        raise _corrupt(path, f"{size} bytes where the header announces {len(head) + math.prod(dims)}")


class MNISTDataModule(InMemoryLoaders, L.LightningDataModule):
    """MNIST digits, in memory, as ``(x, y)`` batches: float32 images and int64 labels.

    After :meth:`setup`, ``train_data``, ``val_data`` and ``test_data`` hold the preprocessed images
    (``(N, 1, 28, 28)``, or ``(N, 784)`` with ``flatten``), ``train_labels`` etc. the labels, and
    ``train_indices`` etc. the positions of the images in the file they come from (the training file
    for ``train``/``val`` of the ``full`` source, the test file otherwise).

    With ``binarize="dynamic"``, ``train_data`` holds the intensities in [0, 1] and every training
    batch is binarised afresh on its device (in :meth:`on_after_batch_transfer`, with the global
    random generator, so ``seed_everything`` makes it reproducible); validation and test images are
    binarised once, exactly as with ``static``.

    Args:
        data_dir: directory of the data, in torchvision's layout: the IDX files are looked for in
            ``<data_dir>/MNIST/raw/`` (and, for ``test-split``, also in ``data_dir`` itself).
        download: download the files with torchvision if they are missing (needs internet; offline,
            the attempt fails within a minute with the manual route).
        batch_size: examples per training batch (per process under DDP).
        binarize: ``none`` (grey levels), ``static`` (each split binarised once, from ``seed``) or
            ``dynamic`` (training batches binarised afresh each time they are drawn).
        value_range: ``unit`` for [0, 1] or ``symmetric`` for [-1, 1]; binarised data is always {0, 1}.
        val_size: images held out for validation (0 for none).
        seed: seed of the splits, the static binarisation and the shuffling (independent of the
            training seed).
        source: ``full`` (torchvision's training and test splits) or ``test-split`` (the official test
            split alone, carved into train / val / test).
        test_size: images of the test part with ``source="test-split"`` (ignored otherwise).
        flatten: batches of shape ``(B, 784)`` instead of ``(B, 1, 28, 28)``.
    """

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        batch_size: int = 100,
        binarize: Binarize = "none",
        value_range: ValueRange = "unit",
        val_size: int = 5000,
        seed: int = 0,
        source: Source = "full",
        test_size: int = 2000,
        flatten: bool = False,
    ) -> None:
        super().__init__()
        check_options(type(self).__init__, locals())
        check_at_least(1, batch_size=batch_size)
        check_at_least(0, val_size=val_size)
        if source == "test-split" and test_size < 1:
            raise UserError(f"test_size must be at least 1 with source 'test-split', got {test_size}")
        self.save_hyperparameters()
        self.data_dir = os.path.expanduser(str(data_dir))
        self.download = download
        self.batch_size = batch_size
        self.binarize = binarize
        self.value_range = value_range
        self.val_size = val_size
        self.seed = seed
        self.source = source
        self.test_size = test_size
        self.flatten = flatten

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (784,) if self.flatten else (1, 28, 28)

    @property
    def raw_dir(self) -> str:
        """``<data_dir>/MNIST/raw``, where torchvision keeps (and downloads) the IDX files."""
        return os.path.join(self.data_dir, "MNIST", "raw")

    # ----------------------------------------------------------------------------- finding files
    def _search_dirs(self) -> list[str]:
        return [self.raw_dir, self.data_dir] if self.source == "test-split" else [self.raw_dir]

    def _needed(self) -> tuple[str, ...]:
        return TEST_FILES if self.source == "test-split" else TRAIN_FILES + TEST_FILES

    def _find(self, name: str) -> str | None:
        """Path of ``name`` (preferred) or ``name.gz`` in the searched directories, or None."""
        return find_file(self._search_dirs(), (name, name + ".gz"))

    def _missing_error(self, missing: list[str]) -> UserError:
        check_readable("the MNIST directory", *self._search_dirs())  # denied access is not absence
        where = " or ".join(self._search_dirs())
        return UserError(
            f"MNIST data not found: looked in {where} for {', '.join(missing)} (plain or .gz). "
            f"Set download: true (needs internet), or copy the files from {MIRRORS[0]} "
            f"or {MIRRORS[1]} into {self.raw_dir}/"
        )

    def _legacy_files(self) -> bool:
        processed = os.path.join(self.data_dir, "MNIST", "processed")
        return all(os.path.isfile(os.path.join(processed, f)) for f in ("training.pt", "test.pt"))

    # ------------------------------------------------------------------------------- downloading
    def prepare_data(self) -> None:
        """Download the files with torchvision when ``download`` is set and some are missing."""
        if not self.download or all(self._find(name) for name in self._needed()):
            return
        if self.source == "full" and self._legacy_files():
            return
        import torchvision

        download(
            lambda: torchvision.datasets.MNIST(self.data_dir, train=False, download=True),
            "MNIST",
            self.raw_dir,
            f"Without internet, copy {', '.join(f + '.gz' for f in self._needed())} from {MIRRORS[0]} or "
            f"{MIRRORS[1]} into {self.raw_dir}/ by hand and set download: false",
        )

    # ----------------------------------------------------------------------------------- loading
    def _load_test_split(self) -> tuple[Tensor, Tensor]:
        """Images and labels of the official test files, parsed in memory (no files written)."""
        paths = [self._find(name) for name in TEST_FILES]
        missing = [name for name, path in zip(TEST_FILES, paths) if path is None]
        if missing:
            raise self._missing_error(missing)
        images = parse_idx(_read_file(paths[0]), 3, paths[0])
        labels = parse_idx(_read_file(paths[1]), 1, paths[1])
        self._check_pair(images, labels, paths[0], paths[1])
        return images, labels.long()

    @staticmethod
    def _check_pair(images: Tensor, labels: Tensor, image_path: str, label_path: str) -> None:
        if images.shape[0] != labels.shape[0]:
            raise UserError(
                f"MNIST files disagree: {image_path} holds {images.shape[0]} images but {label_path} "
                f"{labels.shape[0]} labels; one of them is corrupt or truncated, delete and re-download it"
            )
        if labels.numel() and int(labels.max()) > 9:
            raise _corrupt(label_path, f"label {int(labels.max())} outside 0..9")

    def _prepare_raw_for_torchvision(self) -> None:
        """Check the four files and decompress ``.gz`` ones: torchvision only reads plain files."""
        missing = [name for name in self._needed() if self._find(name) is None]
        if missing:
            raise self._missing_error(missing)
        for name in self._needed():
            ndim = 3 if "images" in name else 1
            plain = os.path.join(self.raw_dir, name)
            if os.path.isfile(plain):
                _check_header(plain, ndim)
                continue
            gz = plain + ".gz"
            data = _read_file(gz)
            parse_idx(data, ndim, gz)  # validate before writing anything
            tmp = f"{plain}.tmp{os.getpid()}"
            try:  # write-then-rename, so that an interrupted run never leaves a truncated file
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, plain)
            except OSError as exc:
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise UserError(
                    f"cannot decompress {gz} for torchvision ({exc.strerror or exc}); make {self.raw_dir} "
                    f"writable or gunzip the .gz files there yourself"
                ) from None

    def _load_full(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        import torchvision

        if not self._legacy_files():
            self._prepare_raw_for_torchvision()
        try:
            train = torchvision.datasets.MNIST(self.data_dir, train=True, download=False)
            test = torchvision.datasets.MNIST(self.data_dir, train=False, download=False)
        except Exception as exc:  # unreachable after the checks above, but for the legacy .pt files
            raise UserError(
                f"torchvision cannot read the MNIST files in {os.path.join(self.data_dir, 'MNIST')} "
                f"({' '.join(str(exc).split())[:300]}); they are corrupt or truncated: delete them and "
                f"download them again"
            ) from None
        return train.data, train.targets.long(), test.data, test.targets.long()

    def load_images(self) -> tuple[Tensor, Tensor]:
        """Every image of the source, unsplit: uint8 ``(N, 28, 28)`` and int64 labels ``(N,)``.

        For ``full`` the 60,000 training images followed by the 10,000 test images, for ``test-split``
        the 10,000 test images; with the same checks and error messages as :meth:`setup`. For data
        modules that define their own splits of MNIST (``MNISTAnomalyDataModule``).
        """
        if self.trainer is None:
            self.prepare_data()
        if self.source == "test-split":
            return self._load_test_split()
        train_x, train_y, test_x, test_y = self._load_full()
        return torch.cat([train_x, test_x]), torch.cat([train_y, test_y])

    # ----------------------------------------------------------------------------- preprocessing
    def _generator(self, stream: int) -> torch.Generator:
        """Independent generators from ``seed``: 0 splits, 1 to 3 binarisation of train/val/test."""
        return torch.Generator().manual_seed(4 * self.seed + stream)

    def _preprocess(self, images: Tensor, stream: int) -> Tensor:
        x = images.to(torch.float32).div_(255.0).unsqueeze(1)
        if self.binarize == "static" or (self.binarize == "dynamic" and stream != 1):
            x = torch.bernoulli(x, generator=self._generator(stream))
        elif self.binarize == "none" and self.value_range == "symmetric":
            x = x.mul_(2.0).sub_(1.0)
        return x.flatten(1) if self.flatten else x

    def _check_sizes(self, n: int, what: str) -> None:
        held_out = {"val_size": self.val_size}
        if self.source == "test-split":
            held_out["test_size"] = self.test_size
        check_holdout(n, self.batch_size, f"images of {what}", **held_out)

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        if self.trainer is None:  # used outside a Trainer, which would call prepare_data itself
            self.prepare_data()
        split = self._generator(0)
        if self.source == "full":
            train_x, train_y, test_x, test_y = self._load_full()
            n = train_x.shape[0]
            self._check_sizes(n, "the training split")
            perm = torch.randperm(n, generator=split)
            val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
            test_idx = torch.arange(test_x.shape[0])
            source_x, source_y = train_x, train_y
        else:
            test_x, test_y = self._load_test_split()
            n = test_x.shape[0]
            self._check_sizes(n, "the official test split")
            perm = torch.randperm(n, generator=split)
            cut = self.val_size + self.test_size
            val_idx, test_idx, train_idx = perm[: self.val_size], perm[self.val_size : cut], perm[cut:]
            source_x, source_y = test_x, test_y
        self.train_indices, self.val_indices, self.test_indices = (
            idx.sort().values for idx in (train_idx, val_idx, test_idx)
        )
        self.train_data = self._preprocess(source_x[self.train_indices], 1)
        self.val_data = self._preprocess(source_x[self.val_indices], 2)
        self.test_data = self._preprocess(test_x[self.test_indices], 3)
        self.train_labels = source_y[self.train_indices]
        self.val_labels = source_y[self.val_indices]
        self.test_labels = test_y[self.test_indices]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Re-binarise training batches on their device when ``binarize="dynamic"``."""
        trainer = self.trainer
        if self.binarize == "dynamic" and trainer is not None and trainer.training:
            x, *rest = batch
            return (torch.bernoulli(x), *rest)
        return batch
