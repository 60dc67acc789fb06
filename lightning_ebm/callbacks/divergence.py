"""Automatic recovery from a diverging training run: roll back, reseed, go on.

SGLD-trained energy models (JEM above all) now and then blow up: the loss jumps to 1e8 or NaN, or
the energies run away, and the authors restarted such runs by hand from the last checkpoint with
another seed. :class:`DivergenceGuard` does that in memory, for any method.
"""

from __future__ import annotations

import copy
import math
import random
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from lightning_ebm.errors import UserError
from lightning_ebm.rng import rng_states, set_rng_states


def _detached_copy(value: Any, device: torch.device | None) -> Any:
    if isinstance(value, Tensor):
        return value.detach().to(device if device is not None else value.device, copy=True)
    if isinstance(value, dict):
        return {k: _detached_copy(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached_copy(v, device) for v in value)
    return copy.deepcopy(value)


class DivergenceGuard(L.Callback):
    """Detect a blow-up after each training step and recover without a person.

    Every ``every_n_steps`` healthy steps (healthy with a margin, see ``snapshot_margin``) it keeps
    an in-memory copy of the last good state: the
    module's parameters and buffers, the optimisers' and schedulers' states, the method's
    per-process state (:meth:`~lightning_ebm.models.EnergyBasedModel.per_rank_state`: replay
    buffers, persistent chains) and the random generators. After every step it checks:

    * the loss and the energies that the method reports in ``pl_module.guard_metrics`` (a dict of
      tensors; ``loss`` plus any ``energy*`` entries), or else the ``loss`` that ``training_step``
      returned: NaN/inf, ``|loss| > max_loss``, ``|energy| > max_energy``;
    * with ``check_parameters``, that every parameter is finite.

    On a blow-up (on any process: the decision is shared, so all processes act together) it
    restores the last good state exactly, reseeds the random generators with a new seed (each
    process its own), optionally multiplies the good state's learning rates by ``lr_factor ** k`` at
    the ``k``-th rollback to it, logs
    ``guard/recoveries`` and warns with what happened, and training goes on. If the run diverges
    ``max_attempts`` times without reaching a new good state it stops with a :class:`UserError`.
    Python attributes of the method that are not in its state dict or per-process state (step
    counters) are not rolled back.

    Args:
        every_n_steps: healthy training steps between two copies of the good state.
        max_loss: a loss above this in absolute value is a blow-up (the JEM authors' 1e8).
        max_energy: an energy above this in absolute value is a blow-up.
        check_parameters: also check that all parameters are finite (one reduction per step).
        max_attempts: recoveries from the same good state before giving up.
        lr_factor: at the ``k``-th rollback to the same good state, the learning rates are that state's
            times ``lr_factor ** k`` (1: keep them).
        snapshot_on_cpu: keep the copy in host memory (saves accelerator memory for large models).
        snapshot_margin: a state is kept as the good one only while the loss and the energies are
            below this fraction of their thresholds (a run already on its way up is not "good").
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        max_loss: float = 1e8,
        max_energy: float = 1e8,
        check_parameters: bool = True,
        max_attempts: int = 5,
        lr_factor: float = 1.0,
        snapshot_on_cpu: bool = False,
        snapshot_margin: float = 0.1,
    ) -> None:
        if every_n_steps < 1 or max_attempts < 1:
            raise UserError("DivergenceGuard needs every_n_steps >= 1 and max_attempts >= 1")
        if not 0.0 < lr_factor <= 1.0:
            raise UserError(f"DivergenceGuard's lr_factor must be in (0, 1], got {lr_factor}")
        self.every_n_steps = every_n_steps
        self.max_loss = max_loss
        self.max_energy = max_energy
        self.check_parameters = check_parameters
        self.max_attempts = max_attempts
        self.lr_factor = lr_factor
        self.snapshot_on_cpu = snapshot_on_cpu
        self.snapshot_margin = snapshot_margin
        self.near_limits = False
        #: recoveries in this run (also in checkpoints); ``attempts``: since the last good state.
        self.recoveries = 0
        self.attempts = 0
        #: one line per recovery: what was detected, where, and what was done.
        self.events: list[str] = []
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_step = 0
        self._mark = 0  # step of the last snapshot or recovery

    # ------------------------------------------------------------------ the good state
    def snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Copy the current state as the last good one."""
        device = torch.device("cpu") if self.snapshot_on_cpu else None
        per_rank = getattr(pl_module, "per_rank_state", dict)()
        self._snapshot = {
            "model": _detached_copy(pl_module.state_dict(), device),
            "optimizers": [_detached_copy(o.state_dict(), device) for o in trainer.optimizers],
            "schedulers": [copy.deepcopy(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs],
            "per_rank": _detached_copy(dict(per_rank), device),
            "rng": rng_states(),
        }
        self._snapshot_step = self._mark = trainer.global_step
        self.attempts = 0

    def restore(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Put the last good state back, exactly (copies, so that the snapshot can be used again)."""
        snap = self._snapshot
        assert snap is not None
        pl_module.load_state_dict(snap["model"])
        for optimizer, state in zip(trainer.optimizers, snap["optimizers"]):
            optimizer.load_state_dict(_detached_copy(state, None))
        for config, state in zip(trainer.lr_scheduler_configs, snap["schedulers"]):
            config.scheduler.load_state_dict(copy.deepcopy(state))
        if snap["per_rank"]:
            device = pl_module.device
            pl_module.load_per_rank_state({k: v.to(device, copy=True) for k, v in snap["per_rank"].items()})
        set_rng_states(snap["rng"])
        getattr(pl_module, "invalidate_fused_step", lambda: None)()  # captured graphs held the replaced tensors

    # ------------------------------------------------------------------ detection
    def _values(self, pl_module: L.LightningModule, outputs: Any) -> tuple[Tensor | None, list[Tensor]]:
        metrics = getattr(pl_module, "guard_metrics", None) or {}
        loss = metrics.get("loss")
        if loss is None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            loss = loss if isinstance(loss, Tensor) else None
        energies = [v for k, v in metrics.items() if k.startswith("energy") and isinstance(v, Tensor)]
        return loss, energies

    def check(self, pl_module: L.LightningModule, outputs: Any = None) -> str | None:
        """What is wrong after this step, or None when it is healthy (one host synchronisation)."""
        loss, energies = self._values(pl_module, outputs)
        flags: list[Tensor] = []
        names: list[str] = []
        near: list[Tensor] = []  # within snapshot_margin of a threshold: healthy, but not a state to keep
        if loss is not None:
            loss = loss.detach().float()
            flags += [~torch.isfinite(loss).all(), loss.abs().max() > self.max_loss]
            names += ["the loss is not finite", f"|loss| exceeds {self.max_loss:g}"]
            near.append(loss.abs().max() > self.snapshot_margin * self.max_loss)
        if energies:
            e = torch.stack(
                [v.detach().float().reshape(()) if v.numel() == 1 else v.detach().float().max() for v in energies]
            )
            flags += [~torch.isfinite(e).all(), e.abs().max() > self.max_energy]
            names += ["the energies are not finite", f"the energies exceed {self.max_energy:g} in absolute value"]
            near.append(e.abs().max() > self.snapshot_margin * self.max_energy)
        if self.check_parameters:
            finite = [torch.isfinite(p.detach()).all() for p in pl_module.parameters()]
            if finite:
                flags.append(~torch.stack(finite).all())
                names.append("some parameters are not finite")
        self.near_limits = False
        if not flags:
            return None
        everything = torch.stack([f.reshape(()) for f in flags + near]).cpu()
        bad = everything[: len(flags)]
        self.near_limits = bool(everything[len(flags) :].any())
        if not bool(bad.any()):
            return None
        details = [n for n, b in zip(names, bad.tolist()) if b]
        if loss is not None and math.isfinite(float(loss.abs().max())):
            details.append(f"loss {float(loss.reshape(-1)[0]):.4g}")
        return ", ".join(details)

    # ------------------------------------------------------------------ the hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.snapshot(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        reason = self.check(pl_module, outputs)
        diverged = trainer.strategy.reduce_boolean_decision(reason is not None, all=False)
        if diverged:
            self._recover(trainer, pl_module, reason or "another process diverged")
        elif trainer.global_step - self._mark >= self.every_n_steps:
            # keep the state only when every process is clear of the thresholds (all take it together)
            if trainer.strategy.reduce_boolean_decision(not self.near_limits, all=True):
                self.snapshot(trainer, pl_module)

    def _recover(self, trainer: L.Trainer, pl_module: L.LightningModule, reason: str) -> None:
        step = trainer.global_step
        self.attempts += 1
        if self.attempts > self.max_attempts:
            raise UserError(
                f"training diverged ({reason}) at step {step}, and {self.max_attempts} rollbacks to the good state of "
                f"step {self._snapshot_step} with new seeds did not help: lower the learning rate or the SGLD step "
                f"size, set DivergenceGuard's lr_factor below 1, or raise max_attempts"
            )
        self.recoveries += 1
        self.restore(trainer, pl_module)
        seed = (torch.initial_seed() + 7919 * self.recoveries + 1_000_003 * trainer.global_rank) % 2**32
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        factor = self.lr_factor**self.attempts  # compounds over the rollbacks to the same good state
        if factor != 1.0:
            self._scale_learning_rates(trainer, factor)
        if hasattr(pl_module, "guard_metrics"):
            pl_module.guard_metrics = {}
        self._mark = step
        lr_note = f", learning rates x{factor:g} of the good state's" if factor != 1.0 else ""
        event = (
            f"DivergenceGuard: {reason} at step {step}; rolled back to the state of step {self._snapshot_step} "
            f"and reseeded (seed {seed}){lr_note}; recovery {self.recoveries}, attempt {self.attempts} of "
            f"{self.max_attempts} from this state"
        )
        self.events.append(event)
        if trainer.is_global_zero:
            warnings.warn(event, RuntimeWarning, stacklevel=2)
        pl_module.log("guard/recoveries", float(self.recoveries), on_step=True, on_epoch=False)

    @staticmethod
    def _scale_learning_rates(trainer: L.Trainer, factor: float) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= factor
                if "initial_lr" in group:
                    group["initial_lr"] *= factor
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> dict[str, Any]:
        return {"recoveries": self.recoveries, "events": list(self.events)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.recoveries = int(state_dict.get("recoveries", 0))
        self.events = list(state_dict.get("events", []))
