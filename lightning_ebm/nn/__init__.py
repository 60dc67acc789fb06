"""Networks and layers shared by the methods: plain ``nn.Module``s that know nothing about training
(the Boltzmann machines' layers, :class:`RBMLayer` and :class:`DBMNet`, included)."""

from lightning_ebm.nn.base import Network, module_spec
from lightning_ebm.nn.classifier import ConvClassifier
from lightning_ebm.nn.conv import ConvEnergy, ConvGenerator, ConvStatistics
from lightning_ebm.nn.dbm import DBMNet
from lightning_ebm.nn.dcgan import DCGANFeatureNet, DCGANGenerator
from lightning_ebm.nn.energy import ProductOfExpertsEnergy
from lightning_ebm.nn.entropy import batchnorm_entropy, batchnorm_scales
from lightning_ebm.nn.mlp import MLP, GaussianNoise, StatisticsMLP, make_activation
from lightning_ebm.nn.rbm import RBMLayer
from lightning_ebm.nn.wrn import WideResNet

__all__ = [
    "MLP",
    "ConvClassifier",
    "ConvEnergy",
    "ConvGenerator",
    "ConvStatistics",
    "DBMNet",
    "DCGANFeatureNet",
    "DCGANGenerator",
    "GaussianNoise",
    "Network",
    "ProductOfExpertsEnergy",
    "RBMLayer",
    "StatisticsMLP",
    "WideResNet",
    "batchnorm_entropy",
    "batchnorm_scales",
    "make_activation",
    "module_spec",
]
