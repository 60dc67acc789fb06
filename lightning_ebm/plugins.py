"""Trainer plugins that the command line installs: atomic checkpoints and batch norm synchronised
across processes on every device (CPU too).

* :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file next to its destination,
  flushes it to disk and renames it over the destination, so that a run killed while writing a
  checkpoint leaves the previous one intact. Lightning's own writer stages the file in the system's
  temporary directory and moves it from there, which is a copy (not a rename) whenever the
  checkpoint directory is on another file system (a cluster's shared disk), and does not flush it.
* :class:`SyncBatchNorm` is a synchronised batch norm that also runs on CPU processes (gloo), which
  :class:`torch.nn.SyncBatchNorm` refuses: in training mode under DDP the batch statistics are
  those of the global batch, with their gradient flowing to every process, so a step of ``N``
  processes with ``B`` examples each equals a one-process step on the ``N B`` examples, and the
  running statistics are the same on every process.
  :class:`SyncBatchNormPlugin` converts a model's batch norms to it; the command line uses it for
  ``--trainer.sync_batchnorm true`` (Lightning's own conversion refuses CPU tensors).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm, _BatchNormXd
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with an atomic local write: temporary file in the destination's
    directory, ``fsync``, ``os.replace``, ``fsync`` of the directory. Remote paths (``s3://`` ...)
    go through Lightning's writer unchanged."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)  # mkstemp's file is private; a checkpoint is not
            os.replace(temporary, path)
        except BaseException:
            with suppress(OSError):
                os.unlink(temporary)
            raise
        with suppress(OSError):  # make the rename itself durable
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)


class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of every process's batch together.

    In training mode with a process group (gloo on CPU, NCCL on GPU) the mean and the biased
    variance of each channel come from two differentiable all-reduces (sum and count, then the
    centred sum of squares), so the gradient of every process's loss reaches every process's inputs
    and a step of ``N`` processes with ``B`` examples each equals one process's step on the ``N B``
    examples; the running statistics get the unbiased variance of the global batch, the same on every
    process. Otherwise (evaluation, one process) it is plain batch norm. Unlike
    :class:`torch.nn.SyncBatchNorm` it runs on CPU, and on any number of dimensions.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (batch, channels, ...), got {input.dim()}D")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        from torch.distributed.nn.functional import all_reduce

        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, channels] + [1] * (input.dim() - 2)
        local = torch.cat([input.sum(dims), input.new_full((1,), input.numel() / channels)])
        total = all_reduce(local)
        count = total[-1].detach()
        mean = total[:channels] / count
        centred = input - mean.reshape(shape)
        variance = all_reduce(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():
                unbiased = variance * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), factor)
        output = centred * torch.rsqrt(variance + self.eps).reshape(shape)
        if self.affine:
            output = output * self.weight.reshape(shape) + self.bias.reshape(shape)
        return output

    @classmethod
    def convert(cls, module: nn.Module, to: type[_BatchNorm] | None = None) -> nn.Module:
        """``module`` with every batch norm replaced by this class (or, with ``to``, every one of this
        class by a ``to``), sharing its parameters and buffers (torch's ``convert_sync_batchnorm``)."""
        to = to or cls
        output = module
        replace = not isinstance(module, cls) if to is cls else isinstance(module, cls)
        if isinstance(module, _BatchNorm) and replace:
            output = to(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            if module.affine:
                output.weight = module.weight
                output.bias = module.bias
            output.running_mean = module.running_mean
            output.running_var = module.running_var
            output.num_batches_tracked = module.num_batches_tracked
            output.training = module.training
        for name, child in module.named_children():
            output.add_module(name, cls.convert(child, to))
        return output


class SyncBatchNormPlugin(TorchSyncBatchNorm):
    """Lightning's ``sync_batchnorm`` with :class:`SyncBatchNorm`, so that it also runs on CPU
    processes: ``Trainer(plugins=[SyncBatchNormPlugin()])``, or ``--trainer.sync_batchnorm true`` on
    the command line. On one process it changes nothing (Lightning applies it under DDP only)."""

    def apply(self, model: nn.Module) -> nn.Module:
        return SyncBatchNorm.convert(model)

    def revert(self, model: nn.Module) -> nn.Module:
        """Back to plain batch norm (Lightning calls it when DDP tears down)."""
        return SyncBatchNorm.convert(model, _BatchNormXd)
