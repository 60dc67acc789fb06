"""The methods. Each is an :class:`EnergyBasedModel` (see its docstring for the contract); ``Classifier``
is the supervised MNIST classifier of mode counting."""

from lightning_ebm.models.base import EnergyBasedModel, NetworkModule
from lightning_ebm.models.classifier import Classifier
from lightning_ebm.models.dbm import DBM
from lightning_ebm.models.dbn import DBN
from lightning_ebm.models.dem import DEM
from lightning_ebm.models.generator_ebm import GeneratorEBM
from lightning_ebm.models.jem import JEM
from lightning_ebm.models.meg import MEG
from lightning_ebm.models.rbm import RBM
from lightning_ebm.models.stack import GreedyRBMStack

__all__ = [
    "Classifier",
    "DBM",
    "DBN",
    "DEM",
    "JEM",
    "RBM",
    "MEG",
    "EnergyBasedModel",
    "GeneratorEBM",
    "GreedyRBMStack",
    "NetworkModule",
]
