"""The methods. Each is an :class:`EnergyBasedModel` (see its docstring for the contract)."""

from lightning_ebm.models.base import EnergyBasedModel
from lightning_ebm.models.dbm import DBM
from lightning_ebm.models.dbn import DBN
from lightning_ebm.models.dem import DEM
from lightning_ebm.models.jem import JEM
from lightning_ebm.models.meg import MEG
from lightning_ebm.models.rbm import RBM
from lightning_ebm.models.stack import GreedyRBMStack

__all__ = ["DBM", "DBN", "DEM", "JEM", "RBM", "MEG", "EnergyBasedModel", "GreedyRBMStack"]
