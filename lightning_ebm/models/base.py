"""The contract that every method of lightning-ebm honours.

Callbacks (sample grids, energy landscapes, metrics) and the evaluation code use only what this
module defines, never a method's internals, so that any method can be judged by any metric.
"""

from __future__ import annotations

import inspect
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn

from lightning_ebm.errors import UserError
from lightning_ebm.fused import (
    CapturedUpdate,
    eager_optimizer_states,
    fused_step_unavailable,
    kernel_flags,
    make_capturable,
    to_channels_last,
    warn_fallback,
)
from lightning_ebm.nn.base import module_spec
from lightning_ebm.optim import Schedule, build_schedule, check_factories, to_spec
from lightning_ebm.plugins import CHECKPOINT_FORMAT, FORMAT_KEY, check_checkpoint_format
from lightning_ebm.rng import rng_states, seed_for_rank, set_rng_states
from lightning_ebm.utils import check_choices

_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


class NetworkModule(L.LightningModule):
    """A LightningModule whose networks are constructor arguments and whose checkpoints rebuild them.

    The base of every method (:class:`EnergyBasedModel`) and of the supervised helpers (the MNIST
    classifier of mode counting): :meth:`save_hyperparameters` stores each injected
    :class:`lightning_ebm.nn.Network` as a ``{"class_path", "init_args"}`` spec, so that
    ``Module.load_from_checkpoint(path)`` needs no other argument, and the command line accepts any
    subclass as ``model``.
    """

    def save_hyperparameters(self, *args: Any, ignore: Any = None, frame: Any = None, logger: bool = True) -> None:
        """Lightning's ``save_hyperparameters``, plus specs of the injected networks and optimisers,
        and a check of the ``Literal`` choices of the constructor.

        Networks passed as constructor arguments are stored as ``{"class_path", "init_args"}``
        specs (:class:`lightning_ebm.nn.Network` records them), optimiser and schedule callables
        likewise (:func:`lightning_ebm.optim.to_spec`), so that ``load_from_checkpoint(path)`` can
        rebuild them; a model built by the command line already has them from its config.
        """
        frame = frame if frame is not None else inspect.currentframe().f_back  # type: ignore[union-attr]
        with warnings.catch_warnings():  # networks are stored as specs below, not pickled
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            super().save_hyperparameters(*args, ignore=ignore, frame=frame, logger=logger)
        hparams = self._hparams
        arguments = {k: v for k, v in hparams.items() if not k.startswith("_")}
        check_choices(type(self).__init__, arguments)
        check_factories(type(self).__init__, arguments)
        if "_instantiator" in hparams:
            return
        rebuilt = False
        for key, value in list(hparams.items()):
            if isinstance(value, nn.Module):
                spec = module_spec(value)
                if spec is None:
                    warnings.warn(
                        f"{key} ({type(value).__name__}) is not a lightning_ebm.nn.Network, so checkpoints "
                        f"cannot rebuild it: pass {key}=... to load_from_checkpoint",
                        stacklevel=2,
                    )
                    del hparams[key]
                else:
                    hparams[key] = spec
                    rebuilt = True
            elif callable(value):  # an optimiser or schedule
                hparams[key] = to_spec(value)
        if rebuilt:
            hparams["_instantiator"] = _INSTANTIATOR
        self._set_hparams(hparams)
        self._hparams_initial = type(hparams)(dict(hparams))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[FORMAT_KEY] = CHECKPOINT_FORMAT

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_checkpoint_format(checkpoint)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``; a checkpoint of an older lightning-ebm that this version
        cannot rebuild gives an error naming the version instead of a deep traceback."""
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised unless the checkpoint's format explains it
            try:
                checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
            except Exception:  # noqa: BLE001 - the original error is the one to report
                raise exc from None
            check_checkpoint_format(checkpoint, checkpoint_path)
            raise


def share_out(pool: Tensor, world: int, granule: int = 1) -> Tensor:
    """``pool`` (states along dim 0) shared out to ``world`` processes: ``(world, share, ...)`` with every
    share the same size, a multiple of ``granule``, contiguous in the pool (so a state at pool index
    ``p`` keeps the label ``p % granule`` it had in its own process's buffer of a multiple of
    ``granule`` slots). The few states that do not divide evenly are left out; with fewer states than
    processes need, the pool is repeated."""
    n = pool.shape[0]
    share = max(granule, n // (world * granule) * granule)
    index = (torch.arange(world).unsqueeze(1) * share + torch.arange(share)) % n
    return pool[index]


class EnergyBasedModel(NetworkModule, ABC):
    """Base class of every method: an energy-based model of data shaped ``data_shape``.

    The contract:

    * ``energy(x) -> Tensor[batch]``: the energy of each example, lower = more probable
      (``p(x) = exp(-energy(x)) / Z``). For latent-variable models it is the free energy
      ``-log sum_h exp(-E(x, h))``.
    * ``sample(num_samples) -> Tensor``: samples shaped ``(num_samples, *data_shape)`` on the
      module's device, drawn with the method's own sampler (a generator, Gibbs or Langevin chains).
    * ``Method.load_from_checkpoint(path)`` with no other argument: the hyper-parameters, including
      the networks injected as constructor arguments, are saved in every checkpoint.
    * A batch is a tensor ``x`` or a tuple/list whose first element is ``x`` (labels after it);
      :meth:`batch_data` extracts ``x``.
    * Methods that update several networks use manual optimisation and log, under ``train/``, every
      network's loss, the mean energies of data and of samples and each network's gradient norm.

    Args:
        data_shape: shape of one example, e.g. ``[2]`` for 2D toys or ``[3, 64, 64]``.
    """

    #: Set by methods whose backward passes each reach only some of their networks (two players
    #: updated in turn): under DDP the reducer must then look for unused parameters at each backward.
    ddp_find_unused_parameters: bool = False

    def __init__(self, data_shape: Sequence[int], fused_step: bool = False) -> None:
        super().__init__()
        self.data_shape = tuple(int(d) for d in data_shape)
        self.fused_step = bool(fused_step)
        self._captured: CapturedUpdate | None = None

    # ------------------------------------------------------------------ the contract
    @abstractmethod
    def energy(self, x: Tensor) -> Tensor:
        """Energy of each example, shape ``(batch,)``; lower = more probable."""

    @abstractmethod
    def sample(self, num_samples: int) -> Tensor:
        """``num_samples`` samples of the model, shape ``(num_samples, *data_shape)``."""

    @staticmethod
    def batch_data(batch: Tensor | Sequence[Any]) -> Tensor:
        """The data ``x`` of a batch that is either ``x`` or ``(x, y, ...)``."""
        if isinstance(batch, Tensor):
            return batch
        if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
            return batch[0]
        raise TypeError(f"a batch must be a tensor or a tuple/list starting with one, got {type(batch).__name__}")

    # ------------------------------------------------------------------ shared helpers
    @property
    def should_log_step(self) -> bool:
        """True on the training steps whose metrics the logger writes (every ``log_every_n_steps``).

        ``self.log`` costs about a millisecond per call, as much as a whole step of a small model,
        so training steps build and log their metrics only when they will be written.
        """
        trainer = self._trainer
        if trainer is None:
            return False
        try:
            return bool(trainer._logger_connector.should_update_logs)
        except AttributeError:  # a Lightning version without it: log every step
            return True

    @staticmethod
    def grad_norm(parameters: Iterable[nn.Parameter]) -> Tensor:
        """Global L2 norm of the gradients of ``parameters``."""
        grads = [p.grad.detach().flatten() for p in parameters if p.grad is not None]
        return torch.linalg.vector_norm(torch.cat(grads)) if grads else torch.zeros(())

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Average the ``.grad`` of ``parameters`` over the processes (one all-reduce), for updates
        whose gradients are written in closed form rather than by ``manual_backward`` (which DDP
        averages itself). Nothing to do on one process."""
        if self._trainer is None or self.trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch._utils._flatten_dense_tensors(grads)
        torch.distributed.all_reduce(flat)
        flat.div_(self.trainer.world_size)
        for grad, average in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            grad.copy_(average)

    def log_train_metrics(self, metrics: dict[str, Tensor], prog_bar: Sequence[str] = ()) -> None:
        """Log ``metrics`` as ``train/<name>`` for this step (call it only when :attr:`should_log_step`)."""
        for name, value in metrics.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False, prog_bar=name in prog_bar)

    # ------------------------------------------------------------------ training: one update per batch
    #: Training metrics shown in the progress bar.
    train_progress_bar: tuple[str, ...] = ()

    def update(self, batch: Any, key: tuple, log: bool) -> dict[str, Tensor]:
        """One training update on ``batch``: every player's loss, backward pass and optimiser step, the
        chains' and buffers' moves. Written once per method and run as is by both paths: eagerly
        (through Lightning's optimisers and ``manual_backward``), or captured and replayed as a CUDA
        graph (``fused_step``, :mod:`lightning_ebm.fused`). So it must keep every tensor it carries
        from step to step in place, never read a value back to the host, and leave Python-side
        bookkeeping (counters, schedules) to :meth:`after_update`. ``key`` is :meth:`update_key`'s
        answer for this batch; with ``log`` it returns the metrics to log, as tensors."""
        raise NotImplementedError(f"{type(self).__name__} has no update()")

    def update_key(self) -> tuple:
        """What selects this batch's variant of :meth:`update` (e.g. whether the generator is due)."""
        return ()

    def after_update(self) -> None:
        """Host-side bookkeeping after each update: one step of every schedule by default."""
        self.step_schedules()

    def host_metrics(self) -> dict[str, Any]:
        """Training metrics known on the host (learning rates), logged with the update's."""
        return {}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        log = self.should_log_step
        key = self.update_key()
        update = self._captured if self._captured is not None else self.update
        device = self.device.type
        if torch.is_autocast_enabled(device):  # mixed precision: no cast cached across the players' steps
            with torch.autocast(device, dtype=torch.get_autocast_dtype(device), cache_enabled=False):
                metrics = update(batch, key, log)
        else:
            metrics = update(batch, key, log)
        if self._captured is not None:
            self.count_optimizer_steps(self._captured.last_steps)
        self.after_update()
        if log:
            if self._captured is not None:  # the graph's outputs: the next replay overwrites them
                metrics = {name: value.clone() for name, value in metrics.items()}
            self.log_train_metrics({**metrics, **self.host_metrics()}, prog_bar=self.train_progress_bar)

    def count_optimizer_steps(self, steps: int) -> None:
        """Count ``steps`` optimiser steps as Lightning's optimiser wrappers count theirs (``global_step``:
        ``max_steps``, checkpoints every n steps, resumed runs): the fast path steps the optimisers
        themselves."""
        optimizers = self.optimizers()
        wrapper = optimizers[0] if isinstance(optimizers, list) else optimizers
        for _ in range(steps):
            wrapper._on_before_step()
            wrapper._on_after_step()

    def update_optimizers(self) -> list:
        """The optimisers :meth:`update` steps, in :meth:`configure_optimizers`'s order: Lightning's
        wrappers on the eager path, the optimisers themselves on the fast path."""
        optimizers = self.optimizers(use_pl_optimizer=self._captured is None)
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def backward_loss(self, loss: Tensor) -> None:
        """``loss.backward()``: through Lightning (DDP, precision) eagerly, plainly on the fast path."""
        if self._captured is None:
            self.manual_backward(loss)
        else:
            loss.backward()

    def setup_fused_step(self) -> None:
        """Start the fast path when ``fused_step`` is set and the trainer allows it (else say why)."""
        if self._captured is not None:
            self._captured.close()
        self._captured = None
        if not self.fused_step:
            return
        reason = fused_step_unavailable(self._trainer)
        if reason is not None:
            if self.trainer.is_global_zero:
                warn_fallback(reason)
            return
        optimizers = self.optimizers(use_pl_optimizer=False)
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        flags = kernel_flags(optimizers)
        reason = make_capturable(optimizers)  # (learning rates on the device, changed in place by the schedules)
        if reason is not None:
            if self.trainer.is_global_zero:
                warn_fallback(reason)
            return
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for the fp32 matrix products
            if any(p.dim() == 4 for p in self.parameters()):
                to_channels_last(self, optimizers)  # the layout of the fastest convolution kernels
        self._captured = CapturedUpdate(self.update, optimizers, modules=[self], kernel_flags=flags)

    def invalidate_fused_step(self) -> None:
        """Drop captured graphs after state tensors were replaced (a checkpoint or snapshot restored), and
        prepare the optimisers again: a restored optimiser state brings its own flags and rates."""
        if self._captured is None:
            return
        self._captured.reset()
        reason = make_capturable(self._captured.optimizers, self._captured.kernel_flags)
        if reason is not None:  # (the probe passed at the start: only a changed optimiser gets here)
            self._captured.close()
            self._captured = None
            warn_fallback(reason)

    # ------------------------------------------------------------------ optimisers and schedules
    optimizer_steps_per_batch: float = 1.0  # optimiser steps a batch makes on average (max_steps counts them)

    @staticmethod
    def with_schedules(players: Sequence[tuple[torch.optim.Optimizer, Any]]) -> tuple[list, list]:
        """``configure_optimizers``'s answer for ``(optimizer, schedule)`` pairs, one per player: each
        optimiser with its own copy of its injected schedule (None: a constant :class:`Schedule`, so that
        scheduler ``i`` is optimiser ``i``'s). Lightning keeps the schedules' states in checkpoints; the
        method steps them itself (manual optimisation) with :meth:`step_schedules`."""
        optimizers = [optimizer for optimizer, _ in players]
        schedulers = [build_schedule(Schedule if s is None else s, optimizer) for optimizer, s in players]
        return optimizers, [{"scheduler": s, "interval": "step"} for s in schedulers]

    def schedulers(self) -> list:
        """The schedulers of :meth:`configure_optimizers`, in its order (``[]`` for none)."""
        schedulers = self.lr_schedulers()
        return schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []

    def step_schedules(self, indices: Sequence[int] | None = None) -> None:
        """One step of the schedules of the players updated in this batch (all by default)."""
        schedulers = self.schedulers()
        for i in range(len(schedulers)) if indices is None else indices:
            scheduler = schedulers[i]
            if scheduler._step_count > 1:  # (torch warns of the order of the calls at a first step only)
                scheduler.step()
                continue
            with warnings.catch_warnings():  # (a first step: it warns if its player did not update yet)
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                scheduler.step()

    def training_batches(self) -> int:
        """Batches of the whole run: ``max_epochs`` x batches, or ``max_steps`` (which counts optimiser
        steps) over :attr:`optimizer_steps_per_batch` when that ends the run first."""
        trainer = self.trainer
        batches = trainer.estimated_stepping_batches
        if trainer.max_steps != -1 and batches == trainer.max_steps:
            batches = math.ceil(trainer.max_steps / self.optimizer_steps_per_batch)
        return max(1, int(batches))

    def schedule_phase(self, index: int) -> tuple[int, int]:
        """``(steps, first epoch)`` of the phase in which scheduler ``index`` runs: the whole run by
        default; a greedy layer's epochs for the layers of a stack."""
        return self.training_batches(), 0

    def on_train_start(self) -> None:
        """The run's own length sets the clock of every :class:`~lightning_ebm.optim.Schedule`, also
        when it resumes a checkpoint written by a run of another length; the current rates follow."""
        for i, scheduler in enumerate(self.schedulers()):
            if isinstance(scheduler, Schedule):
                steps, first = self.schedule_phase(i)
                scheduler.set_phase(steps)
                scheduler.set_epoch(self.current_epoch - first)
        self.setup_fused_step()

    def on_train_epoch_start(self) -> None:
        """Each :class:`~lightning_ebm.optim.Schedule` learns the epoch (step decay, momentum)."""
        for i, scheduler in enumerate(self.schedulers()):
            if isinstance(scheduler, Schedule):
                scheduler.set_epoch(self.current_epoch - self.schedule_phase(i)[1])

    def on_fit_start(self) -> None:
        """Under DDP, give each process its own random stream (a resumed run restores its own instead)."""
        if self.trainer.world_size > 1 and self.trainer.ckpt_path is None:
            seed_for_rank(self.trainer.global_rank)

    # ------------------------------------------------------------------ per-process state in checkpoints
    def per_rank_state(self) -> dict[str, Tensor]:
        """This process's own state by name: persistent chains, replay buffers (none by default).

        Such state must not be a registered buffer (DDP would overwrite it with rank 0's every
        step). Every process's tensors are gathered into the checkpoint, ``(world_size, *shape)``
        each, and each process gets its own slice back on resume (:meth:`load_per_rank_state`).
        Every process must return the same names and shapes.
        """
        return {}

    def load_per_rank_state(self, state: dict[str, Tensor]) -> None:
        """Take back this process's state saved by :meth:`per_rank_state` (tensors on the model's device)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the random number generators' states and the per-process state of every process, so
        that a resumed run continues the same run (every process calls this hook; rank 0 writes)."""
        super().on_save_checkpoint(checkpoint)
        distributed = self._trainer is not None and self.trainer.world_size > 1 and torch.distributed.is_initialized()
        states = rng_states()
        checkpoint["rng_states"] = states
        if distributed:
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, states)
            checkpoint["rng_states_per_rank"] = gathered
        per_rank = {}
        for name, value in self.per_rank_state().items():
            per_rank[name] = (self.all_gather(value) if distributed else value.unsqueeze(0)).detach().cpu()
        if per_rank:
            checkpoint["per_rank_state"] = per_rank
        flags = self._captured.kernel_flags if self._captured is not None else None
        if flags is not None and "optimizer_states" in checkpoint:  # a checkpoint resumes on either path
            eager_optimizer_states(checkpoint["optimizer_states"], flags)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        per_rank = checkpoint.get("rng_states_per_rank")
        rank, world = self._rank_and_world()
        if per_rank is not None and world == len(per_rank):
            set_rng_states(per_rank[rank])
        elif "rng_states" in checkpoint:  # (saved by another number of processes: each its own stream again)
            set_rng_states(checkpoint["rng_states"])
            if world > 1:
                seed_for_rank(rank)
        self._per_rank_state_from_checkpoint = checkpoint.get("per_rank_state")
        self._restore_per_rank_state()

    def setup(self, stage: str) -> None:
        """Configure DDP for the method before the strategy wraps the model, and hand each process
        its per-process state from the checkpoint being resumed (the rank is known only now)."""
        self._check_data_shape()
        strategy = self.trainer.strategy
        if self.ddp_find_unused_parameters and isinstance(strategy, DDPStrategy):
            strategy._ddp_kwargs.setdefault("find_unused_parameters", True)
        self._restore_per_rank_state()

    def _check_data_shape(self) -> None:
        """A data module whose examples do not hold as many values as the model's is a config mistake:
        say so before the first batch fails deep inside a network with a shape error."""
        shape = getattr(self.trainer.datamodule, "data_shape", None)
        if shape is None or math.prod(shape) == math.prod(self.data_shape):
            return
        raise UserError(
            f"the data module's examples are shaped {list(shape)} but the model's data_shape is "
            f"{list(self.data_shape)}: set the model's data_shape (and its networks' input and output sizes) "
            f"to {list(shape)}"
        )

    def _rank_and_world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)

    #: Per-process state saved by one number of processes and resumed on another is shared out in
    #: equal shares of a multiple of this many states (JEM: the classes that label its buffer's slots).
    per_rank_granule: int = 1

    def _restore_per_rank_state(self) -> None:
        """This process's slice of the saved per-process state: process ``r`` of ``N`` takes slice ``r``;
        saved by another number of processes, the states are pooled and shared out again
        (:func:`share_out`), every process the same number (DDP gathers them at each checkpoint)."""
        saved = getattr(self, "_per_rank_state_from_checkpoint", None)
        if not saved:
            return
        rank, world = self._rank_and_world()
        mine = {}
        for name, value in saved.items():
            if value.shape[0] != world:
                value = share_out(value.reshape(-1, *value.shape[2:]), world, self.per_rank_granule)
            mine[name] = value[rank].to(self.device).clone()
        self.load_per_rank_state(mine)
        self.invalidate_fused_step()

    # ------------------------------------------------------------------ evaluation: validate, test, predict
    #: Evaluation metrics shown in the progress bar.
    progress_bar_metrics: tuple[str, ...] = ()

    @torch.no_grad()
    def evaluation_metrics(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """The metrics of one held-out batch, the same in ``validate`` (logged as ``val/<name>``) and
        ``test`` (``test/<name>``): by default the mean energy of the data (``energy_data``) and of as
        many samples (``energy_samples``), and for methods whose sampler runs Metropolis-adjusted chains
        (they set ``last_acceptance_rate`` in ``sample``) the acceptance rate (``mcmc_acceptance_rate``)."""
        x = self.batch_data(batch)
        self.last_acceptance_rate = None
        metrics = {"energy_data": self.energy(x).mean(), "energy_samples": self.energy(self.sample(x.shape[0])).mean()}
        if self.last_acceptance_rate is not None:
            metrics["mcmc_acceptance_rate"] = self.last_acceptance_rate
        return metrics

    def log_evaluation(self, stage: str, batch: Any, batch_idx: int) -> None:
        """Log :meth:`evaluation_metrics` under ``stage/`` (averaged over batches and processes)."""
        size = self.batch_data(batch).shape[0]
        for name, value in self.evaluation_metrics(batch, batch_idx).items():
            prog_bar = name in self.progress_bar_metrics
            self.log(f"{stage}/{name}", value, sync_dist=True, batch_size=size, prog_bar=prog_bar)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log_evaluation("val", batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log_evaluation("test", batch, batch_idx)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The energy of each example of the batch."""
        return self.energy(self.batch_data(batch))
