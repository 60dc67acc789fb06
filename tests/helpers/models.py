"""Small models the tests build in Python."""

from __future__ import annotations


def tiny_dem(**overrides):
    """A small DEM on 2D data (the paper's toy architecture)."""
    from lightning_ebm.models import DEM
    from lightning_ebm.nn import MLP

    kwargs = dict(
        feature_net=MLP(2, [32], 32, output_activation="tanh"),
        generator=MLP(4, [32, 32], 2, batch_norm=True),
        latent_dim=4,
        num_experts=4,
    )
    kwargs.update(overrides)
    return DEM(**kwargs)
