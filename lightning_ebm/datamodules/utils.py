"""Loading helpers shared by the data modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor


def rank_and_world_size(trainer: Any) -> tuple[int, int]:
    """``(global rank, world size)`` of a data module's trainer, ``(0, 1)`` without one."""
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


def epoch_of(trainer: Any) -> Callable[[], int] | None:
    """For a training loader: a function giving the epoch the trainer is running (None without one)."""
    return (lambda: int(getattr(trainer, "current_epoch", 0))) if trainer is not None else None


class TensorBatches:
    """Shuffled mini-batches of in-memory tensors, without per-example collation.

    A ``DataLoader`` over a ``TensorDataset`` calls ``__getitem__`` once per example and stacks the
    results; for small examples (2D points, tabular rows) that costs more than the training step.
    This iterable indexes whole batches at once. It shards the data by rank itself (each rank sees a
    disjoint slice of every epoch's permutation, as ``DistributedSampler`` would), draws each epoch's
    permutation from ``(seed, epoch)`` so that runs are reproducible, and saves its position so that
    a resumed run continues mid-epoch with the same batches.

    Args:
        tensors: tensors with the same first dimension; a batch is a tuple of slices of them (or the
            single slice when there is one tensor).
        batch_size: examples per batch and rank.
        shuffle: draw a new permutation each epoch.
        drop_last: drop the last incomplete batch.
        seed: base seed of the permutations.
        rank: index of this process; ``world_size`` the number of processes.
        epoch_source: gives the epoch of the first pass when it starts (:func:`epoch_of` the trainer);
            later passes count on from it, and without it from 0. A run resumed from a checkpoint
            written at the end of an epoch then continues with the next epoch's permutation:
            Lightning restores no loader state at an epoch boundary.
    """

    def __init__(
        self,
        *tensors: Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_source: Callable[[], int] | None = None,
    ) -> None:
        if not tensors or any(t.shape[0] != tensors[0].shape[0] for t in tensors):
            raise ValueError("TensorBatches needs tensors with the same, non-zero first dimension")
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.epoch_source = epoch_source
        self._started = False
        self._pending: tuple[int, int] | None = None  # (epoch, first batch) after a restore
        self._yielded = 0

    def _indices(self) -> Tensor:
        n = self.tensors[0].shape[0]
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        per_rank = n // self.world_size if self.drop_last else -(-n // self.world_size)
        if not self.drop_last and per_rank * self.world_size > n:  # pad like DistributedSampler
            order = torch.cat([order, order[: per_rank * self.world_size - n]])
        return order[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __len__(self) -> int:
        n = self.tensors[0].shape[0]
        per_rank = n // self.world_size if self.drop_last else -(-n // self.world_size)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[Tensor | tuple[Tensor, ...]]:
        if self._pending is not None:
            (self.epoch, start), self._pending = self._pending, None
        elif not self._started and self.epoch_source is not None:
            self.epoch, start = self.epoch_source(), 0  # the first pass of a run, maybe a resumed one
        else:
            self.epoch += int(self._started)
            start = 0
        self._started = True
        self._yielded = start
        order = self._indices()
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            self._yielded = b + 1
            batch = tuple(t[idx] for t in self.tensors)
            yield batch[0] if len(batch) == 1 else batch

    # Lightning saves and restores these for iterables that define them (mid-epoch resume).
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, done = state["epoch"], state["batches_done"]
        self._pending = (epoch + 1, 0) if done >= len(self) else (epoch, done)
        self._started = True


class LabelledTensorLoaders:
    """The loaders of a data module that holds its splits in memory as ``<split>_data`` and
    ``<split>_labels`` tensors (``train``, ``val``, ``test``): shuffled training batches of
    ``batch_size`` per process, seeded by ``seed``; validation and test batches in order, of
    ``eval_batch_size`` (default ``4 * batch_size``); an empty split gives no loader (Lightning skips
    it); ``predict`` runs on the test split. Every loader is sharded by rank. Mixed into a
    ``LightningDataModule`` before it."""

    def train_dataloader(self) -> TensorBatches:
        assert self.train_data is not None and self.train_labels is not None, "call setup() first"
        rank, world = rank_and_world_size(self.trainer)
        return TensorBatches(
            self.train_data, self.train_labels, batch_size=self.batch_size, seed=self.seed, rank=rank,
            world_size=world, epoch_source=epoch_of(self.trainer),
        )  # fmt: skip

    def _eval_loader(self, x: Tensor | None, y: Tensor | None) -> TensorBatches | list:
        assert x is not None and y is not None, "call setup() first"
        if x.shape[0] == 0:
            return []  # Lightning skips an empty list of loaders
        rank, world = rank_and_world_size(self.trainer)
        batch_size = min(getattr(self, "eval_batch_size", 4 * self.batch_size), x.shape[0])
        return TensorBatches(x, y, batch_size=batch_size, shuffle=False, drop_last=False, rank=rank, world_size=world)

    def val_dataloader(self) -> TensorBatches | list:
        return self._eval_loader(self.val_data, self.val_labels)

    def test_dataloader(self) -> TensorBatches | list:
        return self._eval_loader(self.test_data, self.test_labels)

    def predict_dataloader(self) -> TensorBatches | list:
        return self.test_dataloader()
