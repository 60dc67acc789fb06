"""Held-out log-likelihood of a Boltzmann machine during training, with ``log Z`` from AIS."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from lightning_ebm.callbacks.utils import RankZeroEvaluation, log_rank_zero_values
from lightning_ebm.evaluation.likelihood import estimate_log_partition, log_likelihood


class AISLogLikelihood(RankZeroEvaluation):
    """Every ``every_n_epochs`` epochs (and at the last), estimate ``log Z`` by AIS and log the mean
    log-likelihood of held-out data.

    It logs ``val/log_likelihood`` (nats per example), ``val/log_partition`` and the half-width of
    its ``+-3`` std interval, ``val/log_partition_interval``, and the training data's mean
    log-likelihood, ``train/log_likelihood`` (the gap is the over-fitting), and the AIS weights'
    effective sample size, ``val/ais_effective_sample_size`` (far below ``num_chains``: the estimate
    is unreliable, see :func:`~lightning_ebm.evaluation.estimate_log_partition`). The AIS run is on
    rank 0; its result is broadcast so that every process logs the same value (and a checkpoint
    can monitor it).

    Defaults keep it cheap during training (2,000 betas, 100 chains). In ``test`` it logs
    ``test/log_likelihood`` of the data module's ``test_data`` with the full schedule
    (``test_num_betas``, 14,500 as in Salakhutdinov & Murray 2008), the number to report.

    Args:
        every_n_epochs: how often to run.
        num_chains: AIS chains.
        num_betas: annealing steps (Salakhutdinov & Murray's schedule, shrunk proportionally).
        max_examples: held-out examples evaluated (the data module's ``val_data``).
        seed: seed of the AIS chains.
        test_num_betas: annealing steps of the estimate made in ``test``.
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        num_chains: int = 100,
        num_betas: int = 2_000,
        max_examples: int = 10_000,
        seed: int = 0,
        test_num_betas: int = 14_500,
    ) -> None:
        self.every_n_epochs = every_n_epochs
        self.num_chains = num_chains
        self.num_betas = num_betas
        self.max_examples = max_examples
        self.seed = seed
        self.test_num_betas = test_num_betas

    def _evaluate_and_log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """AIS on rank 0, broadcast to every rank, logged under ``<stage>/...``."""
        if stage == "val" and not getattr(pl_module, "likelihood_ready", True):
            return  # (a DBM in its pretraining phase has no likelihood of its own yet)
        test = stage == "test"
        names = (
            f"{stage}/log_likelihood",
            "test/train_log_likelihood" if test else "train/log_likelihood",
            f"{stage}/log_partition",
            f"{stage}/log_partition_interval",
            f"{stage}/ais_effective_sample_size",
        )
        split, num_betas = ("test_data", self.test_num_betas) if test else ("val_data", self.num_betas)
        log_rank_zero_values(trainer, pl_module, names, lambda: self.evaluate(trainer, pl_module, split, num_betas))

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str, num_betas: int) -> Tensor:
        """``[held-out log-likelihood, train log-likelihood, log Z, half-width of the interval, ESS]``."""
        dm = trainer.datamodule
        held_out = getattr(dm, split, None)
        train = getattr(dm, "train_data", None)
        if not isinstance(held_out, Tensor) or not isinstance(train, Tensor):
            raise TypeError(f"AISLogLikelihood needs a data module exposing `train_data` and `{split}` tensors")
        held_out, train_part = held_out[: self.max_examples], train[: self.max_examples]
        estimate = estimate_log_partition(
            pl_module, num_chains=self.num_chains, betas=num_betas, data=train, seed=self.seed
        )
        return torch.tensor(
            [
                log_likelihood(pl_module, held_out, estimate).mean(),
                log_likelihood(pl_module, train_part, estimate).mean(),
                estimate.estimate,
                (estimate.upper - estimate.lower) / 2,
                estimate.effective_sample_size,
            ],
            dtype=torch.float64,
        )
