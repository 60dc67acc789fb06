"""Callbacks used by tests that run the command line in a subprocess."""

from __future__ import annotations

import json
import os

import lightning as L


class ParameterDigest(L.Callback):
    """At the end of fit, each rank writes its parameters' sums to ``<dirpath>/rank<R>.json`` (and its
    floating-point buffers', e.g. batch norm running statistics, under ``buffer:<name>``)."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = {name: float(p.detach().double().sum()) for name, p in pl_module.named_parameters()}
        for name, b in pl_module.named_buffers():
            if b.is_floating_point():
                digest[f"buffer:{name}"] = float(b.detach().double().sum())
        digest["_world_size"] = trainer.world_size
        os.makedirs(self.dirpath, exist_ok=True)
        with open(os.path.join(self.dirpath, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(digest, f)


class ChainDigest(L.Callback):
    """Each rank writes the sum of its persistent chains at the start and end of fit to
    ``<dirpath>/chains<R>.json`` (for the per-rank state tests)."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath
        self.digest: dict[str, float] = {}

    def _record(self, key: str, pl_module: L.LightningModule) -> None:
        chains = pl_module.per_rank_state().get("persistent_chains")  # RBM (PCD) or DBM (joint training)
        self.digest[key] = None if chains is None else float(chains.double().sum())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record("start", pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record("end", pl_module)
        os.makedirs(self.dirpath, exist_ok=True)
        with open(os.path.join(self.dirpath, f"chains{trainer.global_rank}.json"), "w") as f:
            json.dump(self.digest, f)


class MetricsDigest(L.Callback):
    """At the end of fit, each rank writes the ``last`` metrics of every callback that keeps them
    (AnomalyDetection, ToyModeMetrics, ...) to ``<dirpath>/metrics<R>.json``."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest: dict[str, float] = {}
        for callback in trainer.callbacks:
            digest.update(getattr(callback, "last", None) or {})
        os.makedirs(self.dirpath, exist_ok=True)
        with open(os.path.join(self.dirpath, f"metrics{trainer.global_rank}.json"), "w") as f:
            json.dump(digest, f)


class LoggedKeys(L.Callback):
    """Writes ``<path>``: the names of the metrics logged by the end of each stage, and the shape and
    finiteness of what ``predict`` returned for each batch (for the shipped-config tests)."""

    def __init__(self, path: str) -> None:
        self.path = path  # each run adds its stages to what earlier runs wrote there
        self.record: dict[str, object] = json.loads(open(path).read()) if os.path.isfile(path) else {}

    def _write(self, stage: str, trainer: L.Trainer) -> None:
        self.record[stage] = sorted(trainer.logged_metrics)
        with open(self.path, "w") as f:
            json.dump(self.record, f)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write("fit", trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "validate":
            self._write("validate", trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write("test", trainer)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        batch_size = pl_module.batch_data(batch).shape[0] if hasattr(pl_module, "batch_data") else len(batch[0])
        entry = {"shape": list(outputs.shape), "batch_size": batch_size, "finite": bool(outputs.isfinite().all())}
        self.record.setdefault("predict", []).append(entry)  # type: ignore[union-attr]
        with open(self.path, "w") as f:
            json.dump(self.record, f)


class FastPathReport(L.Callback):
    """Writes ``<path>`` at the end of fit: how the fast path ran (replays and graphs, summed over the
    phases that each start it anew, and why it gave up)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: dict[int, tuple[int, int]] = {}
        self.record: dict[str, object] = {"on": False, "failed": None}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        captured = pl_module._captured
        if captured is not None:
            replays, graphs = self.seen.get(id(captured), (0, 0))
            self.seen[id(captured)] = (max(replays, captured.replays), max(graphs, len(captured.graphs)))
            self.record.update(on=True, failed=self.record["failed"] or captured.failed)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record.update(replays=sum(r for r, _ in self.seen.values()), graphs=sum(g for _, g in self.seen.values()),
                           phases=len(self.seen))  # fmt: skip
        with open(self.path, "w") as f:
            json.dump(self.record, f)


class LearningRateBlowUp(L.Callback):
    """Multiply the learning rate by ``factor`` (in place, as a device tensor rate is changed) before the
    optimiser steps in ``steps``: a forced divergence for the divergence guard's tests."""

    def __init__(self, steps: range, factor: float = 1e6) -> None:
        self.steps, self.factor = steps, factor

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step in self.steps:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] *= self.factor
