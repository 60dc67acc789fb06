"""Helpers shared by the data modules: arguments, downloads, reading files, checking data, loaders."""

from __future__ import annotations

import gzip
import os
import socket
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_ebm.errors import UserError
from lightning_ebm.utils import check_choices

#: seconds a download may wait on the network before giving up (urllib has no limit of its own)
DOWNLOAD_TIMEOUT_S = 60.0


# ----------------------------------------------------------------------------------------- arguments
def check_options(init: Callable[..., Any], arguments: Mapping[str, Any]) -> None:
    """:func:`lightning_ebm.utils.check_choices` for a data module's constructor, as a ``UserError``:
    every argument annotated ``Literal[...]`` must be one of its values (the command line checks
    these itself; this is the check for modules built in Python). ``arguments`` may hold more names
    (the constructor's ``locals()``)."""
    try:
        check_choices(init, dict(arguments))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def check_at_least(minimum: int, **values: int) -> None:
    """``UserError`` naming the first of ``values`` below ``minimum`` (sizes, batch sizes, counts)."""
    for name, value in values.items():
        if value < minimum:
            bound = "0 or more" if minimum == 0 else f"at least {minimum}"
            raise UserError(f"{name} must be {bound}, got {value}")


def check_holdout(n: int, batch_size: int, what: str, **held_out: int) -> None:
    """``UserError`` when holding out ``held_out`` (e.g. ``val_size=5000``) of ``n`` examples (``what``:
    ``CIFAR-10 training images``) leaves fewer than ``batch_size`` for training."""
    n_train = n - sum(held_out.values())
    if n_train >= batch_size:
        return
    sizes = " + ".join(f"{name} ({size})" for name, size in held_out.items())
    raise UserError(
        f"{sizes} {'leaves' if len(held_out) == 1 else 'leave'} {max(n_train, 0)} of the {n} {what} for "
        f"training, fewer than batch_size ({batch_size}); lower {' / '.join(held_out)} or batch_size"
    )


# ----------------------------------------------------------------------------------------- downloads
def short_reason(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to ``limit`` characters."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return reason if len(reason) <= limit else reason[:limit] + " ..."


def download(
    fetch: Callable[[], object], what: str, into: str, fix: str, timeout_s: float = DOWNLOAD_TIMEOUT_S
) -> None:
    """Run ``fetch()`` (a download) with a socket timeout of ``timeout_s`` seconds, so that an offline
    machine fails quickly instead of hanging; the previous default timeout is restored afterwards.

    Raises:
        UserError: ``downloading <what> into <into> failed (<reason>). <fix>`` for any failure
            (unreachable host, timeout, refused connection, bad checksum, ...); ``fix`` says how to get
            the files by hand.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        fetch()
    except Exception as exc:  # URLError, timeouts, torchvision's RuntimeError after all mirrors, checksums
        raise UserError(f"downloading {what} into {into} failed ({short_reason(exc)}). {fix}") from None
    finally:
        socket.setdefaulttimeout(previous)


# ----------------------------------------------------------------------------------------- reading
def permission_denied(what: str, path: str, blocked: str | None = None) -> UserError:
    """The error for data this process may not read: ``cannot read <what> <path> (permission denied)``
    (naming the directory ``blocked`` that bars the way to ``path``, if it is not ``path`` itself)."""
    where = "" if blocked in (None, path) else f": the directory {blocked} may not be entered"
    return UserError(
        f"cannot read {what} {path}{where} (permission denied): fix its permissions (this user must be able "
        f"to read {blocked or path}) or move the data somewhere readable"
    )


def read_error(what: str, path: str, exc: OSError) -> UserError:
    """The error for an ``OSError`` met reading ``path``: permission denied as such, else its reason."""
    if isinstance(exc, PermissionError):
        return permission_denied(what, path)
    return UserError(f"cannot read {what} {path}: {exc.strerror or exc}")


def first_unreadable(path: str) -> str | None:
    """The first of ``path``'s directories (from the root down) that this process may not enter, or
    ``path`` itself if it exists but may not be read (a directory: listed and entered); None when
    nothing bars reading ``path`` (also when it does not exist)."""
    target = os.path.abspath(path)
    for directory in map(str, reversed(Path(target).parents)):
        if not os.path.isdir(directory):
            return None
        if not os.access(directory, os.X_OK):
            return directory
    if not os.path.exists(target):
        return None
    return None if os.access(target, os.R_OK | (os.X_OK if os.path.isdir(target) else 0)) else target


def check_readable(what: str, *paths: str) -> None:
    """``UserError`` (permission denied) if one of ``paths`` exists but may not be read, or a directory on
    the way to it may not be entered; to call before reporting files as not found."""
    for path in paths:
        blocked = first_unreadable(path)
        if blocked is not None:
            raise permission_denied(what, path, blocked)


def find_file(directories: Sequence[str], names: Sequence[str]) -> str | None:
    """The first existing ``<directory>/<name>`` (directories in order, then names), or None."""
    for directory in directories:
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
    return None


def read_bytes(path: str, what: str, corrupt: Callable[[str, str], UserError]) -> bytes:
    """The uncompressed bytes of ``path`` (decompressed in memory if it ends in ``.gz``).

    Raises:
        UserError: ``corrupt(path, problem)`` for bad gzip data; ``cannot read <what> <path> ...`` when the
            file cannot be read (permission denied said as such).
    """
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise corrupt(path, f"bad gzip data: {exc}") from None
    except OSError as exc:
        raise read_error(what, path, exc) from None


# ----------------------------------------------------------------------------------------- checking data
def first_non_finite(values: Tensor | np.ndarray) -> tuple[int, ...] | None:
    """The index of the first NaN or infinite entry of ``values`` (row-major), or None if all are finite."""
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    bad = ~np.isfinite(array)
    if not bad.any():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), array.shape))


# ----------------------------------------------------------------------------------------- loaders
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
        if batch_size < 1:
            raise ValueError(f"TensorBatches needs a batch_size of at least 1, got {batch_size}")
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
        order = self._indices().to(self.tensors[0].device)
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


class InMemoryLoaders:
    """The loaders of a data module that holds its splits in memory as tensors, mixed into a
    ``LightningDataModule`` before it: shuffled training batches of ``batch_size`` per process, seeded
    by ``seed``; validation and test batches in order, of ``eval_batch_size`` (default
    ``4 * batch_size``); an empty split gives no loader (Lightning skips it); ``predict`` runs on the
    test split. Every loader is sharded by rank.

    A batch is sliced from :meth:`split_tensors`, by default ``(<split>_data, <split>_labels)``; the
    ``<split>_indices`` record, where a module sets them, the examples' positions in their source.
    On a GPU the tensors of a split are moved to it once, when its loader is made, and batches are
    sliced there (no host-to-device copy per batch).
    """

    train_data: Tensor | None = None
    val_data: Tensor | None = None
    test_data: Tensor | None = None
    train_labels: Tensor | None = None
    val_labels: Tensor | None = None
    test_labels: Tensor | None = None
    train_indices: Tensor | None = None
    val_indices: Tensor | None = None
    test_indices: Tensor | None = None

    def split_tensors(self, split: str) -> tuple[Tensor, ...]:
        """The tensors that the batches of ``split`` (``train``, ``val`` or ``test``) are sliced from."""
        x, y = getattr(self, f"{split}_data"), getattr(self, f"{split}_labels")
        assert x is not None and y is not None, "call setup() first"
        return x, y

    def _loader(self, split: str) -> TensorBatches | list:
        tensors = self.split_tensors(split)
        device = getattr(getattr(self.trainer, "strategy", None), "root_device", None)
        if device is not None and device.type == "cuda":  # the data on the GPU once: no copy per batch
            tensors = tuple(t.to(device) for t in tensors)
        rank, world = rank_and_world_size(self.trainer)
        if split == "train":
            return TensorBatches(
                *tensors, batch_size=self.batch_size, seed=self.seed, rank=rank, world_size=world,
                epoch_source=epoch_of(self.trainer),
            )  # fmt: skip
        n = tensors[0].shape[0]
        if n == 0:
            return []  # Lightning skips an empty list of loaders
        batch_size = min(getattr(self, "eval_batch_size", 4 * self.batch_size), n)
        return TensorBatches(
            *tensors, batch_size=batch_size, shuffle=False, drop_last=False, rank=rank, world_size=world
        )

    def train_dataloader(self) -> TensorBatches:
        return self._loader("train")

    def val_dataloader(self) -> TensorBatches | list:
        return self._loader("val")

    def test_dataloader(self) -> TensorBatches | list:
        return self._loader("test")

    def predict_dataloader(self) -> TensorBatches | list:
        return self.test_dataloader()
