"""Callbacks. They use only the model contract (``energy``, ``sample``), never a method's internals."""

from lightning_ebm.callbacks.anomaly import AnomalyDetection
from lightning_ebm.callbacks.checkpoint import PeriodicMetricCheckpoint
from lightning_ebm.callbacks.energy_landscape import EnergyLandscape
from lightning_ebm.callbacks.image_quality import ImageQuality
from lightning_ebm.callbacks.likelihood import AISLogLikelihood
from lightning_ebm.callbacks.mode_counting import ModeCounting
from lightning_ebm.callbacks.sample_grid import SampleGrid
from lightning_ebm.callbacks.toy_metrics import ToyModeMetrics

__all__ = [
    "AISLogLikelihood",
    "AnomalyDetection",
    "EnergyLandscape",
    "ImageQuality",
    "ModeCounting",
    "PeriodicMetricCheckpoint",
    "SampleGrid",
    "ToyModeMetrics",
]
