"""lightning-ebm: energy-based models on PyTorch Lightning.

Every method is a :class:`lightning_ebm.models.EnergyBasedModel`; see its docstring for the contract
(``energy``, ``sample``, ``load_from_checkpoint``) that callbacks and evaluation code rely on.
"""

__version__ = "0.2.0"
