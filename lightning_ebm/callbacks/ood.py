"""Out-of-distribution detection against another data module (JEM's OOD benchmark)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from lightning_ebm.callbacks.utils import EvaluationCollector, check_scores, gather_ragged
from lightning_ebm.errors import UserError
from lightning_ebm.evaluation.ood import OOD_SCORES, OODScore, ood_auroc, ood_scores


class OODDetection(EvaluationCollector):
    """AUROC of telling the validation (or test) data from an out-of-distribution data set.

    For each score (``log_px``, ``max_prob``, ``neg_grad_norm``; see
    :mod:`lightning_ebm.evaluation.ood`) it logs ``<stage>/ood/<score>/auroc`` with in-distribution
    examples as positives. The in-distribution scores come from the run's own validation / test
    batches, the others from ``ood_data``'s validation loader (its test loader when it has no
    validation split), at most ``max_examples`` of each. Under DDP the processes share the work and
    gather the scores. It needs a model with ``energy(x)`` and ``logits(x)``.

    In a config the OOD data module is given like the run's own::

        - class_path: lightning_ebm.callbacks.OODDetection
          init_args:
            ood_data:
              class_path: lightning_ebm.datamodules.CelebADataModule
              init_args: {data_dir: data, image_size: 32}

    Args:
        ood_data: the out-of-distribution data module (its batches are ``x`` or ``(x, ...)``, shaped
            like the in-distribution examples and in the same value range).
        scores: which scores to evaluate.
        every_n_epochs: validation epochs between evaluations (the last epoch always counts).
        max_examples: examples of each side scored at most.
    """

    def __init__(
        self,
        ood_data: L.LightningDataModule,
        scores: Sequence[OODScore] = OOD_SCORES,
        every_n_epochs: int = 1,
        max_examples: int = 2000,
    ) -> None:
        self.ood_data = ood_data
        self.scores = check_scores("OODDetection", scores, ood_scores, OOD_SCORES)
        self.every_n_epochs = every_n_epochs
        self.max_examples = max_examples
        self.last: dict[str, float] = {}
        self._collected: dict[str, list[Tensor]] = {}
        self._count = 0
        self._active = False
        self._ready = False

    def _start(self, active: bool) -> None:
        self._active, self._count = active, 0
        self._collected = {s: [] for s in self.scores}

    def _score(self, pl_module: L.LightningModule, x: Tensor) -> dict[str, Tensor]:
        if not hasattr(pl_module, "logits"):
            raise UserError(
                f"OODDetection needs a classifier-EBM with logits(x) (e.g. JEM); {type(pl_module).__name__} has none"
            )
        return {s: ood_scores(pl_module.energy, pl_module.logits, x, s).float() for s in self.scores}

    def _collect(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        limit = -(-self.max_examples // trainer.world_size)
        if not self._active or self._count >= limit:
            return
        x = pl_module.batch_data(batch)[: limit - self._count]
        for name, value in self._score(pl_module, x).items():
            self._collected[name].append(value)
        self._count += x.shape[0]

    def _ood_batches(self) -> Any:
        if not self._ready:
            self.ood_data.prepare_data()
            self.ood_data.setup("validate")
            self._ready = True
        loader = self.ood_data.val_dataloader()
        if not loader:
            self.ood_data.setup("test")
            loader = self.ood_data.test_dataloader()
        return loader

    def _ood_scores(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Tensor]:
        rank, world = trainer.global_rank, trainer.world_size
        limit = -(-self.max_examples // world)
        collected: dict[str, list[Tensor]] = {s: [] for s in self.scores}
        count = 0
        for index, batch in enumerate(self._ood_batches()):
            if count >= limit:
                break
            if index % world != rank:  # each process its share of the batches
                continue
            x = pl_module.batch_data(batch)[: limit - count].to(pl_module.device)
            for name, value in self._score(pl_module, x).items():
                collected[name].append(value)
            count += x.shape[0]
        empty = torch.zeros(0, device=pl_module.device)
        return {s: torch.cat(v) if v else empty for s, v in collected.items()}

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._active or self._count == 0:
            return
        self._active = False
        outside = self._ood_scores(trainer, pl_module)
        self.last = {}
        for score in self.scores:
            inside = gather_ragged(trainer, torch.cat(self._collected[score]))
            out = gather_ragged(trainer, outside[score])
            if out.numel() == 0:
                raise UserError("OODDetection: the OOD data module yielded no examples; check its data_dir and splits")
            self.last[f"{stage}/ood/{score}/auroc"] = ood_auroc(inside, out)
        for name, value in self.last.items():
            pl_module.log(name, value)
        self._collected = {}
