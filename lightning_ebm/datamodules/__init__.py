"""Data modules. Batches are a tensor ``x`` or a tuple whose first element is ``x``."""

from lightning_ebm.datamodules.celeba import CelebADataModule
from lightning_ebm.datamodules.cifar10 import CIFAR10DataModule
from lightning_ebm.datamodules.kdd99 import KDD99DataModule
from lightning_ebm.datamodules.lsun import LSUNDataModule
from lightning_ebm.datamodules.mnist import MNISTDataModule
from lightning_ebm.datamodules.mnist_anomaly import MNISTAnomalyDataModule
from lightning_ebm.datamodules.stacked_mnist import StackedMNISTDataModule, mode_digits, mode_ids
from lightning_ebm.datamodules.toy2d import TOY_NAMES, Toy2DDataModule, mode_centres, sample_toy2d
from lightning_ebm.datamodules.utils import InMemoryLoaders, TensorBatches

__all__ = [
    "TOY_NAMES",
    "CIFAR10DataModule",
    "CelebADataModule",
    "InMemoryLoaders",
    "LSUNDataModule",
    "KDD99DataModule",
    "MNISTAnomalyDataModule",
    "MNISTDataModule",
    "StackedMNISTDataModule",
    "TensorBatches",
    "Toy2DDataModule",
    "mode_centres",
    "mode_digits",
    "mode_ids",
    "sample_toy2d",
]
