"""Data modules. Batches are a tensor ``x`` or a tuple whose first element is ``x``."""

from lightning_ebm.datamodules.kdd99 import KDD99DataModule
from lightning_ebm.datamodules.mnist import MNISTDataModule
from lightning_ebm.datamodules.toy2d import TOY_NAMES, Toy2DDataModule, mode_centres, sample_toy2d
from lightning_ebm.datamodules.utils import TensorBatches

__all__ = [
    "TOY_NAMES",
    "KDD99DataModule",
    "MNISTDataModule",
    "TensorBatches",
    "Toy2DDataModule",
    "mode_centres",
    "sample_toy2d",
]
