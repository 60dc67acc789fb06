"""The command line's checkpoint callback: the last checkpoint at every checkpointing epoch, and the
best one, where "best" may be judged by a metric that a callback computes only every few epochs
(FID, the AIS log-likelihood, mode counts); never a checkpoint of NaN weights, and a last checkpoint
when the run is stopped by SIGTERM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from lightning_ebm.plugins import NonFiniteCheckpointError, newest_checkpoint, non_finite_entries, non_finite_message


class PeriodicMetricCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with a last checkpoint that is always current, and a monitored
    metric compared only on the epochs it is logged.

    Two behaviours of Lightning's own callback (2.6) would break resuming:

    * it rewrites ``last.ckpt`` only when it also writes a best (top-k) checkpoint, so once the
      monitored metric stops improving ``last.ckpt`` goes stale and a crash loses every epoch since
      the best one. Here ``last.ckpt`` is written at every checkpointing epoch (each
      ``every_n_epochs``) whatever the metric did;
    * it stops the run when the monitored metric is missing from an epoch's metrics, so a best
      checkpoint by FID computed every 50 epochs would force ``every_n_epochs: 50``. Here the best
      checkpoint is updated whenever the metric exists, and a metric that never appears in a whole
      fit (a misspelt name) is reported at the end of the fit.

    It also keeps NaN out of the checkpoints: at the end of every training epoch, and before every
    write, every process checks that the model's parameters and buffers are finite, and stops the run
    with a :class:`~lightning_ebm.plugins.NonFiniteCheckpointError` naming the step and the last good
    checkpoint when they are not (the checkpoints already written stay as they are; a
    :class:`~lightning_ebm.callbacks.DivergenceGuard` rolls a diverged step back before this check).
    And when a fit is stopped by SIGTERM (Lightning raises ``SIGTERMException`` at the next batch), it
    writes the last checkpoint of the current state, whose path :attr:`interrupted_checkpoint` gives.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._monitor_seen = False
        #: the last checkpoint when a fit was stopped by SIGTERM (None otherwise, or if none was written).
        self.interrupted_checkpoint: str | None = None

    # ------------------------------------------------------------------ no NaN in checkpoints
    def last_good_checkpoint(self) -> Path | None:
        """The newest checkpoint of this callback's directory (None when there is none)."""
        return newest_checkpoint(Path(self.dirpath)) if self.dirpath else None

    def check_finite(self, trainer: L.Trainer, not_written: Any = None) -> None:
        """Raise :class:`~lightning_ebm.plugins.NonFiniteCheckpointError` when the model's state holds
        NaN or infinite values (every process calls it, so that all stop together)."""
        bad = non_finite_entries(trainer.lightning_module.state_dict())
        if bad:
            message = non_finite_message(bad, trainer.global_step, not_written, self.last_good_checkpoint())
            raise NonFiniteCheckpointError(message, every_process=True)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        self.check_finite(trainer, filepath)
        super()._save_checkpoint(trainer, filepath)

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if self.monitor is not None and self.monitor not in monitor_candidates:
            return
        self._monitor_seen = True
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _epoch_due(self, trainer: L.Trainer) -> bool:
        return (
            self.save_last is True
            and not self._should_skip_saving_checkpoint(trainer)
            and self._every_n_epochs >= 1
            and (trainer.current_epoch + 1) % self._every_n_epochs == 0
        )

    def _save_last_if_not_saved(self, trainer: L.Trainer) -> None:
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.check_finite(trainer)
        due = self._epoch_due(trainer) and self._should_save_on_train_epoch_end(trainer)
        super().on_train_epoch_end(trainer, pl_module)
        if due:
            self._save_last_if_not_saved(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due = self._epoch_due(trainer) and not self._should_save_on_train_epoch_end(trainer)
        super().on_validation_end(trainer, pl_module)
        if due:
            self._save_last_if_not_saved(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.monitor is not None and self.save_top_k != 0 and not self._monitor_seen and not self.best_model_path:
            rank_zero_warn(
                f"checkpoint.monitor {self.monitor!r} was never logged during this fit, so no best checkpoint "
                f"was kept (logged metrics: {', '.join(sorted(trainer.callback_metrics)) or 'none'}); "
                "set checkpoint.monitor to one of them"
            )

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """A fit stopped by SIGTERM: write the last checkpoint of the current state (every process
        takes part, as in any checkpoint write) unless the last write already holds it."""
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        if self.save_last and not trainer.fast_dev_run and trainer.global_step > 0:
            written = self.last_model_path and self._fs.exists(self.last_model_path)
            if not (written and self._last_global_step_saved == trainer.global_step):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if self.last_model_path and self._fs.exists(self.last_model_path):
            self.interrupted_checkpoint = self.last_model_path
        else:
            newest = self.last_good_checkpoint()
            self.interrupted_checkpoint = str(newest) if newest else None
