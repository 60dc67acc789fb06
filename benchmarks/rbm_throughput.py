"""RBM training throughput against scikit-learn's BernoulliRBM, and the cost of a full AIS run.

Both train a 784 x 500 RBM on the same binarized MNIST images (the 10,000-image test split from
``--mnist-dir``, or random binary data of that shape if it is absent), float32, the same batch size,
one Gibbs step per update (scikit-learn's BernoulliRBM is PCD-1; ours runs PCD-1 and CD-1), and
print samples/s side by side with their ratio. Ours is timed through Lightning's ``fit`` (what users
run) and as a bare loop of the same update. Then AIS with Salakhutdinov & Murray's 14,500 betas and
100 chains on the trained model.

Examples::

    python benchmarks/rbm_throughput.py --threads 2
    python benchmarks/rbm_throughput.py --epochs 3 --skip-ais
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from lightning_ebm.datamodules.utils import TensorBatches
from lightning_ebm.evaluation import estimate_log_partition, log_likelihood
from lightning_ebm.models import RBM

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
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.samples, self.elapsed = warmup, None, 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if self.start is None and trainer.global_step >= self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if self.start is not None:
            self.samples += batch.shape[0]
            self.elapsed = time.perf_counter() - self.start


class Data(L.LightningDataModule):
    def __init__(self, data: torch.Tensor, batch_size: int) -> None:
        super().__init__()
        self.train_data, self.batch_size = data, batch_size

    def train_dataloader(self) -> TensorBatches:
        return TensorBatches(self.train_data, batch_size=self.batch_size)


def ours(data: torch.Tensor, method: str, args: argparse.Namespace) -> tuple[float, RBM]:
    L.seed_everything(0, verbose=False)
    rbm = RBM(784, args.hidden, method=method, k=1, lr=args.lr, num_filters=0)
    timer = Timer(warmup=20)
    trainer = L.Trainer(
        max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(rbm, datamodule=Data(data, args.batch_size))
    return timer.samples / timer.elapsed, rbm


def ours_bare(data: torch.Tensor, method: str, args: argparse.Namespace) -> float:
    """The same update without Lightning (the closed-form CD gradient, SGD with momentum)."""
    rbm = RBM(784, args.hidden, method=method, k=1, lr=args.lr, num_filters=0)
    optimizer = torch.optim.SGD(rbm.parameters(), lr=args.lr, momentum=0.5)
    batches = data.split(args.batch_size)
    start = time.perf_counter()
    for v in batches:
        with torch.no_grad():
            v_model = rbm.negative_phase(v)
        optimizer.zero_grad(set_to_none=True)
        rbm.cd_surrogate(v, v_model).backward()
        optimizer.step()
    return data.shape[0] / (time.perf_counter() - start)


def sklearn_rate(data: torch.Tensor, args: argparse.Namespace) -> float:
    from sklearn.neural_network import BernoulliRBM

    x = data.numpy().astype(np.float32)
    rbm = BernoulliRBM(n_components=args.hidden, batch_size=args.batch_size, n_iter=args.epochs, random_state=0)
    start = time.perf_counter()
    rbm.fit(x)
    return x.shape[0] * args.epochs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST)
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--skip-ais", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data, source = load_binarized(args.mnist_dir)
    result: dict[str, object] = {
        "data": source,
        "model": f"784x{args.hidden}, batch {args.batch_size}, {args.epochs} epochs, float32",
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    try:
        sk = sklearn_rate(data, args)
        result["sklearn_pcd1_samples_per_s"] = round(sk)
    except ImportError:
        sk = None
        result["sklearn_pcd1_samples_per_s"] = "scikit-learn not installed"
    rbm = None
    for method in ("pcd", "cd"):
        rate, model = ours(data, method, args)
        rbm = model if method == "pcd" else rbm
        result[f"ours_{method}1_lightning_samples_per_s"] = round(rate)
        result[f"ours_{method}1_bare_samples_per_s"] = round(ours_bare(data, method, args))
        if sk:
            result[f"ours_{method}1_over_sklearn"] = round(rate / sk, 2)
    if not args.skip_ais and rbm is not None:
        start = time.perf_counter()
        estimate = estimate_log_partition(rbm, num_chains=100, data=data, seed=0)
        result["ais_14500_betas_100_chains_s"] = round(time.perf_counter() - start, 1)
        result["ais_log_z"] = [round(estimate.lower, 2), round(estimate.estimate, 2), round(estimate.upper, 2)]
        result["train_log_likelihood_pcd"] = round(float(log_likelihood(rbm, data, estimate).mean()), 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
