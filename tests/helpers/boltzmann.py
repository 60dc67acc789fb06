"""Small Boltzmann-machine test fixtures: binary states, a known data set, a tensor data module, a
quiet trainer and a callback that stops a run as if it had been killed."""

from __future__ import annotations

import itertools

import lightning as L
import torch


def all_states(n: int) -> torch.Tensor:
    """Every binary vector of length ``n`` (itertools.product order), float64."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


def empirical_distribution(samples: torch.Tensor) -> torch.Tensor:
    """Frequencies of binary ``samples`` over :func:`all_states` of their length."""
    n = samples.shape[1]
    index = (samples.long() * (2 ** torch.arange(n - 1, -1, -1))).sum(1)  # itertools.product order
    return torch.bincount(index, minlength=2**n).double() / samples.shape[0]


BARS_AND_STRIPES = torch.tensor(
    sorted(
        {tuple(torch.tensor(rows).repeat_interleave(3).tolist()) for rows in itertools.product([0, 1], repeat=3)}
        | {tuple(torch.tensor(cols).repeat(3).tolist()) for cols in itertools.product([0, 1], repeat=3)}
    ),
    dtype=torch.float32,
)  # the 14 distinct 3x3 bars-and-stripes patterns (MacKay 2003)


class TensorData(L.LightningDataModule):
    """In-memory tensors; ``val_data`` may be a tuple ``(x, y)`` for labelled validation batches."""

    def __init__(self, data: torch.Tensor, batch_size: int, val_data: torch.Tensor | tuple | None = None) -> None:
        super().__init__()
        self.train_data = data
        self.val_data = val_data
        self.batch_size = batch_size

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.train_data, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        data = self.val_data if self.val_data is not None else self.train_data
        if isinstance(data, tuple):
            data = torch.utils.data.TensorDataset(*data)
        return torch.utils.data.DataLoader(data, batch_size=self.batch_size)


def trainer(max_epochs: int, **kwargs) -> L.Trainer:
    defaults = dict(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0,
    )  # fmt: skip
    return L.Trainer(max_epochs=max_epochs, **{**defaults, **kwargs})


class StopAfter(L.Callback):
    """Stops a run at the end of an epoch, as if it had been killed there."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True
