"""MEG's KDD99 row (Kumar et al. 2019, Table 3) over several seeds, through the shipped config.

For each seed: ``fit`` of ``meg_kdd99.yaml`` with the published protocol (``val_fraction 0``: all
attack rows of the training half), then the anomaly metrics on the test half, with the gradient-norm
score (the paper's) and the energy score. Prints each seed, then mean +- std, and the training time
per epoch (the authors' script took 12.2 s per epoch on a 2-core CPU like this one; REFERENCE.md).

Example::

    python benchmarks/meg_kdd99.py --data-dir ../shared/data/kddcup99 --seeds 0 1 2 3 4 --threads 2

Any other argument is handed to the config, e.g. ``--model.init_args.gradient_penalty 100`` (the paper's
lambda) or ``--model.init_args.lr_schedule lightning_ebm.optim.Schedule
--model.init_args.lr_schedule.linear_decay_start 0.5`` (every player's learning rate decayed linearly to 0
over the second half of the run). ``--out FILE`` writes the runs and the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_ebm, not an installed one
from lightning_ebm.callbacks import AnomalyDetection  # noqa: E402
from lightning_ebm.cli import EBMCLI, resolve_config_args  # noqa: E402
from lightning_ebm.evaluation.anomaly import top_fraction_metrics  # noqa: E402

PUBLISHED = {"precision": 0.9307, "recall": 0.9472, "f1": 0.9389}


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.times.append(time.perf_counter() - self.start)


def test_f1(model, dm) -> float:  # noqa: ANN001
    """The test half's gradient-norm F1 of ``model`` (top 20 % flagged)."""
    if dm.test_data is None:
        dm.setup("test")
    scores = torch.cat([model.anomaly_score(b.to(model.device)).cpu() for b in dm.test_data.split(8192)])
    return top_fraction_metrics(scores, dm.test_labels, 0.2)["f1"]


class TestTrace(L.Callback):
    """Prints the test half's gradient-norm F1 every ``every`` epochs: how the figure moves during
    training (a trace for the reader; nothing is selected by it), also of the averaged weights when
    an ``EMAWeightAveraging`` callback runs (``--ema``)."""

    def __init__(self, every: int, seed: int, ema: EMAWeightAveraging | None = None) -> None:
        self.every, self.seed, self.ema = every, seed, ema

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if (trainer.current_epoch + 1) % self.every:
            return
        f1 = test_f1(pl_module, trainer.datamodule)
        line = f"seed {self.seed} epoch {trainer.current_epoch + 1} test F1 {f1:.4f}"
        if self.ema is not None and self.ema._average_model is not None:
            line += f", averaged weights {test_f1(self.ema._average_model.module, trainer.datamodule):.4f}"
        print(line, flush=True)


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, float]:
    root = tempfile.mkdtemp(prefix="lightning_ebm_kdd_")
    argv = ["--config", args.config, "--seed_everything", str(seed), "--data.seed", str(seed),
            "--data.data_dir", args.data_dir, "--data.val_fraction", "0", "--data.scaling", args.scaling,
            "--trainer.max_epochs", str(args.epochs), "--trainer.default_root_dir", root,
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
            "--checkpoint.save_last", "false", "--checkpoint.save_top_k", "0", "--checkpoint.monitor", "null",
            "--trainer.precision", args.precision, *args.overrides]  # fmt: skip
    cli = EBMCLI(args=resolve_config_args(argv), run=False)
    timer = EpochTimer()
    cli.trainer.callbacks.append(timer)
    ema = EMAWeightAveraging(decay=args.ema) if args.ema else None
    if ema is not None:  # evaluated (and tested) with the averaged weights
        cli.trainer.callbacks.append(ema)
    if args.trace:
        cli.trainer.callbacks.append(TestTrace(args.trace, seed, ema))
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    fit_time = time.perf_counter() - start
    detector = next(c for c in cli.trainer.callbacks if isinstance(c, AnomalyDetection))
    cli.trainer.test(cli.model, cli.datamodule, verbose=False)
    result = {k.removeprefix("test/anomaly/"): v for k, v in detector.last.items()}
    result.update(seed=seed, fit_seconds=fit_time, seconds_per_epoch=statistics.median(timer.times))
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="meg_kdd99")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=55)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument(
        "--scaling",
        default="minmax",
        choices=["minmax", "none"],
        help="none: numeric columns unscaled, as in the authors' preprocessing (the paper's figures)",
    )
    parser.add_argument("--trace", type=int, default=0, help="print the test F1 every N epochs (0: off)")
    parser.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights used for scoring (0: off)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args, args.overrides = parser.parse_known_args(argv)  # the rest goes to the config, e.g. --model.init_args.X Y
    return args


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(args, seed))
        r = runs[-1]
        print(
            f"seed {seed}: gradient-norm P {r['gradient_norm/precision']:.4f} R {r['gradient_norm/recall']:.4f} "
            f"F1 {r['gradient_norm/f1']:.4f} | energy F1 {r['energy/f1']:.4f} | "
            f"{r['seconds_per_epoch']:.1f} s/epoch",
            flush=True,
        )
    summary = {}
    for key in sorted(k for k in runs[0] if "/" in k):
        values = [r[key] for r in runs]
        summary[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    summary["seconds_per_epoch"] = statistics.mean(r["seconds_per_epoch"] for r in runs)
    print("\nmean +- std over seeds", args.seeds)
    for metric in ("precision", "recall", "f1", "auprc", "auroc"):
        for score in ("gradient_norm", "energy"):
            s = summary[f"{score}/{metric}"]
            ref = f"   (paper {PUBLISHED[metric]:.4f})" if score == "gradient_norm" and metric in PUBLISHED else ""
            print(f"  {score:13s} {metric:9s} {s['mean']:.4f} +- {s['std']:.4f}{ref}")
    print(f"  training: {summary['seconds_per_epoch']:.1f} s per epoch, {torch.get_num_threads()} threads")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"runs": runs, "summary": summary, "threads": torch.get_num_threads()}, f, indent=2)


if __name__ == "__main__":
    main()
