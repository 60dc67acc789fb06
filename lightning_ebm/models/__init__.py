"""The methods. Each is an :class:`EnergyBasedModel` (see its docstring for the contract)."""

from lightning_ebm.models.base import EnergyBasedModel
from lightning_ebm.models.dem import DEM
from lightning_ebm.models.rbm import RBM

__all__ = ["DEM", "RBM", "EnergyBasedModel"]
