"""Training throughput (samples/s) of every method through Lightning, per shipped config.

Each config's model is built by the command line's parser from the shipped YAML (the paper's
networks and batch size), then trained by a plain ``Trainer`` on synthetic data of the config's
shape and range (throughput does not depend on the values) for ``--warmup`` batches, then timed for
``--steps`` batches (or ``--max-seconds``). Models that train on labelled batches (JEM, the MNIST
classifier) get ``(x, y)`` batches with random labels of their number of classes. One sample is one
data example consumed by a training step, whether the batch is ``x`` or ``(x, y)`` (MEG: by an energy
update; a generator update every ``energy_steps`` batches is included).
Options: ``--precision bf16-mixed``, ``--compile`` (``nn.Module.compile`` on the model's networks),
``--accelerator gpu``, ``--fused-step`` (the methods' fast path, ``--model.init_args.fused_step true``: on
a CUDA device the whole update is captured as CUDA graphs after a few eager warm-up calls per variant;
the rows say whether it was captured, how many of the timed batches were replays, and the fallback
warning where there was one; the classifier has no fast path and gets a row that says so),
``--data-on-device`` (default on for ``--accelerator gpu``: the synthetic batches are made on the
device once, sliced ahead of time and served as they are, so that Lightning's batch transfer is a
no-op and the figure is the training step's alone), ``--null-update`` (the method's update replaced by
one that does nothing: the batch loop's and the method's host work alone, the floor under a step whose
update replays a CUDA graph). On a GPU the clock is synchronised only at the
start and the end of the timed window (never per batch), so the host may queue work ahead as in a
real run; ``--min-seconds`` keeps timing past ``--steps`` batches until that much time has passed
(fast configs), ``--max-seconds`` caps it, and ``--pool`` distinct batches are cycled (so that a long
window needs no more memory). The functions here (:func:`measure`, :class:`Synthetic`, :class:`Timer`,
:func:`build_parser`) are also ``benchmarks/gpu_check.py``'s.

Besides wall-clock samples/s each row has samples per CPU-second of this process
(``time.process_time``), which a machine shared with other jobs disturbs much less; with
one thread (``--threads 1``) it is the fairest CPU comparison.

Reference columns (printed when given):

* ``--sklearn``: scikit-learn's ``BernoulliRBM`` (PCD-1, float32 input, its BLAS limited to
  ``--threads``) on data of the ``rbm_mnist_pcd`` shape and batch, for the ratio of our PCD-1
  (``rbm_mnist_pcd.yaml``): timed right before and right after that config's row (alternating, so
  that both see the same load), the ratio against the mean of the two;
* ``--reference FILE.json``: one JSON object per line ``{"task": "kdd99"|"toy", "samples_per_s": ...}``
  from timing the MEG authors' code on the same machine (docs/performance.md: how), for the ratios of
  ``meg_kdd99.yaml`` and ``meg_toy.yaml``.

Examples::

    python benchmarks/throughput.py --threads 2
    python benchmarks/throughput.py --configs meg_kdd99 meg_toy --reference ref.json --threads 1
    python benchmarks/throughput.py --accelerator gpu --precision bf16-mixed --compile
    python benchmarks/throughput.py --accelerator gpu --precision bf16-mixed --fused-step --min-seconds 1
    python benchmarks/throughput.py --configs rbm_mnist_pcd dem_toy --null-update --data-on-device
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_ebm, not an installed one
from lightning_ebm.cli import EBMCLI, resolve_config, resolve_config_args, shipped_configs  # noqa: E402
from lightning_ebm.datamodules import TensorBatches  # noqa: E402
from lightning_ebm.models import JEM, Classifier, EnergyBasedModel  # noqa: E402
from lightning_ebm.utils import eval_mode  # noqa: E402

#: Ranges of the synthetic data per config family; the rest is Gaussian.
BINARY = ("rbm_", "dbn_", "dbm_")
UNIT = ("dem_mnist", "meg_kdd99")
SYMMETRIC = ("dem_celeba", "dem_lsun", "jem_mnist", "jem_cifar", "mnist_classifier")
#: Which reference task a config is compared with.
REFERENCE_TASK = {"meg_kdd99": "kdd99", "meg_toy": "toy"}
#: Extra variants: the DBM's joint training (the config starts with pretraining, which is RBM CD-1).
VARIANTS = {"dbm_mnist:joint": ("dbm_mnist", ["--model.init_args.layer_epochs", "[0, 0]"])}
#: The start of the fast path's fallback warning (lightning_ebm.fused.warn_fallback).
FALLBACK_PREFIX = "fused_step:"


class Cycled:
    """``length`` batches: ``source`` (an iterable of batches, iterated again when it ends) cycled."""

    def __init__(self, source: Iterable[Any], length: int) -> None:
        self.source, self.length = source, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Any]:
        served = 0
        while served < self.length:
            empty = True
            for batch in self.source:
                empty = False
                yield batch
                served += 1
                if served == self.length:
                    return
            if empty:
                return


class Synthetic(L.LightningDataModule):
    """``num_batches`` random batches shaped like the config's data; ``(x, y)`` with random labels in
    ``[0, num_classes)`` when ``num_classes`` is given (a model that trains on labelled batches).

    ``pool``: at most this many distinct batches are made, then served again in turn (a long timing
    window needs no more memory). ``device``: the data are made there once and the batches are cut
    ahead of time (contiguous slices, no indexing per batch), so that on the training device
    Lightning's transfer of a batch is a no-op; without it, batches are sliced from host tensors by
    :class:`~lightning_ebm.datamodules.TensorBatches`, as the shipped data modules serve them.
    """

    def __init__(
        self,
        name: str,
        shape: tuple[int, ...],
        batch_size: int,
        num_batches: int,
        num_classes: int | None = None,
        device: torch.device | str | None = None,
        pool: int | None = None,
    ) -> None:
        super().__init__()
        self.data_shape, self.batch_size, self.num_batches = shape, batch_size, num_batches
        self.device = None if device is None else torch.device(device)
        distinct = num_batches if pool is None else max(1, min(pool, num_batches))
        g = torch.Generator().manual_seed(0)
        size = (batch_size * distinct, *shape)
        self.train_labels = None if num_classes is None else torch.randint(0, num_classes, size[:1], generator=g)
        if name.startswith(BINARY):
            self.train_data = (torch.rand(size, generator=g) < 0.13).float()
        elif name.startswith(UNIT):
            self.train_data = torch.rand(size, generator=g)
        elif name.startswith(SYMMETRIC):
            self.train_data = torch.rand(size, generator=g) * 2 - 1
        else:
            self.train_data = torch.randn(size, generator=g)
        if self.device is not None:
            self.train_data = self.train_data.to(self.device)
            if self.train_labels is not None:
                self.train_labels = self.train_labels.to(self.device)

    def train_dataloader(self) -> Cycled:
        """Whole batches sliced at once, as the shipped data modules serve them (a ``DataLoader`` over
        the tensor would collate every batch example by example)."""
        tensors = (self.train_data,) if self.train_labels is None else (self.train_data, self.train_labels)
        if self.device is None:
            return Cycled(TensorBatches(*tensors, batch_size=self.batch_size, shuffle=False), self.num_batches)
        b = self.batch_size
        cut = [tuple(t[i * b : (i + 1) * b] for t in tensors) for i in range(tensors[0].shape[0] // b)]
        return Cycled([c[0] if len(c) == 1 else c for c in cut], self.num_batches)


def examples(batch: torch.Tensor | tuple | list) -> int:
    """The number of examples in a batch ``x`` or ``(x, y, ...)`` (never the tuple's length)."""
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0])


def data_shape(model: L.LightningModule, datamodule: L.LightningDataModule) -> tuple[int, ...]:
    """The shape of one example: the model's ``data_shape``, else the config's data module's (the classifier)."""
    shape = getattr(model, "data_shape", None) or getattr(datamodule, "data_shape", None)
    if shape is None:
        raise ValueError(f"neither {type(model).__name__} nor {type(datamodule).__name__} has a data_shape")
    return tuple(int(n) for n in shape)


def label_classes(model: L.LightningModule, shape: tuple[int, ...]) -> int | None:
    """The number of classes of a model that trains on labelled batches (JEM: its ``num_classes``; the
    classifier: the width of its logits), None for the others."""
    if isinstance(model, JEM):
        return int(model.num_classes)
    if isinstance(model, Classifier):
        with torch.no_grad(), eval_mode(model):
            return int(model(torch.zeros(2, *shape)).shape[1])
    return None


def synchronize(module: torch.nn.Module) -> None:
    """Wait for the module's device (CUDA) to finish its queued work; nothing on a CPU."""
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)


def replays(module: torch.nn.Module) -> int | None:
    """The fast path's replay count so far (None when it is not running)."""
    captured = getattr(module, "_captured", None)
    return None if captured is None else int(captured.replays)


def thread_cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of each thread of this process so far, with its name, by thread id
    (Linux's ``/proc/self/task``; empty elsewhere)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    threads: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return threads
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as f:
                stat = f.read()
            with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as f:
                name = f.read().strip()
        except OSError:  # (a thread that ended meanwhile)
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "; utime and stime are fields 14, 15
        threads[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / ticks)
    return threads


def host_threads(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                 wall: float) -> list[dict[str, Any]]:  # fmt: skip
    """Which threads used the host's CPU between two :func:`thread_cpu_seconds` readings: per thread name
    (the main thread on its own), the threads, their CPU seconds per wall-clock second, the busiest first."""
    main = os.getpid()
    groups: dict[str, list[float]] = {}
    for tid, (name, seconds) in after.items():
        used = seconds - before.get(tid, (name, 0.0))[1]
        groups.setdefault("main thread" if tid == main else name, []).append(used)
    rows = [{"threads": name, "count": len(used), "cpu_per_wall": round(sum(used) / wall, 3)}
            for name, used in groups.items() if wall > 0]  # fmt: skip
    return sorted(rows, key=lambda r: -r["cpu_per_wall"])[:6]


class Timer(L.Callback):
    """Times the batches after ``warmup``: at least ``steps`` of them and ``min_seconds``, at most
    ``max_seconds``; then lets ``tail`` more batches run (another callback's window, e.g. a profiler)
    and stops the run. The device is synchronised at the start and at the end of the window only."""

    def __init__(self, warmup: int, steps: int, max_seconds: float, min_seconds: float = 0.0, tail: int = 0) -> None:
        self.warmup, self.steps, self.max_seconds = warmup, steps, max_seconds
        self.min_seconds, self.tail = min_seconds, tail
        self.batches, self.timed, self.samples, self.start, self.elapsed = 0, 0, 0, 0.0, 0.0
        self.cpu_start, self.cpu_elapsed = 0.0, 0.0
        self.done_at: int | None = None  #: batches run when the timed window ended
        self.replays_start: int | None = None
        self.replays_end: int | None = None
        self.threads_start: dict[int, tuple[str, float]] = {}
        #: CPU seconds per wall-clock second of the window by thread (:func:`host_threads`).
        self.threads: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if self.batches == self.warmup:
            synchronize(pl_module)
            self.threads_start = thread_cpu_seconds()
            self.start, self.cpu_start = time.perf_counter(), time.process_time()
            self.replays_start = replays(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.batches += 1
        if self.done_at is not None:
            if self.batches >= self.done_at + self.tail:
                trainer.should_stop = True
            return
        if self.batches > self.warmup:
            self.timed += 1
            self.samples += examples(batch)
            elapsed = time.perf_counter() - self.start
            if (self.timed >= self.steps and elapsed >= self.min_seconds) or elapsed > self.max_seconds:
                self._finish(pl_module)
                if self.tail <= 0:
                    trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if self.done_at is None and self.timed:  # the loader ran out first
            self._finish(pl_module)

    def _finish(self, pl_module: L.LightningModule) -> None:
        synchronize(pl_module)
        self.elapsed = time.perf_counter() - self.start
        self.cpu_elapsed = time.process_time() - self.cpu_start
        self.threads = host_threads(self.threads_start, thread_cpu_seconds(), self.elapsed)
        self.replays_end = replays(pl_module)
        self.done_at = self.batches


def null_update(batch: Any, key: tuple, log: bool) -> dict[str, torch.Tensor]:
    """An update that does nothing (``--null-update``): what is left of a training step is the host's
    work around it, Lightning's batch loop and the method's bookkeeping (schedules, step counts, logging),
    the floor under a step whose update replays a CUDA graph."""
    return {}


def compile_networks(model: torch.nn.Module) -> list[str]:
    """``nn.Module.compile`` (in place: the state dict keeps its keys) on the model's networks."""
    names = []
    for name in ("energy_net", "generator", "statistics_net", "feature_net"):
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            module.compile()
            names.append(name)
    return names


def model_class(name: str) -> type:
    """The model class of a shipped config (its YAML's ``model.class_path``)."""
    with open(resolve_config(name), encoding="utf-8") as f:
        class_path = yaml.safe_load(f)["model"]["class_path"]
    module, _, attr = class_path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def build(label: str, extra_argv: Sequence[str] = ()) -> tuple[L.LightningModule, L.LightningDataModule, str]:
    """The config's model and data module as the command line builds them (``label``: a config name or
    one of :data:`VARIANTS`), with ``extra_argv`` appended to the command line; and the config's name."""
    name, extra = VARIANTS.get(label, (label, []))
    argv = ["--config", name, "--trainer.logger", "false", *extra, *extra_argv]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = EBMCLI(args=resolve_config_args(argv), run=False)
    return cli.model, cli.datamodule, name


def data_on_device(args: argparse.Namespace) -> bool:
    """``--data-on-device``, by default on for a GPU accelerator."""
    if getattr(args, "data_on_device", None) is not None:
        return bool(args.data_on_device)
    return args.accelerator in ("gpu", "cuda")


def measure(
    label: str,
    args: argparse.Namespace,
    callbacks: Callable[[Timer], list[L.Callback]] | None = None,
    tail: int = 0,
) -> dict[str, object]:
    """One row: the config's training throughput under ``args`` (:func:`build_parser`'s options).

    ``callbacks(timer)`` gives more callbacks for the run (they run after the timer's hooks), ``tail``
    batches more run after the timed window for them. A failure is a row with an ``error``."""
    name = VARIANTS.get(label, (label, []))[0]
    fused = bool(getattr(args, "fused_step", False))
    row: dict[str, object] = {"config": label, "precision": args.precision, "fused_step": fused}
    if fused and not issubclass(model_class(name), EnergyBasedModel):
        row["error"] = f"{model_class(name).__name__} has no fast path (fused_step)"
        return row
    torch.set_float32_matmul_precision(getattr(args, "matmul_precision", "highest"))  # the fast path sets "high"
    try:
        model, datamodule, _ = build(label, ["--model.init_args.fused_step", "true"] if fused else [])
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a failing option is a result, not a crash
        row["error"] = f"building: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return row
    batch_size = int(datamodule.hparams.get("batch_size", 64))
    row["batch"] = batch_size
    shape = data_shape(model, datamodule)
    on_device = data_on_device(args)
    device = ("cuda" if args.accelerator in ("gpu", "cuda") else "cpu") if on_device else None
    min_seconds = float(getattr(args, "min_seconds", 0.0))
    window = args.steps if min_seconds <= 0 else 10_000_000  # batches: the clock ends a window of min_seconds
    try:
        data = Synthetic(name, shape, batch_size, args.warmup + window + tail, label_classes(model, shape),
                         device=device, pool=getattr(args, "pool", None))  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"data: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return row
    row["data_on_device"] = on_device
    if getattr(args, "null_update", False):
        if not isinstance(model, EnergyBasedModel):
            row["error"] = f"{type(model).__name__} has no update() to replace"
            return row
        model.update = null_update  # (the instance's: the batch loop's cost alone)
        row["null_update"] = True
    if args.compile:
        row["compiled"] = compile_networks(model) or "nothing to compile"
    timer = Timer(args.warmup, args.steps, args.max_seconds, min_seconds, tail)
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=1, precision=args.precision, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, callbacks=[timer, *(callbacks(timer) if callbacks else [])],
        log_every_n_steps=getattr(args, "log_every_n_steps", 50),
        default_root_dir=tempfile.mkdtemp(prefix="lightning_ebm_bench_"),
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(model, datamodule=data)
        except Exception as exc:  # noqa: BLE001 - a failing option is a result, not a crash
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    fallback = sorted({str(w.message) for w in caught if str(w.message).startswith(FALLBACK_PREFIX)})
    if fused:
        captured = getattr(model, "_captured", None)
        row["captured"] = bool(captured is not None and captured.replays > 0)
        row["graphs"] = 0 if captured is None else sum(1 for g in captured.graphs.values() if g[0] is not None)
        row["replays"] = 0 if captured is None else int(captured.replays)
        if timer.replays_start is not None and timer.replays_end is not None:
            row["replayed_timed_batches"] = timer.replays_end - timer.replays_start
        if fallback:
            row["fallback"] = "; ".join(fallback)
    row["matmul_precision"] = torch.get_float32_matmul_precision()
    if "error" in row:
        return row
    row["timed_batches"] = timer.timed
    row["seconds"] = round(timer.elapsed, 3)
    row["samples_per_s"] = round(timer.samples / timer.elapsed, 1) if timer.elapsed else math.nan
    row["s_per_it"] = round(timer.elapsed / timer.timed, 6) if timer.timed else math.nan
    row["samples_per_cpu_s"] = round(timer.samples / timer.cpu_elapsed, 1) if timer.cpu_elapsed else math.nan
    row["host_cpu_per_wall"] = round(timer.cpu_elapsed / timer.elapsed, 3) if timer.elapsed else math.nan
    row["host_threads"] = timer.threads
    return row


def sklearn_rate(args: argparse.Namespace) -> tuple[float, float]:
    """scikit-learn's BernoulliRBM (PCD-1) on rbm_mnist_pcd's shape: 784 x 500, batches of 100, float32."""
    import numpy as np
    from sklearn.neural_network import BernoulliRBM

    batches = args.warmup + args.steps
    x = (np.random.default_rng(0).random((100 * batches, 784)) < 0.13).astype(np.float32)
    rbm = BernoulliRBM(n_components=500, batch_size=100, n_iter=1, random_state=0)
    rbm.partial_fit(x[:100])  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    rbm.fit(x)
    return x.shape[0] / (time.perf_counter() - start), x.shape[0] / (time.process_time() - cpu)


def build_parser() -> argparse.ArgumentParser:
    """The options (also :func:`measure`'s: ``build_parser().parse_args([...])`` gives its ``args``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [n.removesuffix(".yaml") for n in shipped_configs()]
    parser.add_argument("--configs", nargs="*", default=[*names, *VARIANTS])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--min-seconds", type=float, default=0.0,
                        help="keep timing past --steps batches until this many seconds have passed")  # fmt: skip
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--fused-step", action="store_true",
                        help="the fast path: --model.init_args.fused_step true (CUDA graphs on a GPU)")  # fmt: skip
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--data-on-device", action=argparse.BooleanOptionalAction, default=None,
                        help="make the synthetic data on the training device once (default: on for a GPU)")  # fmt: skip
    parser.add_argument("--pool", type=int, default=None, help="distinct synthetic batches, cycled (default: all)")
    parser.add_argument("--log-every-n-steps", type=int, default=50, help="the Trainer's (Lightning's default)")
    parser.add_argument("--matmul-precision", default="highest", choices=["highest", "high", "medium"],
                        help="set_float32_matmul_precision before each row (the fast path sets high)")  # fmt: skip
    parser.add_argument("--null-update", action="store_true",
                        help="an update that does nothing: the host's cost per batch alone")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--sklearn", action="store_true", help="time scikit-learn's BernoulliRBM too")
    parser.add_argument("--reference", type=Path, help="JSON lines of the MEG authors' code's samples/s")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    return parser


def quiet_lightning() -> None:
    for logger in ("lightning.pytorch", "lightning.fabric", "lightning_ebm"):
        logging.getLogger(logger).setLevel(logging.WARNING)


def main() -> None:
    args = build_parser().parse_args()
    quiet_lightning()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else platform.processor() or "cpu"
    header = {"device": device, "threads": torch.get_num_threads(), "precision": args.precision,
              "compile": args.compile, "fused_step": args.fused_step, "data_on_device": data_on_device(args),
              "torch": torch.__version__, "lightning": L.__version__}  # fmt: skip
    header["lightning_ebm"] = str(Path(sys.modules["lightning_ebm"].__file__).parent)
    print(json.dumps(header))
    references: dict[str, list[dict[str, float]]] = {}
    if args.reference:
        for line in args.reference.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                references.setdefault(entry["task"], []).append(entry)
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)  # scikit-learn's BLAS too
    rows = []
    for label in args.configs:
        sklearn = sklearn_rate(args) if args.sklearn and label == "rbm_mnist_pcd" else None
        row = measure(label, args)
        if sklearn:
            after = sklearn_rate(args)
            sklearn = ((sklearn[0] + after[0]) / 2, (sklearn[1] + after[1]) / 2)
        task = REFERENCE_TASK.get(label)
        if task in references and "samples_per_s" in row:
            ref = statistics.median(e["samples_per_s"] for e in references[task])
            row.update(reference="MEG authors' code", reference_samples_per_s=round(ref, 1))
            row["ratio"] = round(row["samples_per_s"] / ref, 2)
            cpu = [e["samples_per_cpu_s"] for e in references[task] if "samples_per_cpu_s" in e]
            if cpu:
                row["reference_samples_per_cpu_s"] = round(statistics.median(cpu), 1)
                row["cpu_ratio"] = round(row["samples_per_cpu_s"] / statistics.median(cpu), 2)
        if label == "rbm_mnist_pcd" and sklearn and "samples_per_s" in row:
            row.update(reference="scikit-learn BernoulliRBM", reference_samples_per_s=round(sklearn[0], 1))
            row["ratio"] = round(row["samples_per_s"] / sklearn[0], 2)
            row["reference_samples_per_cpu_s"] = round(sklearn[1], 1)
            row["cpu_ratio"] = round(row["samples_per_cpu_s"] / sklearn[1], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
