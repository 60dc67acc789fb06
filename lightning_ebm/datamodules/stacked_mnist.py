"""StackedMNIST (Metz et al. 2017; Srivastava et al. 2017; Kumar et al. 2019): ``n`` independent MNIST
digits stacked as the ``n`` channels of one image, so that the data has ``10**n`` modes (the digit tuples).

The training set is a fixed set of ``128 * 10**n`` stacks (128,000 for three stacks, 1,280,000 for four)
drawn once from ``seed``: each channel's digit image is drawn uniformly, with replacement and
independently of the other channels, from the training digits. Such a set cannot be held as images
(1.28 M x 4 x 28 x 28 floats are 16 GB), so only the ``(N, n)`` indices of the digit images are stored;
each batch is composed from them on its device by one gather (:meth:`StackedMNISTDataModule.compose`).

The digit images come from :class:`~lightning_ebm.datamodules.MNISTDataModule` (its file reading,
splits and error messages), in the same three disjoint parts:

* ``source="full"``: training stacks from the 55,000 training digits, validation stacks from the
  5,000 held-out digits (``val_size``), test stacks from the official 10,000 test digits;
* ``source="test-split"``: the official test split alone, carved by MNISTDataModule into 7,000 /
  1,000 / 2,000 digits (with the default ``val_size`` 1,000 and ``test_size`` 2,000 of this module).

Validation and test stacks (``num_val`` and ``num_test`` of them) are drawn the same way from their
own digits with their own random streams, so that the three sets are fixed by ``seed`` and share no
digit image. Batches are ``(x, y)``: ``x`` of shape ``(B, n, 28, 28)`` in [-1, 1] (``value_range``
``symmetric``, the range of the paper's tanh generator) or [0, 1], ``y`` of shape ``(B, n)``, the
digit of each channel; :func:`mode_ids` (also :meth:`StackedMNISTDataModule.mode_id`) turns ``y`` into
the mode number and :func:`mode_digits` back.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_ebm.datamodules.mnist import MNISTDataModule, Source, ValueRange
from lightning_ebm.datamodules.utils import InMemoryLoaders, check_at_least, check_options
from lightning_ebm.errors import UserError

SPLITS = ("train", "val", "test")


def mode_ids(digits: Tensor) -> Tensor:
    """The mode of each stacked image: its digit tuple ``(d_0, ..., d_{n-1})`` read as the decimal
    number ``d_0 d_1 ... d_{n-1}`` (``(B, n)`` digits in 0..9 -> ``(B,)`` ids in ``0 .. 10**n - 1``)."""
    n = digits.shape[-1]
    powers = 10 ** torch.arange(n - 1, -1, -1, device=digits.device, dtype=torch.int64)
    return (digits.long() * powers).sum(-1)


def mode_digits(ids: Tensor, num_stacks: int) -> Tensor:
    """The inverse of :func:`mode_ids`: ``(B,)`` ids -> ``(B, num_stacks)`` digits."""
    powers = 10 ** torch.arange(num_stacks - 1, -1, -1, device=ids.device, dtype=torch.int64)
    return torch.div(ids.long().unsqueeze(-1), powers, rounding_mode="floor") % 10


class StackedMNISTDataModule(InMemoryLoaders, L.LightningDataModule):
    """Stacks of ``num_stacks`` independent MNIST digits (see the module docstring), batches ``(x, y)``.

    After :meth:`setup`: ``digits`` holds every digit image, ``(M, 28, 28)`` in the value range (the
    training digits, then the validation and the test digits, at ``digit_ranges[split]``), and
    ``digit_labels`` their digits; ``train_stacks``, ``val_stacks``, ``test_stacks`` hold the ``(N, n)``
    indices into ``digits`` of each stack's channels (a split's stacks only use its own digits);
    :meth:`stack_labels` gives the ``(N, n)`` digits of a split's stacks.

    Args:
        data_dir: MNIST's directory, as for :class:`MNISTDataModule` (``<data_dir>/MNIST/raw/``).
        num_stacks: digits per image, ``n`` (3 and 4 in the papers).
        source: ``full`` or ``test-split`` (see :class:`MNISTDataModule`).
        num_train: training stacks (default ``128 * 10**n``).
        num_val: validation stacks.
        num_test: test stacks.
        seed: seed of the digit splits and of the three stack sets (and of the shuffling).
        batch_size: stacks per training batch (per process under DDP; 64 in the paper).
        eval_batch_size: stacks per validation / test batch.
        value_range: ``symmetric`` for [-1, 1] or ``unit`` for [0, 1].
        val_size: digit images held out for the validation stacks (MNISTDataModule's ``val_size``).
        test_size: digit images of the test part with ``source="test-split"``.
        download: download MNIST with torchvision if it is missing (see :class:`MNISTDataModule`).
    """

    def __init__(
        self,
        data_dir: str = "data",
        num_stacks: int = 3,
        source: Source = "full",
        num_train: int | None = None,
        num_val: int = 10_000,
        num_test: int = 10_000,
        seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        value_range: ValueRange = "symmetric",
        val_size: int = 5000,
        test_size: int = 2000,
        download: bool = True,
    ) -> None:
        super().__init__()
        check_options(type(self).__init__, locals())
        if num_stacks < 1:
            raise UserError(f"num_stacks must be at least 1 (3 or 4 in the papers), got {num_stacks}")
        num_train = 128 * 10**num_stacks if num_train is None else num_train
        check_at_least(1, batch_size=batch_size, eval_batch_size=eval_batch_size)
        if num_train < batch_size:
            raise UserError(f"num_train ({num_train}) is smaller than batch_size ({batch_size})")
        check_at_least(0, num_val=num_val, num_test=num_test)
        self.save_hyperparameters()
        # The digit images: MNISTDataModule's loading, splits and errors (its batch size is unused).
        self.mnist = MNISTDataModule(
            data_dir=data_dir,
            download=download,
            batch_size=1,
            value_range=value_range,
            val_size=val_size,
            seed=seed,
            source=source,
            test_size=test_size,
        )
        self.data_dir = self.mnist.data_dir
        self.num_stacks = num_stacks
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.value_range = value_range
        self.digits: Tensor | None = None
        self.digit_labels: Tensor | None = None
        self.digit_ranges: dict[str, tuple[int, int]] = {}
        self.train_stacks: Tensor | None = None
        self.val_stacks: Tensor | None = None
        self.test_stacks: Tensor | None = None
        self._on_device: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.num_stacks, 28, 28)

    @property
    def num_modes(self) -> int:
        return 10**self.num_stacks

    @staticmethod
    def mode_id(digits: Tensor) -> Tensor:
        """The mode of each stack, ``(B, n)`` digits -> ``(B,)`` ids (the digits read as a decimal number):
        :func:`mode_ids`."""
        return mode_ids(digits)

    # ------------------------------------------------------------------ building the sets
    def prepare_data(self) -> None:
        self.mnist.prepare_data()

    def draw_stacks(self, num: int, pool_size: int, stream: int) -> Tensor:
        """``(num, n)`` indices, each uniform over ``pool_size`` digit images, from ``(seed, stream)``."""
        if num and pool_size == 0:
            raise UserError(f"no digit images to draw {num} stacks from; lower val_size / test_size or num_val")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * (stream + 1))
        return torch.randint(0, max(pool_size, 1), (num, self.num_stacks), generator=g)

    def setup(self, stage: str | None = None) -> None:
        if self.train_stacks is not None:
            return
        self.mnist.setup(stage)
        m = self.mnist
        parts = [(m.train_data, m.train_labels), (m.val_data, m.val_labels), (m.test_data, m.test_labels)]
        # One pool of digit images, the three splits' digits one after the other: stacks hold indices
        # into it, so that composing any batch is a single gather.
        self.digits = torch.cat([images[:, 0] for images, _ in parts])  # (M, 28, 28)
        self.digit_labels = torch.cat([labels for _, labels in parts])
        start = 0
        for split, (images, _), num, stream in zip(
            SPLITS, parts, (self.num_train, self.num_val, self.num_test), range(3)
        ):
            size = images.shape[0]
            self.digit_ranges[split] = (start, start + size)
            setattr(self, f"{split}_stacks", start + self.draw_stacks(num, size, stream))
            start += size
        self._on_device = {}

    def stacks(self, split: str) -> Tensor:
        """The ``(N, n)`` indices into :attr:`digits` of a split's stacks."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        stacks = getattr(self, f"{split}_stacks")
        assert stacks is not None, "call setup() first"
        return stacks

    def stack_labels(self, split: str) -> Tensor:
        """The ``(N, n)`` digits of a split's stacks."""
        return self.digit_labels[self.stacks(split)]

    # ------------------------------------------------------------------ composing batches
    def compose(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Stacks from indices ``(B, n)`` into :attr:`digits`: images ``(B, n, 28, 28)`` and digits ``(B, n)``,
        on the indices' device (one gather each; the pool is copied to a device once)."""
        key = str(indices.device)
        if key not in self._on_device:
            self._on_device[key] = (self.digits.to(indices.device), self.digit_labels.to(indices.device))
        images, labels = self._on_device[key]
        return images[indices], labels[indices]

    def split_tensors(self, split: str) -> tuple[Tensor, ...]:
        """Batches are stack indices, ``(self.stacks(split),)``; composed on their device after transfer."""
        return (self.stacks(split),)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Turn a batch of stack indices, on its device, into the stacks ``(x, y)``."""
        return self.compose(batch) if isinstance(batch, Tensor) else batch
