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
