"""Callbacks. They use only the model contract (``energy``, ``sample``), never a method's internals."""

from lightning_ebm.callbacks.anomaly import AnomalyDetection
from lightning_ebm.callbacks.calibration import Calibration
from lightning_ebm.callbacks.checkpoint import PeriodicMetricCheckpoint
from lightning_ebm.callbacks.divergence import DivergenceGuard
from lightning_ebm.callbacks.energy_landscape import EnergyLandscape
from lightning_ebm.callbacks.image_quality import ImageQuality
from lightning_ebm.callbacks.likelihood import AISLogLikelihood
from lightning_ebm.callbacks.mode_counting import ModeCounting
from lightning_ebm.callbacks.ood import OODDetection
from lightning_ebm.callbacks.sample_grid import ConditionalSampleGrid, SampleGrid
from lightning_ebm.callbacks.toy_metrics import ToyModeMetrics

__all__ = [
    "AISLogLikelihood",
    "AnomalyDetection",
    "Calibration",
    "ConditionalSampleGrid",
    "DivergenceGuard",
    "EnergyLandscape",
    "ImageQuality",
    "ModeCounting",
    "OODDetection",
    "PeriodicMetricCheckpoint",
    "SampleGrid",
    "ToyModeMetrics",
]
