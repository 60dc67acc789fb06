"""RBM training throughput against scikit-learn's BernoulliRBM, and the cost of a full AIS run.

Both train a 784 x 500 RBM on the same binarized MNIST images (the 10,000-image test split from
``--mnist-dir``, or random binary data of that shape if it is absent), float32, the same batch size,
one Gibbs step per update (scikit-learn's BernoulliRBM is PCD-1; ours runs PCD-1 and CD-1). Ours is
timed through Lightning's ``fit`` (what users run) and, with ``--bare``, as a bare loop of the same
update. ``--recipe sklearn`` (default) gives ours scikit-learn's update rule (constant learning rate,
no momentum, no weight decay: equal settings); ``--recipe config`` that of ``rbm_mnist_pcd.yaml``
(weight decay, learning rate decayed linearly per update), which does slightly more work.

The machine may be shared, so the two are timed in alternating blocks in one process (``--rounds``
rounds of: scikit-learn's ``fit`` for ``--epochs`` epochs, then ours for as many), both under the
same thread limit (``--threads``: torch's and the BLAS pools' through threadpoolctl), and each block
reports samples per second of wall-clock time and per CPU-second of the process
(``time.process_time``, all threads); the medians over rounds and their ratios are printed. The
per-CPU-second ratio is the steadier figure under load. Then AIS with Salakhutdinov & Murray's
14,500 betas and 100 chains on our trained model (``--skip-ais`` to leave it out).

Examples::

    python benchmarks/rbm_throughput.py --threads 1
    python benchmarks/rbm_throughput.py --threads 2 --rounds 3 --skip-ais
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_ebm, not an installed one
from lightning_ebm.datamodules.utils import TensorBatches  # noqa: E402
from lightning_ebm.evaluation import estimate_log_partition, log_likelihood  # noqa: E402
from lightning_ebm.models import RBM  # noqa: E402
from lightning_ebm.models.rbm import weight_decay_on_weights_only  # noqa: E402
from lightning_ebm.optim import build_optimizer, spec  # noqa: E402

DEFAULT_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def load_binarized(mnist_dir: Path, seed: int = 0) -> tuple[torch.Tensor, str]:
    g = torch.Generator().manual_seed(seed)
    path = mnist_dir / "t10k-images-idx3-ubyte.gz"
    if not path.is_file():
        return (torch.rand(10_000, 784, generator=g) < 0.13).float(), "random binary (MNIST not found)"
    raw = gzip.open(path).read()
    x = torch.from_numpy(np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255)
    return (torch.rand(x.shape, generator=g) < x).float(), f"binarized MNIST test split ({path})"


class Timer(L.Callback):
    """Wall-clock and CPU time of the batches after ``warmup``."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.batches, self.samples = warmup, 0, 0
        self.start = self.cpu_start = self.elapsed = self.cpu_elapsed = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if self.batches == self.warmup:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.batches += 1
        if self.batches > self.warmup:
            self.samples += batch.shape[0]
            self.elapsed = time.perf_counter() - self.start
            self.cpu_elapsed = time.process_time() - self.cpu_start


class Data(L.LightningDataModule):
    def __init__(self, data: torch.Tensor, batch_size: int) -> None:
        super().__init__()
        self.train_data, self.batch_size = data, batch_size

    def train_dataloader(self) -> TensorBatches:
        return TensorBatches(self.train_data, batch_size=self.batch_size)


def rates(samples: int, wall: float, cpu: float) -> dict[str, float]:
    return {"samples_per_s": samples / wall, "samples_per_cpu_s": samples / cpu}


#: Our optimiser settings (SGD's keyword arguments besides the learning rate, and the schedule):
#: scikit-learn's update (a constant learning rate, no momentum, no weight decay), or
#: rbm_mnist_pcd.yaml's (weight decay 2e-4 on ``W``, the learning rate decayed linearly to 0 per update).
RECIPES = {
    "sklearn": {"sgd": dict(momentum=0.0, weight_decay=0.0), "lr_schedule": None},
    "config": {
        "sgd": dict(momentum=0.0, weight_decay=2e-4),
        "lr_schedule": spec("lightning_ebm.optim.Schedule", linear_decay_start=0.0),
    },
}


def recipe(args: argparse.Namespace) -> dict[str, object]:
    """``--recipe``'s ``optimizer`` and ``lr_schedule`` arguments of the RBM, at ``--lr``."""
    settings = RECIPES[args.recipe]
    optimizer = spec("torch.optim.SGD", lr=args.lr, **settings["sgd"], fused=True)
    return {"optimizer": optimizer, "lr_schedule": settings["lr_schedule"]}


def ours(data: torch.Tensor, method: str, args: argparse.Namespace) -> tuple[dict[str, float], RBM]:
    """Our RBM through ``Trainer.fit`` (``--recipe``'s optimiser settings), the first 5 batches untimed."""
    L.seed_everything(0, verbose=False)
    rbm = RBM(784, args.hidden, method=method, k=1, num_chains=args.batch_size, num_filters=0, **recipe(args))
    timer = Timer(warmup=5)
    trainer = L.Trainer(
        max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(rbm, datamodule=Data(data, args.batch_size))
    return rates(timer.samples, timer.elapsed, timer.cpu_elapsed), rbm


def ours_bare(data: torch.Tensor, method: str, args: argparse.Namespace) -> dict[str, float]:
    """The same update without Lightning: ``ContrastiveDivergence.update`` with the recipe's SGD (weight
    decay on ``W`` only; no learning-rate schedule)."""
    rbm = RBM(784, args.hidden, method=method, k=1, num_filters=0, **recipe(args))
    optimizer = build_optimizer(rbm.hparams.optimizer, weight_decay_on_weights_only(rbm.layer))
    batches = data.split(args.batch_size)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.epochs):
        for v in batches:
            rbm.cd.update(rbm.layer, v, optimizer, rbm)
    return rates(data.shape[0] * args.epochs, time.perf_counter() - start, time.process_time() - cpu)


def sklearn(data: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    """scikit-learn's BernoulliRBM (PCD-1) ``fit`` for ``--epochs`` epochs on float32 input."""
    from sklearn.neural_network import BernoulliRBM

    x = data.numpy().astype(np.float32)
    rbm = BernoulliRBM(
        n_components=args.hidden, learning_rate=args.lr, batch_size=args.batch_size, n_iter=args.epochs, random_state=0
    )
    start, cpu = time.perf_counter(), time.process_time()
    rbm.fit(x)
    return rates(x.shape[0] * args.epochs, time.perf_counter() - start, time.process_time() - cpu)


def summary(blocks: list[dict[str, float]]) -> dict[str, object]:
    return {
        key: {"median": round(statistics.median(b[key] for b in blocks)), "blocks": [round(b[key]) for b in blocks]}
        for key in ("samples_per_s", "samples_per_cpu_s")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST)
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each timed block")
    parser.add_argument("--rounds", type=int, default=3, help="alternating blocks of each")
    parser.add_argument("--methods", nargs="+", default=["pcd", "cd"], choices=["pcd", "cd"])
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--recipe", default="sklearn", choices=sorted(RECIPES), help="our optimiser settings")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--bare", action="store_true", help="also time the bare update loop")
    parser.add_argument("--skip-ais", action="store_true")
    args = parser.parse_args()
    for logger in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)  # scikit-learn's BLAS (and torch's OpenMP pool) alike
    data, source = load_binarized(args.mnist_dir)
    result: dict[str, object] = {
        "data": source,
        "model": f"784x{args.hidden}, batch {args.batch_size}, {args.epochs} epoch(s) per block, float32",
        "our_recipe": recipe(args),
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "lightning": L.__version__,
    }
    blocks: dict[str, list[dict[str, float]]] = {}
    rbm = None
    for _ in range(args.rounds):
        blocks.setdefault("sklearn_pcd1", []).append(sklearn(data, args))
        for method in args.methods:
            rate, model = ours(data, method, args)
            rbm = model if method == "pcd" else rbm
            blocks.setdefault(f"ours_{method}1_lightning", []).append(rate)
            if args.bare:
                blocks.setdefault(f"ours_{method}1_bare", []).append(ours_bare(data, method, args))
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    for name, values in blocks.items():
        result[name] = summary(values)
    sk = result["sklearn_pcd1"]
    for name in blocks:
        if name.startswith("ours"):
            result[f"{name}_over_sklearn"] = {
                key: round(result[name][key]["median"] / sk[key]["median"], 2)
                for key in ("samples_per_s", "samples_per_cpu_s")
            }
    if not args.skip_ais and rbm is not None:
        start = time.perf_counter()
        estimate = estimate_log_partition(rbm, num_chains=100, data=data, seed=0)
        result["ais_14500_betas_100_chains_s"] = round(time.perf_counter() - start, 1)
        result["ais_log_z"] = [round(estimate.lower, 2), round(estimate.estimate, 2), round(estimate.upper, 2)]
        result["ais_effective_sample_size"] = round(estimate.effective_sample_size, 1)
        result["train_log_likelihood_pcd"] = round(float(log_likelihood(rbm, data, estimate).mean()), 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
