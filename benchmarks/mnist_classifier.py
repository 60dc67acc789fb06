"""Held-out accuracy of the MNIST classifier of mode counting, trained by the shipped config.

``fit`` of ``mnist_classifier.yaml`` through the command line, then ``test`` of the checkpoint with the
best validation accuracy, loaded by its path alone (as ``ModeCounting`` loads it). With
``--source test-split`` only the official 10,000-image test split is used: 7,000 images train,
1,000 validate and 2,000 that the classifier never saw measure the accuracy (target >= 97 %);
with ``--source full`` the 55,000 / 5,000 / official 10,000 split (target >= 98 %). Prints one JSON line.

Example::

    python benchmarks/mnist_classifier.py --data-dir data --source test-split --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_ebm, not an installed one
from lightning_ebm.cli import main  # noqa: E402
from lightning_ebm.datamodules import MNISTDataModule  # noqa: E402
from lightning_ebm.models import Classifier  # noqa: E402


def run(args: argparse.Namespace) -> dict[str, float | int | str]:
    root = Path(tempfile.mkdtemp(prefix="lightning_ebm_classifier_"))
    sizes = ["--data.val_size", "1000", "--data.test_size", "2000"] if args.source == "test-split" else []
    start = time.perf_counter()
    main(["fit", "--config", "mnist_classifier", "--data.data_dir", args.data_dir, "--data.source", args.source,
          *sizes, "--trainer.max_epochs", str(args.epochs), "--trainer.logger.init_args.save_dir", str(root),
          "--trainer.enable_progress_bar", "false", "--seed_everything", str(args.seed)])  # fmt: skip
    seconds = time.perf_counter() - start
    best = next((root / "mnist_classifier" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    model = Classifier.load_from_checkpoint(best)
    dm = MNISTDataModule(args.data_dir, source=args.source, value_range="symmetric", batch_size=500,
                         **({"val_size": 1000, "test_size": 2000} if args.source == "test-split" else {}))  # fmt: skip
    dm.setup()
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    accuracy = trainer.test(model, datamodule=dm, verbose=False)[0]["test/accuracy"]
    return {
        "source": args.source,
        "train_images": int(dm.train_data.shape[0]),
        "test_images": int(dm.test_data.shape[0]),
        "epochs": args.epochs,
        "test_accuracy": round(float(accuracy), 4),
        "fit_seconds": round(seconds, 1),
        "checkpoint": str(best),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="data_dir of MNISTDataModule (MNIST/raw/ inside)")
    parser.add_argument("--source", default="test-split", choices=("test-split", "full"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(run(args)), flush=True)
