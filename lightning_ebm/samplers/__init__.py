"""Samplers shared by the methods (written once here, used by every method that needs MCMC)."""

from lightning_ebm.samplers.ais import (
    AnnealingPath,
    LogPartition,
    annealed_importance_sampling,
    salakhutdinov_murray_betas,
)
from lightning_ebm.samplers.gibbs import block_gibbs, sample_bernoulli, sample_gaussian
from lightning_ebm.samplers.langevin import langevin_dynamics, latent_mala, mala
from lightning_ebm.samplers.replay import ReplayBuffer

__all__ = [
    "AnnealingPath",
    "LogPartition",
    "ReplayBuffer",
    "annealed_importance_sampling",
    "block_gibbs",
    "langevin_dynamics",
    "latent_mala",
    "mala",
    "salakhutdinov_murray_betas",
    "sample_bernoulli",
    "sample_gaussian",
]
