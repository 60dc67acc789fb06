"""CelebA (Liu et al. 2015): 202,599 aligned and cropped celebrity faces, decoded lazily.

Files, in torchvision's layout: ``<data_dir>/celeba/img_align_celeba/*.jpg`` (178 x 218 JPEGs) and
``<data_dir>/celeba/list_eval_partition.txt`` (one line ``<file name> <0|1|2>`` per image: training,
validation, test; 162,770 / 19,867 / 19,962 images).

Reading: only those two are needed. ``torchvision.datasets.CelebA`` (0.29) also requires
``identity_CelebA.txt``, ``list_attr_celeba.txt``, ``list_bbox_celeba.txt`` and
``list_landmarks_align_celeba.txt`` and checks the md5 of all six files, whatever its ``target_type``,
so it cannot read a partial copy or the small folders the tests build; the partition file is parsed
here and the JPEGs are decoded with PIL. torchvision is used only to download (``download: true``).

Preprocessing: the centre 108 x 108 of each 178 x 218 image, resized to ``image_size`` (64), the crop of
the DCGAN-era CelebA code (carpedm20's DCGAN-tensorflow, which the energy-based-model papers of that
time, Kim & Bengio 2016 among them, used); some later work crops 148 instead (``crop: 148``). Values in
[-1, 1] (or [0, 1]); random horizontal flips of training images with ``flip``.
"""

from __future__ import annotations

import os

from torch.utils.data import Dataset

from lightning_ebm.datamodules.images import ImageFiles, LazyImageDataModule, ValueRange, image_transform
from lightning_ebm.datamodules.utils import check_at_least, check_options, check_readable, download, read_error
from lightning_ebm.errors import UserError

BASE_FOLDER = "celeba"
IMAGE_FOLDER = "img_align_celeba"
PARTITION_FILE = "list_eval_partition.txt"
HOMEPAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
SPLITS = {"train": 0, "val": 1, "test": 2}


def read_partition(path: str) -> dict[str, list[str]]:
    """File names of each split (``train``, ``val``, ``test``) from ``list_eval_partition.txt``, in file order.

    Raises:
        UserError: the file is unreadable or a line is not ``<name> <0|1|2>``.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise read_error("CelebA partition file", path, exc) from None
    except UnicodeDecodeError as exc:
        raise UserError(f"cannot read CelebA partition file {path} ({exc}); download it again") from None
    by_code: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise UserError(
                f"CelebA partition file {path} is corrupt or truncated (line {number}: {line[:80]!r}, expected "
                f"'<image name> <0|1|2>'); download it again from {HOMEPAGE}"
            )
        by_code[int(fields[1])].append(fields[0])
    return {split: by_code[code] for split, code in SPLITS.items()}


class CelebADataModule(LazyImageDataModule):
    """CelebA faces as batches of float32 images ``(B, 3, image_size, image_size)`` (no labels).

    The splits are the official ones of ``list_eval_partition.txt``. After :meth:`setup`,
    ``train_dataset``, ``val_dataset``, ``test_dataset`` are the lazily decoded data sets and
    ``train_files`` etc. their image paths.

    Args:
        data_dir: directory holding ``celeba/`` (torchvision's layout).
        download: download the files with torchvision if they are missing (needs internet; Google
            Drive often refuses with a quota error, and offline the attempt fails within a minute: the
            message gives the manual route).
        image_size: side of the square images.
        batch_size: images per training batch (per process under DDP).
        flip: random horizontal flips of training images.
        crop: side of the centre crop taken before resizing (108, the DCGAN-era choice; 148 in some later work).
        value_range: ``symmetric`` for [-1, 1] or ``unit`` for [0, 1].
        num_workers: ``DataLoader`` worker processes decoding JPEGs.
        seed: seed of the shuffling.
    """

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        image_size: int = 64,
        batch_size: int = 64,
        flip: bool = True,
        crop: int = 108,
        value_range: ValueRange = "symmetric",
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        check_options(type(self).__init__, locals())
        super().__init__(batch_size, num_workers, seed, value_range, image_size)
        check_at_least(1, crop=crop)
        self.save_hyperparameters()
        self.data_dir = os.path.expanduser(str(data_dir))
        self.download = download
        self.flip = flip
        self.crop = crop
        self.train_files: list[str] | None = None
        self.val_files: list[str] | None = None
        self.test_files: list[str] | None = None

    @property
    def folder(self) -> str:
        """``<data_dir>/celeba``."""
        return os.path.join(self.data_dir, BASE_FOLDER)

    def _missing(self) -> list[str]:
        missing = []
        if not os.path.isdir(os.path.join(self.folder, IMAGE_FOLDER)):
            missing.append(f"{IMAGE_FOLDER}/ (the JPEGs)")
        if not os.path.isfile(os.path.join(self.folder, PARTITION_FILE)):
            missing.append(PARTITION_FILE)
        return missing

    def _missing_error(self, missing: list[str]) -> UserError:
        check_readable("the CelebA directory", self.folder, os.path.join(self.folder, IMAGE_FOLDER))
        return UserError(
            f"CelebA data not found: {self.folder} lacks {' and '.join(missing)} (expected {IMAGE_FOLDER}/*.jpg and "
            f"{PARTITION_FILE}). Set download: true (needs internet), or download 'Align&Cropped Images' "
            f"(img_align_celeba.zip) and Eval/{PARTITION_FILE} from {HOMEPAGE} and unzip them into {self.folder}/"
        )

    def prepare_data(self) -> None:
        """Download the files with torchvision when ``download`` is set and files are missing."""
        if not self.download or not self._missing():
            return
        import torchvision

        download(
            lambda: torchvision.datasets.CelebA(self.data_dir, split="all", target_type=[], download=True),
            "CelebA",
            self.folder,
            f"Download img_align_celeba.zip and {PARTITION_FILE} from {HOMEPAGE} by hand, unzip them into "
            f"{self.folder}/ and set download: false",
        )

    def _transform(self, train: bool):  # noqa: ANN202
        return image_transform(self.image_size, crop=self.crop, flip=self.flip and train, value_range=self.value_range)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        if self.trainer is None:
            self.prepare_data()
        missing = self._missing()
        if missing:
            raise self._missing_error(missing)
        splits = read_partition(os.path.join(self.folder, PARTITION_FILE))
        image_dir = os.path.join(self.folder, IMAGE_FOLDER)
        try:
            present = set(os.listdir(image_dir))
        except OSError as exc:
            raise read_error("CelebA image folder", image_dir, exc) from None
        absent = [name for names in splits.values() for name in names if name not in present]
        if absent:
            raise UserError(
                f"{len(absent)} of the images listed in {os.path.join(self.folder, PARTITION_FILE)} are not in "
                f"{image_dir} (first: {', '.join(absent[:3])}); the image folder is incomplete: unzip "
                f"img_align_celeba.zip there again"
            )
        if len(splits["train"]) < self.batch_size:
            raise UserError(
                f"CelebA's training split has {len(splits['train'])} images, fewer than batch_size ({self.batch_size})"
            )
        self.train_files, self.val_files, self.test_files = (
            [os.path.join(image_dir, n) for n in splits[s]] for s in ("train", "val", "test")
        )
        self.train_dataset = ImageFiles(self.train_files, self._transform(train=True))
        self.val_dataset = ImageFiles(self.val_files, self._transform(train=False))
        self.test_dataset = ImageFiles(self.test_files, self._transform(train=False))

    def reference_dataset(self, split: str) -> Dataset:
        files = {"train": self.train_files, "val": self.val_files, "test": self.test_files}[split]
        assert files is not None, "call setup() first"
        return ImageFiles(files, self._transform(train=False))
