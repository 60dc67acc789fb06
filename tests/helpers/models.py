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


def optimizer(name: str, **init_args) -> dict:
    """The spec of ``torch.optim.<name>`` with ``init_args`` (what a config writes)."""
    from lightning_ebm.optim import spec

    return spec(f"torch.optim.{name}", **init_args)


def linear_decay(start: float = 0.0, **init_args) -> dict:
    """The spec of a :class:`~lightning_ebm.optim.Schedule` decaying linearly to 0 after ``start``."""
    from lightning_ebm.optim import spec

    return spec("lightning_ebm.optim.Schedule", linear_decay_start=start, **init_args)


def dem_rates(energy: float, generator: float) -> dict:
    """DEM's AdaGrad players (weight decay 1e-5 on the energy) at these learning rates."""
    return {
        "energy_optimizer": optimizer("Adagrad", lr=energy, weight_decay=1e-5),
        "generator_optimizer": optimizer("Adagrad", lr=generator),
    }


def meg_rates(energy: float, generator: float, statistics: float) -> dict:
    """MEG's Adam players (betas 0.5, 0.9) at these learning rates."""
    adam = {"betas": [0.5, 0.9], "fused": True}
    return {
        "energy_optimizer": optimizer("Adam", lr=energy, **adam),
        "generator_optimizer": optimizer("Adam", lr=generator, **adam),
        "statistics_optimizer": optimizer("Adam", lr=statistics, **adam),
    }


def manual_optimisation(model) -> list:
    """The model's optimisers and schedules outside a Trainer (plain objects, losses by ``backward``)."""
    optimizers, schedulers = model.configure_optimizers()
    model.optimizers = lambda use_pl_optimizer=True: optimizers
    model.lr_schedulers = lambda: [s["scheduler"] for s in schedulers]
    model.manual_backward = lambda loss: loss.backward()
    return optimizers
