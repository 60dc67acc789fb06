"""The floor of StackedMNIST mode counting: modes and KL of *real* stacked images.

A stand-in model whose ``sample`` returns real StackedMNIST images (each channel an independent random
digit image from the held-out test digits of ``StackedMNISTDataModule``, which the classifier never
saw) is evaluated by ``ModeCounting`` with a classifier checkpoint (``benchmarks/mnist_classifier.py``
or ``configs/mnist_classifier.yaml``), over 26 * 10**n samples. A perfect generator cannot do better
than this: the histogram noise alone is about (10**n - 1) / (2 N), plus the non-uniform digit
frequencies and the classifier's errors. Prints one JSON line.

Example::

    PYTHONPATH=. python benchmarks/stacked_mnist_modes.py --data-dir data --classifier best.ckpt --stacks 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_ebm, not an installed one
from lightning_ebm.callbacks import ModeCounting  # noqa: E402
from lightning_ebm.datamodules import StackedMNISTDataModule  # noqa: E402


class RealStacks(nn.Module):
    """``sample(n)``: real stacks of the data module's test digits."""

    def __init__(self, dm: StackedMNISTDataModule) -> None:
        super().__init__()
        self.dm = dm
        self.device = torch.device("cpu")

    def sample(self, num_samples: int) -> torch.Tensor:
        low, high = self.dm.digit_ranges["test"]
        return self.dm.compose(torch.randint(low, high, (num_samples, self.dm.num_stacks)))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--classifier", required=True, help="checkpoint of lightning_ebm.models.Classifier")
    parser.add_argument("--stacks", type=int, default=3)
    parser.add_argument("--source", default="test-split", choices=("test-split", "full"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = {"val_size": 1000, "test_size": 2000} if args.source == "test-split" else {}
    dm = StackedMNISTDataModule(args.data_dir, num_stacks=args.stacks, source=args.source, num_train=1000, **sizes)
    dm.setup()
    start = time.perf_counter()
    counting = ModeCounting(args.classifier, batch_size=2000, num_stacks=args.stacks)
    result = counting.evaluate(None, RealStacks(dm))
    k, n = 10**args.stacks, 26 * 10**args.stacks
    low, high = dm.digit_ranges["test"]
    print(json.dumps({"stacks": args.stacks, "samples": n, "test_digits": high - low, **result,
                      "histogram_noise_kl": round((k - 1) / (2 * n), 4),
                      "seconds": round(time.perf_counter() - start, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
