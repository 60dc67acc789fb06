"""MNIST anomaly detection, one digit as the anomaly: the protocol of Zenati et al. (2018), used by
Kumar et al. (2019, MEG, Table 4, which reports AUPRC).

One digit (``anomaly_digit``) is the anomaly class, the nine others are normal. All images of the
source are pooled (``full``: the 60,000 training and 10,000 test images of MNIST, 70,000 in all;
``test-split``: the official 10,000 test images alone); the normal images are shuffled with ``seed``
and the first ``train_fraction`` (80 %) of them are the training set, which therefore holds no
anomaly; the test set is the remaining 20 % of the normal images together with *every* image of the
anomalous digit. Batches are ``(x, y)`` with ``y = 1`` for an anomaly (0 for the training set).

Sizes with ``full`` and ``anomaly_digit=1`` (7,877 images of 1, 62,123 normal): 49,698 training
images; 12,425 normal + 7,877 anomalous = 20,302 test images (38.8 % anomalies). In general, with
``A`` images of the anomalous digit among ``N``: ``floor(0.8 (N - A))`` train and ``N - floor(0.8 (N - A))``
test images. With ``test-split`` and digit 1 (1,135 of 10,000): 7,092 train, 1,773 + 1,135 = 2,908 test.

The published protocol has no validation set. ``val_fraction`` > 0 first holds out that fraction of
all images (both classes, at random) as a validation set and applies the protocol to the rest, so that
model selection never looks at the test images.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from lightning_ebm.datamodules.mnist import MNISTDataModule, Source, ValueRange
from lightning_ebm.datamodules.utils import InMemoryLoaders, check_at_least, check_options
from lightning_ebm.errors import UserError


class MNISTAnomalyDataModule(InMemoryLoaders, L.LightningDataModule):
    """MNIST with one digit as the anomaly class (see the module docstring), batches ``(x, y)``, ``y = 1`` anomaly.

    After :meth:`setup`: ``train_data``, ``val_data``, ``test_data`` (images ``(N, 1, 28, 28)`` in the
    value range), ``train_labels`` etc. (1 for the anomalous digit), ``train_digits`` etc. (the digits),
    and ``train_indices`` etc. (positions in the pooled images of :meth:`MNISTDataModule.load_images`).

    Args:
        data_dir: MNIST's directory, as for :class:`MNISTDataModule` (``<data_dir>/MNIST/raw/``).
        anomaly_digit: the digit that is the anomaly class (0-9).
        source: ``full`` (all 70,000 images) or ``test-split`` (the official 10,000 test images).
        train_fraction: share of the normal images used for training (0.8 in the protocol).
        val_fraction: share of all images held out for validation before the protocol split (0: none,
            the published protocol).
        value_range: ``symmetric`` for [-1, 1] (the MEG code's setting) or ``unit`` for [0, 1].
        seed: seed of the shuffles (of the validation hold-out, of the normal images, of the batches).
        batch_size: training batch size per process (64 in the MEG code).
        eval_batch_size: batch size of validation and test.
        download: download MNIST with torchvision if it is missing (see :class:`MNISTDataModule`).
    """

    train_digits: Tensor | None = None
    val_digits: Tensor | None = None
    test_digits: Tensor | None = None

    def __init__(
        self,
        data_dir: str = "data",
        anomaly_digit: int = 1,
        source: Source = "full",
        train_fraction: float = 0.8,
        val_fraction: float = 0.0,
        value_range: ValueRange = "symmetric",
        seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        download: bool = True,
    ) -> None:
        super().__init__()
        check_options(type(self).__init__, locals())
        check_at_least(1, batch_size=batch_size, eval_batch_size=eval_batch_size)
        if anomaly_digit not in range(10):
            raise UserError(f"anomaly_digit must be one of 0..9, got {anomaly_digit}")
        if not 0.0 < train_fraction < 1.0:
            raise UserError(f"train_fraction must be in (0, 1), got {train_fraction}")
        if not 0.0 <= val_fraction < 1.0:
            raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.save_hyperparameters()
        # MNISTDataModule reads (and checks, and downloads) the files; its own splits are not used.
        self.mnist = MNISTDataModule(data_dir=data_dir, download=download, source=source, val_size=0)
        self.data_dir = self.mnist.data_dir
        self.anomaly_digit = anomaly_digit
        self.train_fraction = train_fraction
        self.val_fraction = val_fraction
        self.value_range = value_range
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (1, 28, 28)

    def prepare_data(self) -> None:
        self.mnist.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        images, digits = self.mnist.load_images()
        n = images.shape[0]
        g = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(n, generator=g)
        n_val = int(round(self.val_fraction * n))
        val, rest = order[:n_val], order[n_val:].sort().values
        anomalous = digits[rest] == self.anomaly_digit
        normal = rest[~anomalous]
        normal = normal[torch.randperm(normal.shape[0], generator=g)]
        cut = int(self.train_fraction * normal.shape[0])
        train, test = normal[:cut], torch.cat([normal[cut:], rest[anomalous]])
        if train.shape[0] < self.batch_size:
            raise UserError(f"only {train.shape[0]} training images, fewer than batch_size ({self.batch_size})")
        x = images.to(torch.float32).div_(255.0).unsqueeze(1)
        if self.value_range == "symmetric":
            x = x.mul_(2.0).sub_(1.0)
        for split, idx in (("train", train), ("val", val), ("test", test)):
            idx = idx.sort().values
            setattr(self, f"{split}_indices", idx)
            setattr(self, f"{split}_data", x[idx])
            setattr(self, f"{split}_digits", digits[idx])
            setattr(self, f"{split}_labels", (digits[idx] == self.anomaly_digit).long())
