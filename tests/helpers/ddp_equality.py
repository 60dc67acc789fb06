"""A few training steps of each method on a fixed global batch, on one process or several.

``run_case(name, out_dir)`` trains one case and writes every process's parameters, buffers and
persistent chains to ``<out_dir>/<name>_rank<R>.pt``. Run as a script (``python ddp_equality.py
OUT_DIR --devices 2 CASE ...``), it trains the cases under CPU DDP (gloo); the tests compare them
with the same cases on one process (``tests/test_ddp_equality.py``).

The global batch of every step is the same on one and on ``N`` processes: process ``r`` reads the
``r``-th ``N``th of it (:class:`Data`). What else differs between one process and ``N`` is made equal:

* the random numbers of the samplers: binary units are replaced by their probabilities
  (mean-field Gibbs sweeps, :func:`deterministic_units`), so a chain is a function of its start;
  the persistent chains of the global run are given, process ``r`` of ``N`` gets the ``r``-th ``N``th;
* the generators' latent codes: every call of ``latent`` takes the next code bank of the global
  batch (process ``r`` its ``r``-th share);
* MEG's shuffle of ``z`` for the negatives of the JSD estimator: a roll within each process's share
  instead of a random permutation over the batch (on one process, within each of the ``N`` shares),
  so the negative pairs are the same;
* noise layers and sample noise are off; parameters are float64, so the comparison is tight. The
  biases of the layers that feed a batch norm have no gradient in exact arithmetic, only rounding
  noise, which an adaptive optimiser scales up to a full step: the DEM case uses AdaGrad (the
  paper's), whose ``eps`` keeps such steps below ``1e-8``, and the comparison allows that much.

What is not made equal is what DDP must get right: the averaging of every loss's gradient (means
over examples, chains, pairs), the gradient penalty's double backward, batch norm statistics
(through :class:`~lightning_ebm.plugins.SyncBatchNormPlugin`), the data means of the RBM's visible
bias initialisation and the running mean activation of the RBM's sparsity term.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch

from helpers.models import dem_rates, meg_rates
from lightning_ebm.models import DBM, DBN, DEM, MEG, RBM
from lightning_ebm.models.objectives import jsd_mutual_information
from lightning_ebm.nn import MLP, StatisticsMLP
from lightning_ebm.optim import spec
from lightning_ebm.plugins import SyncBatchNormPlugin

#: Processes of the distributed runs; the global batch is split into this many shares.
SHARES = 2
PER_PROCESS = 8  # examples per process and step
STEPS = 3


@contextlib.contextmanager
def deterministic_units() -> Iterator[None]:
    """Binary units take their probability instead of a sample (mean-field Gibbs sweeps)."""
    import lightning_ebm.models.rbm as rbm_model
    import lightning_ebm.nn.dbm as dbm_net
    import lightning_ebm.nn.rbm as rbm_layer

    modules = (rbm_model, rbm_layer, dbm_net)
    saved = [m.sample_bernoulli for m in modules]
    for m in modules:
        m.sample_bernoulli = lambda p: p
    try:
        yield
    finally:
        for m, original in zip(modules, saved):
            m.sample_bernoulli = original


class Data(L.LightningDataModule):
    """Step ``s`` of process ``r`` of ``N``: the ``r``-th ``N``th of global batch ``s`` (all of it on one
    process); the trainer runs with ``use_distributed_sampler=False``."""

    def __init__(self, data: torch.Tensor) -> None:
        super().__init__()
        self.data = data

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        batches = self.data.reshape(STEPS, world, -1, *self.data.shape[1:])[:, rank]
        return torch.utils.data.DataLoader(batches.flatten(0, 1), batch_size=batches.shape[1], shuffle=False)


def my_share(x: torch.Tensor, trainer: L.Trainer) -> torch.Tensor:
    """Process ``r``'s share of a global tensor (all of it on one process)."""
    return x.chunk(trainer.world_size)[trainer.global_rank].clone()


class FixedLatent:
    """``latent(n)``: the next bank of global codes, this process's share."""

    def __init__(self, model: L.LightningModule, dim: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.banks = torch.randn(64, SHARES * PER_PROCESS, dim, generator=g, dtype=torch.float64)
        self.model, self.calls = model, 0

    def __call__(self, num_samples: int) -> torch.Tensor:
        bank = self.banks[self.calls]
        self.calls += 1
        z = my_share(bank, self.model.trainer)
        assert z.shape[0] == num_samples, (z.shape, num_samples)
        return z.to(self.model.device, self.model.dtype)


def rolled_mutual_information(model: MEG) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """MEG's JSD estimate with ``z`` rolled by one within each share instead of shuffled."""

    def mutual_information(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        shares = SHARES // model.trainer.world_size
        shuffled = z.reshape(shares, -1, z.shape[1]).roll(1, dims=1).reshape(z.shape)
        return jsd_mutual_information(model.statistics_net(x, z), model.statistics_net(x, shuffled))

    return mutual_information


SGD = spec("torch.optim.SGD", lr=0.1, momentum=0.5, weight_decay=2e-4)


class GlobalChains(L.Callback):
    """At the start of training each process takes its share of the given global chains."""

    def __init__(self, attribute: str, chains: torch.Tensor) -> None:
        self.attribute, self.chains = attribute, chains

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        owner = pl_module
        *path, name = self.attribute.split(".")
        for part in path:
            owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
        setattr(owner, name, my_share(self.chains, trainer).to(pl_module.device, pl_module.dtype))


def binary_data(n_visible: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(STEPS * SHARES * PER_PROCESS, n_visible, generator=g) < 0.3).double()


def chains(num: int, width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return (torch.rand(SHARES * num, width, generator=g) < 0.5).double()


def build(name: str) -> tuple[L.LightningModule, torch.Tensor, list[L.Callback], list[Any]]:
    """The model of a case (parameters drawn from seed 0), its data, callbacks and plugins."""
    torch.manual_seed(0)
    callbacks: list[L.Callback] = []
    plugins: list[Any] = []
    if name.startswith("rbm"):
        method = "pcd" if "pcd" in name else "cd"
        sparsity = dict(sparsity_target=0.1, sparsity_cost=0.5) if "sparsity" in name else {}
        model = RBM(12, 7, method=method, k=2, num_chains=5, optimizer=SGD, init_std=0.1, num_filters=0, **sparsity)
        data = binary_data(12)
        if method == "pcd":
            callbacks.append(GlobalChains("cd.visible", chains(5, 12)))
    elif name == "dbn":
        model = DBN([12, 7, 5], layer_epochs=[1, 1], k=1, layer_optimizer=SGD, init_std=0.1, num_filters=0)
        data = binary_data(12)
    elif name == "dbm":
        joint = spec("torch.optim.SGD", lr=0.05, momentum=0.5, weight_decay=2e-4)
        momentum = spec("lightning_ebm.optim.Schedule", final_momentum=0.9, momentum_epochs=5)
        model = DBM([12, 7, 5], layer_epochs=[0, 0], optimizer=joint, lr_schedule=momentum, init_std=0.1,
                    num_chains=4, gibbs_steps=2, mean_field_steps=3)  # fmt: skip
        data = binary_data(12)
        callbacks.append(GlobalChains("persistent_chains", chains(4, 12 + 7 + 5)))
    elif name.startswith("dem"):
        model = DEM(
            feature_net=MLP(2, [16], 16, output_activation="tanh"),
            generator=MLP(3, [16, 16], 2, batch_norm=True),
            latent_dim=3, num_experts=4, **dem_rates(0.01, 0.01),
            gradient_penalty=0.5, energy_steps=2,
        )  # fmt: skip
        model.latent = FixedLatent(model, 3)
        data = torch.randn(STEPS * SHARES * PER_PROCESS, 2, generator=torch.Generator().manual_seed(0)).double()
        if "nosync" not in name:
            plugins.append(SyncBatchNormPlugin())
    elif name == "meg":
        model = MEG(
            energy_net=MLP(2, [16, 16], 1, activation="leaky_relu"),
            generator=MLP(2, [16], 2),
            statistics_net=StatisticsMLP(2, 2, [16]),
            latent_dim=2, gradient_penalty=0.5, energy_steps=2, **meg_rates(0.01, 0.01, 0.01),
        )  # fmt: skip
        model.latent = FixedLatent(model, 2)
        model.mutual_information = rolled_mutual_information(model)
        data = torch.randn(STEPS * SHARES * PER_PROCESS, 2, generator=torch.Generator().manual_seed(0)).double()
    else:
        raise ValueError(f"unknown case {name!r}")
    return model, data, callbacks, plugins


CASES = ("rbm_cd", "rbm_pcd", "rbm_cd_sparsity", "dbn", "dbm", "dem", "dem_nosync", "meg")


def run_case(name: str, out_dir: Path, devices: int = 1) -> None:
    """Train case ``name`` for its steps on ``devices`` CPU processes; each process saves its state."""
    model, data, callbacks, plugins = build(name)
    epochs = 2 if name == "dbn" else 1  # the DBN: one epoch per layer
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", precision="64-true",
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=callbacks,
        plugins=plugins or None, use_distributed_sampler=False,
    )  # fmt: skip
    with deterministic_units():
        trainer.fit(model, datamodule=Data(data))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.update({f"per_rank.{k}": v.detach().clone() for k, v in model.per_rank_state().items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(state, out_dir / f"{name}_rank{trainer.global_rank}.pt")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("cases", nargs="*", default=list(CASES))
    parser.add_argument("--devices", type=int, default=SHARES)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.cases:
        run_case(name, args.out_dir, args.devices)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1:])
