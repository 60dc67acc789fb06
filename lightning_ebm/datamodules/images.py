"""Lazily decoded image data sets (files or encoded bytes) and the data module they share.

Large image collections (CelebA's 202,599 faces, LSUN's 3 million bedrooms) do not fit in memory as
float tensors, so their images are decoded one by one in ``__getitem__`` and batched by a
``DataLoader`` (Lightning adds a ``DistributedSampler`` under DDP).
"""

from __future__ import annotations

import io
import os
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning as L
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_ebm.datamodules.utils import check_at_least, read_error
from lightning_ebm.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
ValueRange = Literal["symmetric", "unit"]
VALUE_RANGES = typing.get_args(ValueRange)


def decode_image(source: str | bytes, name: str) -> Image.Image:
    """An RGB PIL image from a file path or encoded bytes; ``UserError`` naming ``name`` if it is damaged
    or cannot be read (permission denied said as such)."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        return image.convert("RGB")  # decodes the whole image, so truncated data fails here
    except OSError as exc:
        if exc.errno is not None and not isinstance(exc, UnidentifiedImageError):  # the file system's, not PIL's
            raise read_error("image", name, exc) from None
        raise UserError(f"image {name} is corrupt or truncated ({exc}); delete or replace it") from None
    except (SyntaxError, ValueError) as exc:
        raise UserError(f"image {name} is corrupt or truncated ({exc}); delete or replace it") from None


def image_transform(
    image_size: int,
    crop: int | None = None,
    resize_first: bool = False,
    flip: bool = False,
    value_range: ValueRange = "symmetric",
) -> Callable[[Image.Image], Tensor]:
    """PIL image -> float32 ``(3, image_size, image_size)`` tensor in [-1, 1] (``symmetric``) or [0, 1].

    Args:
        image_size: side of the output.
        crop: side of a centre crop taken before resizing (CelebA's face crop), or None.
        resize_first: resize the shorter side to ``image_size`` and then centre-crop ``image_size``
            (LSUN's recipe) instead of crop-then-resize.
        flip: random horizontal flip (training only).
        value_range: ``symmetric`` or ``unit``.
    """
    from torchvision import transforms as T

    steps: list[Any] = []
    if resize_first:
        steps += [T.Resize(image_size), T.CenterCrop(image_size)]
    else:
        if crop is not None:
            steps.append(T.CenterCrop(crop))
        steps.append(T.Resize((image_size, image_size)))
    if flip:
        steps.append(T.RandomHorizontalFlip())
    steps.append(T.ToTensor())
    if value_range == "symmetric":
        steps.append(T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    return T.Compose(steps)


class ImageFiles(Dataset):
    """Images read from ``paths`` and transformed on access; an item is the image tensor."""

    def __init__(self, paths: Sequence[str], transform: Callable[[Image.Image], Tensor]) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        path = self.paths[index]
        return self.transform(decode_image(path, path))


def list_image_files(folder: str) -> list[str]:
    """Sorted paths of the image files under ``folder`` (recursively); a folder that cannot be listed is an
    error, not a folder without images."""

    def unreadable(exc: OSError) -> None:
        raise read_error("image folder", exc.filename or folder, exc)

    found = []
    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def seeded_holdout(n: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Sorted ``(train, val)`` positions: ``val_size`` of ``range(n)`` held out by a seeded permutation."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


class LazyImageDataModule(L.LightningDataModule):
    """Base of the data modules whose images are decoded on access (batches: image tensors ``(B, 3, S, S)``).

    Subclasses set ``train_dataset``, ``val_dataset`` and ``test_dataset`` in :meth:`setup` (the
    training one with the flips, if any) and implement :meth:`reference_dataset`.
    """

    def __init__(self, batch_size: int, num_workers: int, seed: int, value_range: ValueRange, image_size: int) -> None:
        super().__init__()
        check_at_least(1, batch_size=batch_size, image_size=image_size)
        check_at_least(0, num_workers=num_workers)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.value_range = value_range
        self.image_size = image_size
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def reference_dataset(self, split: str) -> Dataset:
        """The images of ``split`` (``train``, ``val`` or ``test``) without augmentation (for FID statistics)."""
        raise NotImplementedError

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader | list:
        assert dataset is not None, "call setup() first"
        if len(dataset) == 0:
            return []
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else min(4 * self.batch_size, len(dataset)),
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
        )

    def train_dataloader(self) -> DataLoader | list:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader | list:
        return self._loader(self.test_dataset, train=False)

    predict_dataloader = test_dataloader
