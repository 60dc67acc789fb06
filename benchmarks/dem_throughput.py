"""Training throughput of a shipped config: samples per second through the real command line.

Runs ``python -m lightning_ebm fit --config CONFIG`` for a few hundred batches with a timing
callback that ignores the warm-up batches, and, for the same networks, a bare PyTorch loop of the
same updates (no Lightning), so that the framework's overhead is measured rather than guessed.

Examples::

    python benchmarks/dem_throughput.py --config dem_toy --batches 600
    python benchmarks/dem_throughput.py --config dem_toy --precision bf16-mixed
    python benchmarks/dem_throughput.py --config dem_celeba --batches 3 --warmup 1 --batch-size 8 --data random
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_ebm, not an installed one
from lightning_ebm.cli import EBMCLI, resolve_config_args  # noqa: E402


class Timer(L.Callback):
    """Wall time of the training batches after ``warmup`` batches."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.samples = 0
        self.elapsed = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if self.start is not None:
            self.samples += pl_module.batch_data(batch).shape[0]
            self.elapsed = time.perf_counter() - self.start


class RandomImages(L.LightningDataModule):
    """Random tensors of the model's data shape, for configs whose data cannot be read here."""

    def __init__(self, shape: list[int], batch_size: int, batches: int) -> None:
        super().__init__()
        self.shape, self.batch_size, self.batches = shape, batch_size, batches

    def train_dataloader(self):  # noqa: ANN201
        data = torch.rand(self.batch_size * self.batches, *self.shape) * 2 - 1
        return torch.utils.data.DataLoader(data, batch_size=self.batch_size)


def lightning_throughput(args: argparse.Namespace) -> tuple[float, L.LightningModule, int]:
    """Samples/s of ``fit`` on the config, the trained model and the batch size used."""
    run_dir = tempfile.mkdtemp(prefix="lightning_ebm_bench_")  # the resolved config.yaml goes here
    argv = ["--config", args.config, "--trainer.max_epochs", "1", "--trainer.default_root_dir", run_dir,
            "--trainer.limit_train_batches", str(args.batches), "--trainer.limit_val_batches", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
            "--trainer.callbacks", "[]",
            "--checkpoint.save_last", "false", "--checkpoint.save_top_k", "0", "--checkpoint.monitor", "null",
            "--trainer.precision", args.precision]  # fmt: skip
    cli = EBMCLI(args=resolve_config_args(argv), run=False)
    model = cli.model
    if args.data == "random":
        dm = RandomImages(list(model.data_shape), args.batch_size, args.batches)
    else:
        dm = cli.datamodule
        if args.batch_size:
            dm.batch_size = args.batch_size
    timer = Timer(args.warmup)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(model, dm)
    return timer.samples / timer.elapsed, model, dm.batch_size


def bare_throughput(
    model: L.LightningModule, batch_size: int, batches: int, warmup: int, compile: bool = False
) -> float:
    """The same generator + energy updates as DEM.training_step, without Lightning (the injected
    optimisers of ``configure_optimizers``, the energy's first; their schedules are not stepped)."""
    (opt_energy, opt_generator), _ = model.configure_optimizers()
    x = torch.randn(batch_size, *model.data_shape)

    def generator_backward(z: torch.Tensor) -> None:
        model.generator_loss(z)[0].backward()

    def energy_backward(x: torch.Tensor, x_fake: torch.Tensor) -> None:
        model.energy_loss(x, x_fake)[0].backward()

    if compile:
        generator_backward = torch.compile(generator_backward)
        energy_backward = torch.compile(energy_backward)
    start = None
    for i in range(batches):
        if i == warmup:
            start = time.perf_counter()
        model.energy_net.requires_grad_(False)
        opt_generator.zero_grad(set_to_none=True)
        generator_backward(model.latent(batch_size))
        opt_generator.step()
        model.energy_net.requires_grad_(True)
        with torch.no_grad():
            x_fake = model.generator(model.latent(batch_size))
        opt_energy.zero_grad(set_to_none=True)
        energy_backward(x, x_fake)
        opt_energy.step()
    return batch_size * (batches - warmup) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="dem_toy")
    parser.add_argument("--batches", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=0, help="override the config's batch size")
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed")
    parser.add_argument("--data", default="config", choices=["config", "random"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the bare loop's updates too")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rate, model, batch_size = lightning_throughput(args)
    bare = bare_throughput(model, batch_size, min(args.batches, 300), min(args.warmup, 20))
    compiled = bare_throughput(model, batch_size, 300, 20, compile=True) if args.compile else None
    result = {
        "config": args.config,
        "precision": args.precision,
        "batch_size": batch_size,
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "lightning_samples_per_s": round(rate, 1),
        "bare_pytorch_samples_per_s": round(bare, 1),
        "lightning_over_bare": round(rate / bare, 3),
    }
    if compiled is not None:
        result["bare_compiled_samples_per_s"] = round(compiled, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
