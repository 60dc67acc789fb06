"""Training throughput (samples/s) of every method through Lightning, per shipped config.

Each config's model is built by the command line's parser from the shipped YAML (the paper's
networks and batch size), then trained by a plain ``Trainer`` on synthetic data of the config's
shape and range (throughput does not depend on the values) for ``--warmup`` batches, then timed for
``--steps`` batches (or ``--max-seconds``). Models that train on labelled batches (JEM, the MNIST
classifier) get ``(x, y)`` batches with random labels of their number of classes. One sample is one
data example consumed by a training step, whether the batch is ``x`` or ``(x, y)`` (MEG: by an energy
update; a generator update every ``energy_steps`` batches is included).
Options: ``--precision bf16-mixed``, ``--compile`` (``nn.Module.compile`` on the model's networks),
``--accelerator gpu``. Besides wall-clock samples/s each row has samples per CPU-second of this
process (``time.process_time``), which a machine shared with other jobs disturbs much less; with
one thread (``--threads 1``) it is the fairest CPU comparison.

Reference columns (printed when given):

* ``--sklearn``: scikit-learn's ``BernoulliRBM`` (PCD-1, float32 input, its BLAS limited to
  ``--threads``) on data of the ``rbm_mnist_pcd`` shape and batch, for the ratio of our PCD-1
  (``rbm_mnist_pcd.yaml``): timed right before and right after that config's row (alternating, so
  that both see the same load), the ratio against the mean of the two;
* ``--reference FILE.json``: one JSON object per line ``{"task": "kdd99"|"toy", "samples_per_s": ...}``
  from timing the MEG authors' code on the same machine (README: how), for the ratios of
  ``meg_kdd99.yaml`` and ``meg_toy.yaml``.

Examples::

    python benchmarks/throughput.py --threads 2
    python benchmarks/throughput.py --configs meg_kdd99 meg_toy --reference ref.json --threads 1
    python benchmarks/throughput.py --accelerator gpu --precision bf16-mixed --compile
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_ebm, not an installed one
from lightning_ebm.cli import EBMCLI, resolve_config_args, shipped_configs  # noqa: E402
from lightning_ebm.datamodules import TensorBatches  # noqa: E402
from lightning_ebm.models import JEM, Classifier  # noqa: E402
from lightning_ebm.utils import eval_mode  # noqa: E402

#: Ranges of the synthetic data per config family; the rest is Gaussian.
BINARY = ("rbm_", "dbn_", "dbm_")
UNIT = ("dem_mnist", "meg_kdd99")
SYMMETRIC = ("dem_celeba", "dem_lsun", "jem_mnist", "jem_cifar", "mnist_classifier")
#: Which reference task a config is compared with.
REFERENCE_TASK = {"meg_kdd99": "kdd99", "meg_toy": "toy"}
#: Extra variants: the DBM's joint training (the config starts with pretraining, which is RBM CD-1).
VARIANTS = {"dbm_mnist:joint": ("dbm_mnist", ["--model.init_args.layer_epochs", "[0, 0]"])}


class Synthetic(L.LightningDataModule):
    """``num_batches`` random batches shaped like the config's data; ``(x, y)`` with random labels in
    ``[0, num_classes)`` when ``num_classes`` is given (a model that trains on labelled batches)."""

    def __init__(
        self, name: str, shape: tuple[int, ...], batch_size: int, num_batches: int, num_classes: int | None = None
    ) -> None:
        super().__init__()
        self.data_shape, self.batch_size = shape, batch_size
        g = torch.Generator().manual_seed(0)
        size = (batch_size * num_batches, *shape)
        self.train_labels = None if num_classes is None else torch.randint(0, num_classes, size[:1], generator=g)
        if name.startswith(BINARY):
            self.train_data = (torch.rand(size, generator=g) < 0.13).float()
        elif name.startswith(UNIT):
            self.train_data = torch.rand(size, generator=g)
        elif name.startswith(SYMMETRIC):
            self.train_data = torch.rand(size, generator=g) * 2 - 1
        else:
            self.train_data = torch.randn(size, generator=g)

    def train_dataloader(self) -> TensorBatches:
        """Whole batches sliced at once, as the shipped data modules serve them (a ``DataLoader`` over
        the tensor would collate every batch example by example)."""
        tensors = (self.train_data,) if self.train_labels is None else (self.train_data, self.train_labels)
        return TensorBatches(*tensors, batch_size=self.batch_size, shuffle=False)


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


class Timer(L.Callback):
    """Times the batches after ``warmup``; stops after ``steps`` of them or ``max_seconds``."""

    def __init__(self, warmup: int, steps: int, max_seconds: float) -> None:
        self.warmup, self.steps, self.max_seconds = warmup, steps, max_seconds
        self.batches, self.samples, self.start, self.elapsed = 0, 0, 0.0, 0.0
        self.cpu_start, self.cpu_elapsed = 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if self.batches == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.batches += 1
        if self.batches > self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.samples += examples(batch)
            self.elapsed = time.perf_counter() - self.start
            self.cpu_elapsed = time.process_time() - self.cpu_start
            if self.batches - self.warmup >= self.steps or self.elapsed > self.max_seconds:
                trainer.should_stop = True


def compile_networks(model: torch.nn.Module) -> list[str]:
    """``nn.Module.compile`` (in place: the state dict keeps its keys) on the model's networks."""
    names = []
    for name in ("energy_net", "generator", "statistics_net", "feature_net"):
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            module.compile()
            names.append(name)
    return names


def measure(label: str, args: argparse.Namespace) -> dict[str, object]:
    name, extra = VARIANTS.get(label, (label, []))
    argv = ["--config", name, "--trainer.logger", "false", *extra]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = EBMCLI(args=resolve_config_args(argv), run=False)
    model = cli.model
    batch_size = int(cli.datamodule.hparams.get("batch_size", 64))
    row: dict[str, object] = {"config": label, "batch": batch_size}
    shape = data_shape(model, cli.datamodule)
    data = Synthetic(name, shape, batch_size, args.warmup + args.steps, label_classes(model, shape))
    if args.compile:
        row["compiled"] = compile_networks(model) or "nothing to compile"
    timer = Timer(args.warmup, args.steps, args.max_seconds)
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=1, precision=args.precision, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, callbacks=[timer], default_root_dir=tempfile.mkdtemp(prefix="lightning_ebm_bench_"),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer.fit(model, datamodule=data)
        except Exception as exc:  # noqa: BLE001 - a failing option is a result, not a crash
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            return row
    row["timed_batches"] = timer.batches - args.warmup
    row["samples_per_s"] = round(timer.samples / timer.elapsed, 1) if timer.elapsed else math.nan
    row["samples_per_cpu_s"] = round(timer.samples / timer.cpu_elapsed, 1) if timer.cpu_elapsed else math.nan
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [n.removesuffix(".yaml") for n in shipped_configs()]
    parser.add_argument("--configs", nargs="*", default=[*names, *VARIANTS])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--sklearn", action="store_true", help="time scikit-learn's BernoulliRBM too")
    parser.add_argument("--reference", type=Path, help="JSON lines of the MEG authors' code's samples/s")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    for logger in ("lightning.pytorch", "lightning.fabric", "lightning_ebm"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else platform.processor() or "cpu"
    header = {"device": device, "threads": torch.get_num_threads(), "precision": args.precision,
              "compile": args.compile, "torch": torch.__version__, "lightning": L.__version__}  # fmt: skip
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
