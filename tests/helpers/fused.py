"""One small case of every method's update (each variant of it), trained eagerly or on the fast path
(emulated on the CPU), for the fast path's tests."""

from __future__ import annotations

import lightning as L
import torch

import lightning_ebm.models.base as base
from helpers.boltzmann import BARS_AND_STRIPES, TensorData
from helpers.models import linear_decay, meg_rates, optimizer, tiny_dem
from lightning_ebm.models import DBM, DBN, JEM, MEG, RBM
from lightning_ebm.nn import MLP, StatisticsMLP
from lightning_ebm.optim import spec

SGD = spec("torch.optim.SGD", lr=0.1, momentum=0.5, weight_decay=2e-4)
STEPS = 12  # 3 eager warm-up calls per variant, then replays
#: The fast path runs AdaGrad and Adam with their fused kernels on the CPU (lightning_ebm.fused.make_capturable),
#: so the eager reference here asks for them too: other kernels round differently, and a bias before a batch
#: norm has a zero gradient up to rounding, which AdaGrad's and Adam's per-coordinate normalisation turns into
#: steps of about the learning rate whose sign is that of the rounding error.
ADAGRAD = {
    "energy_optimizer": optimizer("Adagrad", lr=0.05, weight_decay=1e-5, fused=True),
    "generator_optimizer": optimizer("Adagrad", lr=0.05, fused=True),
}


def toy_points(labels: int = 0) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS * 16, 2, generator=g)
    return (x, torch.randint(0, labels, (x.shape[0],), generator=g)) if labels else x


def binary(n: int) -> torch.Tensor:
    return BARS_AND_STRIPES.repeat(n, 1)


def tiny_jem(**overrides: object) -> JEM:
    """A JEM of four classes (or ``num_classes``) on 2D points (a replay buffer of 40, Adam)."""
    kwargs: dict = dict(num_classes=4, data_shape=[2], buffer_size=40, init_range=[-3, 3],
                        optimizer=optimizer("Adam", lr=1e-3, fused=True))  # fmt: skip
    kwargs.update(overrides)
    return JEM(MLP(2, [16], kwargs["num_classes"], activation="leaky_relu"), **kwargs)


CASES = {
    "dem": (lambda **kw: tiny_dem(gradient_penalty=0.5, energy_steps=2, **ADAGRAD, **kw), toy_points),
    "dem_schedule": (lambda **kw: tiny_dem(lr_schedule=linear_decay(0.3), **ADAGRAD, **kw), toy_points),
    "meg": (
        lambda **kw: MEG(
            MLP(2, [16, 16], 1, activation="leaky_relu"),
            MLP(2, [16], 2),
            StatisticsMLP(2, 2, [16]),
            latent_dim=2,
            energy_steps=3,
            gradient_penalty=0.5,
            **meg_rates(1e-3, 1e-3, 1e-3),
            lr_schedule=linear_decay(0.5),
            **kw,
        ),
        toy_points,
    ),  # fmt: skip
    "jem": (
        lambda **kw: tiny_jem(
            sgld_steps=3, sgld_step_size=0.05, sgld_noise=0.05, pxy_weight=0.5, energy_l2=0.1, sgld_clamp=True, **kw
        ),
        lambda: toy_points(labels=4),
    ),
    "jem_class_gaussian": (
        lambda **kw: tiny_jem(sgld_steps=2, reinit_prob=0.5, reinit_from="class_gaussian", **kw),
        lambda: toy_points(labels=4),
    ),
    "rbm_cd": (lambda **kw: RBM(9, 6, k=2, optimizer=SGD, num_filters=0, **kw), lambda: binary(STEPS)),
    "rbm_pcd_sparse": (
        lambda **kw: RBM(
            9,
            6,
            method="pcd",
            num_chains=7,
            optimizer=SGD,
            lr_schedule=linear_decay(0.0),
            sparsity_target=0.1,
            sparsity_cost=0.5,
            num_filters=0,
            **kw,
        ),
        lambda: binary(STEPS),
    ),  # fmt: skip
    "rbm_gaussian": (
        lambda **kw: RBM(2, 4, visible="gaussian", learn_sigma=True, method="pcd", optimizer=SGD, num_filters=0, **kw),
        toy_points,
    ),
    "dbn": (
        lambda **kw: DBN([9, 6, 5], layer_epochs=[1, 1], method="pcd", num_chains=5, num_filters=0, **kw),
        lambda: binary(STEPS),
    ),
    "dbm": (
        lambda **kw: DBM(
            [9, 6, 5],
            layer_epochs=[1, 0],
            num_chains=7,
            gibbs_steps=2,
            mean_field_steps=3,
            num_filters=0,
            optimizer=SGD,
            **kw,
        ),
        lambda: binary(STEPS),
    ),  # fmt: skip
}


def fit(
    name: str,
    fused: bool,
    monkeypatch,
    epochs: int = 2,
    resume: str | None = None,
    save: str | None = None,  # noqa: ANN001
) -> tuple[L.LightningModule, int]:
    """``epochs`` epochs of the case, eagerly or on the fast path (emulated on the CPU), resuming the
    checkpoint ``resume`` and saving one to ``save`` if given; the model and the replays made."""
    make_model, make_data = CASES[name]
    monkeypatch.setattr(base, "fused_step_unavailable", lambda trainer: None)  # the CPU stands in for a GPU
    L.seed_everything(0, verbose=False)
    model = make_model(fused_step=fused)
    data = make_data()
    dm = TensorData(data if isinstance(data, torch.Tensor) else torch.utils.data.TensorDataset(*data), batch_size=16)
    trainer = L.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, log_every_n_steps=3, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(model, datamodule=dm, ckpt_path=resume)
    if save is not None:
        trainer.save_checkpoint(save)
    replays = model._captured.replays if model._captured is not None else 0
    return model, replays


def raw_optimizers(model: L.LightningModule) -> list[torch.optim.Optimizer]:
    optimizers = model.optimizers(use_pl_optimizer=False)
    return optimizers if isinstance(optimizers, list) else [optimizers]


def carried_state(model: L.LightningModule) -> dict[str, torch.Tensor]:
    """Parameters, buffers, per-process state (chains, replay buffers) and optimiser states."""
    state = {f"param.{k}": v for k, v in model.state_dict().items()}
    state.update({f"per_rank.{k}": v for k, v in model.per_rank_state().items()})
    for i, opt in enumerate(raw_optimizers(model)):
        for j, s in enumerate(opt.state.values()):
            state.update({f"opt{i}.{j}.{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)})
    return state


def update_keys(model: L.LightningModule) -> list[tuple]:
    """Every variant of the model's update."""
    if isinstance(model, (DBN, DBM)):
        return [(0,), (1,)] if isinstance(model, DBN) else [(0,), (None,)]
    if hasattr(model, "generator_period"):
        return [(True,), (False,)]
    return [model.update_key()]


def first_batch(name: str) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """A batch of the case's data."""
    data = CASES[name][1]()
    return (data[0][:16], data[1][:16]) if isinstance(data, tuple) else data[:16]
