"""CIFAR-10 (Krizhevsky 2009): 32 x 32 colour images of 10 classes, held in memory.

The files are the python version of the data set, as torchvision downloads and extracts it:
``<data_dir>/cifar-10-batches-py/`` with the five training batches ``data_batch_1`` .. ``data_batch_5``
(10,000 images each), ``test_batch`` (10,000) and ``batches.meta`` (the class names). Each batch is a
pickled dict with ``data``, a uint8 array ``(N, 3072)`` (the red, green and blue 32 x 32 planes of each
image, row-major), ``labels``, a list of N ints in 0..9, and ``batch_label``.

Reading: the pickles are read here, in the format torchvision reads them, rather than through
``torchvision.datasets.CIFAR10``. torchvision checks the md5 of every file against the real
data set's, so it rejects any other well-formed file (the small ones the tests write), and it turns
a truncated file into an unpickling traceback. This reader checks the structure instead (keys,
dtype, shape, label range) and reports a damaged file by name. It unpickles with a restricted
unpickler that only rebuilds numpy arrays, so a file in that folder cannot run code.
torchvision is used only to download (``download: true``), which checks the archive's md5.
"""

from __future__ import annotations

import os
import pickle
import typing
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor

from lightning_ebm.datamodules.utils import (
    InMemoryLoaders,
    check_at_least,
    check_holdout,
    check_options,
    check_readable,
    download,
    read_error,
)
from lightning_ebm.errors import UserError

BASE_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ValueRange = Literal["symmetric", "unit"]
VALUE_RANGES = typing.get_args(ValueRange)
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain Python objects and numpy arrays, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} (a CIFAR-10 batch holds only arrays)")


def _corrupt(path: str, problem: str) -> UserError:
    return UserError(
        f"CIFAR-10 file {path} is corrupt or truncated ({problem}); delete it and download the data again "
        f"(download: true, or extract {URL} into {os.path.dirname(os.path.dirname(path)) or '.'})"
    )


def _unpickle(path: str) -> dict:
    """The dict pickled in ``path``, with ``bytes`` keys (Python 2 pickles) turned into ``str``."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except OSError as exc:
        raise read_error("CIFAR-10 file", path, exc) from None
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ... on damaged data
        raise _corrupt(path, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
    if not isinstance(obj, dict):
        raise _corrupt(path, f"holds a {type(obj).__name__}, expected a dict")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_batch(path: str) -> tuple[Tensor, Tensor]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 of one CIFAR-10 batch file.

    Raises:
        UserError: the file is unreadable, or not a well-formed CIFAR-10 batch.
    """
    entry = _unpickle(path)
    if "data" not in entry or "labels" not in entry:
        raise _corrupt(path, f"keys {sorted(map(str, entry))}, expected 'data' and 'labels'")
    data, labels = entry["data"], entry["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _corrupt(path, f"'data' is a {what}, expected uint8 (N, 3072)")
    try:
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (TypeError, ValueError) as exc:
        raise _corrupt(path, f"'labels' are not integers: {exc}") from None
    if labels.dim() != 1 or labels.shape[0] != data.shape[0]:
        raise _corrupt(path, f"{data.shape[0]} images but {labels.numel()} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise _corrupt(path, f"labels outside 0..9 ({int(labels.min())} to {int(labels.max())})")
    images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32)
    return images, labels


def read_label_names(path: str) -> list[str]:
    """The ten class names of ``batches.meta``."""
    names = _unpickle(path).get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise _corrupt(path, "no list of 10 'label_names'")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def cifar10_files_dir(data_dir: str) -> str:
    return os.path.join(os.path.expanduser(str(data_dir)), BASE_FOLDER)


def missing_error(data_dir: str, missing: list[str]) -> UserError:
    folder = cifar10_files_dir(data_dir)
    check_readable("the CIFAR-10 directory", folder)  # denied access is not absence
    return UserError(
        f"CIFAR-10 data not found: {folder} lacks {', '.join(missing)} (expected data_batch_1..5, test_batch "
        f"and batches.meta). Set download: true (needs internet), or download {URL} and extract it into "
        f"{os.path.expanduser(str(data_dir))} (tar xzf creates {BASE_FOLDER}/)"
    )


def load_cifar10(data_dir: str, train: bool = True) -> tuple[Tensor, Tensor]:
    """All images (uint8 ``(N, 3, 32, 32)``) and labels of the training (50,000) or test (10,000) split."""
    folder = cifar10_files_dir(data_dir)
    names = TRAIN_FILES if train else TEST_FILES
    missing = [n for n in (*names, META_FILE) if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise missing_error(data_dir, missing)
    read_label_names(os.path.join(folder, META_FILE))
    parts = [read_batch(os.path.join(folder, n)) for n in names]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


class CIFAR10DataModule(InMemoryLoaders, L.LightningDataModule):
    """CIFAR-10 in memory, as ``(x, y)`` batches: float32 images ``(B, 3, 32, 32)`` and int64 labels.

    The 50,000 training images are split by a seeded permutation into ``val_size`` validation images
    and a training set (45,000 by default); the official 10,000 test images are the test set. After
    :meth:`setup`, ``train_data``, ``val_data``, ``test_data`` hold the images (float32 in the chosen
    range), ``train_labels`` etc. the labels and ``train_indices`` etc. the images' positions in
    their split's files (training files for ``train``/``val``). With ``flip``, each training image is
    mirrored left-right with probability 1/2 every time its batch is drawn (on the batch's device,
    with the global random generator, so ``seed_everything`` makes it reproducible); validation and
    test images are never flipped.

    Args:
        data_dir: directory holding ``cifar-10-batches-py/`` (torchvision's layout).
        download: download and extract the archive with torchvision if files are missing (needs internet;
            offline, the attempt fails within a minute with the manual route).
        batch_size: images per training batch (per process under DDP).
        val_size: training images held out for validation (0 for none).
        seed: seed of the split and of the shuffling (independent of the training seed).
        value_range: ``symmetric`` for [-1, 1] or ``unit`` for [0, 1].
        flip: random horizontal flips of training batches.
        num_workers: unused (the data is in memory and batches are sliced, not collated); accepted so
            that configs can set it uniformly across data modules.
    """

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        batch_size: int = 64,
        val_size: int = 5000,
        seed: int = 0,
        value_range: ValueRange = "symmetric",
        flip: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_options(type(self).__init__, locals())
        check_at_least(1, batch_size=batch_size)
        check_at_least(0, val_size=val_size, num_workers=num_workers)
        self.save_hyperparameters()
        self.data_dir = os.path.expanduser(str(data_dir))
        self.download = download
        self.batch_size = batch_size
        self.val_size = val_size
        self.seed = seed
        self.value_range = value_range
        self.flip = flip
        self.num_workers = num_workers
        self.classes: list[str] | None = None

    data_shape = (3, 32, 32)

    @property
    def files_dir(self) -> str:
        """``<data_dir>/cifar-10-batches-py``."""
        return cifar10_files_dir(self.data_dir)

    def _missing(self) -> list[str]:
        return [
            n for n in (*TRAIN_FILES, *TEST_FILES, META_FILE) if not os.path.isfile(os.path.join(self.files_dir, n))
        ]

    def prepare_data(self) -> None:
        """Download and extract the archive with torchvision when ``download`` is set and files are missing."""
        if not self.download or not self._missing():
            return
        import torchvision

        download(
            lambda: torchvision.datasets.CIFAR10(self.data_dir, train=False, download=True),
            "CIFAR-10",
            self.data_dir,
            f"Without internet, download {URL} elsewhere, extract it into {self.data_dir} and set download: false",
        )

    def _to_float(self, images: Tensor) -> Tensor:
        x = images.to(torch.float32).div_(255.0)
        return x.mul_(2.0).sub_(1.0) if self.value_range == "symmetric" else x

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        if self.trainer is None:
            self.prepare_data()
        missing = self._missing()
        if missing:
            raise missing_error(self.data_dir, missing)
        self.classes = read_label_names(os.path.join(self.files_dir, META_FILE))
        train_x, train_y = load_cifar10(self.data_dir, train=True)
        test_x, test_y = load_cifar10(self.data_dir, train=False)
        n = train_x.shape[0]
        check_holdout(n, self.batch_size, "CIFAR-10 training images", val_size=self.val_size)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        self.val_indices = perm[: self.val_size].sort().values
        self.train_indices = perm[self.val_size :].sort().values
        self.test_indices = torch.arange(test_x.shape[0])
        self.train_data = self._to_float(train_x[self.train_indices])
        self.val_data = self._to_float(train_x[self.val_indices])
        self.test_data = self._to_float(test_x)
        self.train_labels = train_y[self.train_indices]
        self.val_labels = train_y[self.val_indices]
        self.test_labels = test_y

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Mirror each training image left-right with probability 1/2 when ``flip`` is set."""
        trainer = self.trainer
        if self.flip and trainer is not None and trainer.training:
            x, *rest = batch
            mirror = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(-1), x)
            return (x, *rest)
        return batch
