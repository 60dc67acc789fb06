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

The checkpoint writer also stamps every checkpoint with :data:`CHECKPOINT_FORMAT`
(:func:`check_checkpoint_format` refuses others), refuses to write parameters that became NaN or
infinite (:class:`NonFiniteCheckpointError`), turns a full disk into a short error naming the file,
and removes the temporary files that a killed write left behind (:func:`remove_stale_temporary_files`).
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
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

from lightning_ebm.errors import UserError

#: Layout of the checkpoints this lightning-ebm writes (state-dict names, hyper-parameters), stored
#: under :data:`FORMAT_KEY` in every checkpoint. Checkpoints without it are format 1 (lightning-ebm 0.1).
CHECKPOINT_FORMAT = 2
FORMAT_KEY = "lightning_ebm_format"
#: The lightning-ebm release that wrote each older format.
FORMAT_RELEASES = {1: "0.1"}
#: Errors of a full disk or an exhausted quota.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def check_checkpoint_format(checkpoint: Mapping[str, Any], path: Any = None) -> None:
    """Raise a :class:`UserError` naming the version when ``checkpoint`` (a loaded checkpoint dict)
    is not in this lightning-ebm's :data:`CHECKPOINT_FORMAT`.

    For ``load_from_checkpoint`` and the command line; ``path`` only names the file in the message.
    """
    found = checkpoint.get(FORMAT_KEY, 1)
    if found == CHECKPOINT_FORMAT:
        return
    what = f"{path}" if path is not None else "this checkpoint"
    if isinstance(found, int) and found in FORMAT_RELEASES:
        release = FORMAT_RELEASES[found]
        raise UserError(
            f"{what} was written by lightning-ebm {release} (checkpoint format {found}); this lightning-ebm reads "
            f"format {CHECKPOINT_FORMAT}: retrain, or evaluate it with lightning-ebm {release}"
        )
    raise UserError(
        f"{what} has checkpoint format {found!r}, which this lightning-ebm (format {CHECKPOINT_FORMAT}) cannot "
        "read: it was written by a newer lightning-ebm; upgrade lightning-ebm to use it"
    )


class NonFiniteCheckpointError(UserError):
    """The parameters to checkpoint hold NaN or infinite values: the checkpoint was not written."""


def non_finite_entries(state_dict: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold NaN or infinite values."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, Tensor)
        and (value.is_floating_point() or value.is_complex())
        and value.numel()
        and not bool(torch.isfinite(value).all())
    ]


def newest_checkpoint(directory: Path, exclude: Iterable[Path] = ()) -> Path | None:
    """The most recently written ``*.ckpt`` file of ``directory`` (None when there is none)."""
    excluded = {Path(p).resolve() for p in exclude}
    try:
        found = [p for p in directory.glob("*.ckpt") if p.is_file() and p.resolve() not in excluded]
    except OSError:
        return None
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def non_finite_message(names: list[str], step: Any, not_written: Any, last_good: Any) -> str:
    """The one-line error of a run whose parameters became non-finite."""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    good = f"the last good checkpoint is {last_good}" if last_good else "no earlier checkpoint was written"
    written = f"{not_written} was not written and " if not_written else ""
    return (
        f"training diverged: the model's parameters became NaN or infinite ({shown}) at step {step}; {written}"
        f"{good}. Fix: lower the learning rate, or add the divergence guard "
        "(--trainer.callbacks+=lightning_ebm.callbacks.DivergenceGuard), then resume from the last good checkpoint"
    )


def disk_full_message(path: Any, exc: OSError, previous: Any = None) -> str:
    """The one-line error of a write that failed on a full disk."""
    kept = f"; the previous checkpoint {previous} is intact" if previous else ""
    return (
        f"the disk is full: could not write {path} ({exc.strerror or exc}){kept}. Fix: free space on that disk, or "
        "write elsewhere (--trainer.logger.init_args.save_dir, --checkpoint.dirpath)"
    )


#: ``.<destination name>.<pid>.<random>.tmp``: the temporary files of :class:`AtomicCheckpointIO`.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<random>[a-z0-9_]{8})\.tmp$")
#: the same without the process id (written by lightning-ebm 0.1).
_OLD_TEMPORARY = re.compile(r"^\.(?P<name>.+\.ckpt)\.(?P<random>[a-z0-9_]{8})\.tmp$")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, but belongs to another user
        return True
    return True


def remove_stale_temporary_files(directory: Any, min_age_s: float = 600.0) -> list[Path]:
    """Remove the temporary files that :class:`AtomicCheckpointIO` left in ``directory`` when a write
    was killed (its own files only, recognised by their name); return the removed paths.

    A temporary file is stale when the process that wrote it (its id is in the name) is gone, or, for
    names without an id (older versions), when it was last modified ``min_age_s`` seconds ago or more.
    """
    directory = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    now = time.time()
    for path in entries:
        match = _TEMPORARY.match(path.name)
        try:
            if match:
                stale = not _process_alive(int(match.group("pid")))
            elif _OLD_TEMPORARY.match(path.name):
                stale = now - path.stat().st_mtime >= min_age_s
            else:
                continue
            if stale and path.is_file():
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with an atomic local write: temporary file in the destination's
    directory, ``fsync``, ``os.replace``, ``fsync`` of the directory. Remote paths (``s3://`` ...)
    go through Lightning's writer unchanged.

    Every checkpoint gets ``checkpoint["lightning_ebm_format"] =`` :data:`CHECKPOINT_FORMAT`. A
    checkpoint whose ``state_dict`` holds NaN or infinite floating-point values is not written
    (:class:`NonFiniteCheckpointError`), so that ``last.ckpt`` and the best checkpoint always keep
    usable weights; a full disk gives a :class:`UserError` naming the file (the previous checkpoint
    stays intact). The first write into a directory removes the temporary files that killed writes
    left there (:func:`remove_stale_temporary_files`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        checkpoint[FORMAT_KEY] = CHECKPOINT_FORMAT
        bad = non_finite_entries(checkpoint.get("state_dict") or {})
        local = storage_options is None and isinstance(get_filesystem(path), LocalFileSystem)
        if bad:
            previous = None
            if local:
                destination = Path(path)
                previous = destination if destination.is_file() else newest_checkpoint(destination.parent)
            step = checkpoint.get("global_step", "?")
            raise NonFiniteCheckpointError(non_finite_message(bad, step, path, previous))
        if not local:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        try:
            self._write(checkpoint, path)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                previous = path if path.is_file() else newest_checkpoint(path.parent)
                raise UserError(disk_full_message(path, exc, previous)) from exc
            raise

    def _write(self, checkpoint: dict[str, Any], path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        directory = path.parent.resolve()
        if directory not in self._cleaned:
            self._cleaned.add(directory)
            remove_stale_temporary_files(directory)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
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
            directory_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory_fd)
            finally:
                os.close(directory_fd)


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
