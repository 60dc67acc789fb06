"""Test log-likelihood of RBMs trained on real binarized MNIST: scikit-learn's BernoulliRBM against
our training recipes, on the same images, for the same number of epochs.

The 10,000-image MNIST test split (``--mnist-dir``) is binarized once (seed 0) and split into 8,000
training and 2,000 test images. With at most 25 hidden units log Z is exact (enumeration), so the
comparison involves no estimator; above that it is AIS (100 chains; one run per ``--betas`` entry,
14,500 by default), each run with its +-3 std interval and effective sample size, so that a
degenerate estimate can be seen (and two runs with different numbers of betas compared).

Examples::

    python benchmarks/rbm_likelihood.py --hidden 20 --epochs 10
    python benchmarks/rbm_likelihood.py --hidden 500 --batch-size 100 --betas 14500 29000 --sklearn-lr 0.1 0.05
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_ebm, not an installed one
from lightning_ebm.datamodules import MNISTDataModule  # noqa: E402
from lightning_ebm.evaluation import estimate_log_partition, exact_log_partition, log_likelihood  # noqa: E402
from lightning_ebm.models import RBM  # noqa: E402
from lightning_ebm.optim import spec  # noqa: E402

DEFAULT_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def sgd(momentum: float) -> dict[str, object]:
    """SGD at 0.05 with weight decay 2e-4 on ``W`` (Hinton's) and the given momentum."""
    return spec("torch.optim.SGD", lr=0.05, momentum=momentum, weight_decay=2e-4, fused=True)


#: The learning rate decayed linearly to 0 over the run; the momentum 0.9 after 5 epochs (Hinton's switch).
LINEAR_DECAY = {"linear_decay_start": 0.0}
MOMENTUM_SWITCH = {"final_momentum": 0.9, "momentum_epochs": 5}

#: our recipes, as RBM arguments (batches of 10 like scikit-learn's default)
RECIPES = {
    "ours_pcd1_linear_decay_no_momentum": dict(
        method="pcd", optimizer=sgd(0.0), lr_schedule=spec("lightning_ebm.optim.Schedule", **LINEAR_DECAY)
    ),
    "ours_pcd1_linear_decay_momentum_0.5_0.9": dict(
        method="pcd",
        optimizer=sgd(0.5),
        lr_schedule=spec("lightning_ebm.optim.Schedule", **LINEAR_DECAY, **MOMENTUM_SWITCH),
    ),
    "ours_cd1_momentum_0.5_0.9": dict(
        method="cd", optimizer=sgd(0.5), lr_schedule=spec("lightning_ebm.optim.Schedule", **MOMENTUM_SWITCH)
    ),
}


def load(mnist_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    dm = MNISTDataModule(
        data_dir=str(mnist_dir), source="test-split", binarize="static", val_size=0, test_size=2000, flatten=True
    )
    dm.setup("fit")
    return dm.train_data, dm.test_data


def fit_ours(train: torch.Tensor, hidden: int, epochs: int, batch_size: int, **recipe) -> RBM:
    L.seed_everything(0, verbose=False)
    rbm = RBM(784, hidden, num_filters=0, **recipe)
    trainer = L.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tempfile.mkdtemp(),
    )  # fmt: skip
    trainer.fit(rbm, torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True))
    return rbm


def fit_sklearn(train: torch.Tensor, hidden: int, epochs: int, batch_size: int, learning_rate: float) -> RBM:
    """scikit-learn's BernoulliRBM (PCD-1) with ``batch_size`` and ``learning_rate``."""
    from sklearn.neural_network import BernoulliRBM

    sk = BernoulliRBM(
        n_components=hidden, learning_rate=learning_rate, batch_size=batch_size, n_iter=epochs, random_state=0
    ).fit(train.numpy())
    rbm = RBM(784, hidden)
    with torch.no_grad():
        rbm.layer.W.copy_(torch.from_numpy(sk.components_.T.copy()))
        rbm.layer.visible_bias.copy_(torch.from_numpy(sk.intercept_visible_))
        rbm.layer.hidden_bias.copy_(torch.from_numpy(sk.intercept_hidden_))
    return rbm


def score(rbm: RBM, train: torch.Tensor, test: torch.Tensor, betas: list[int]) -> dict[str, object]:
    """The mean test log-likelihood: with exact log Z up to 25 hidden units, else with one AIS run
    (100 chains) per entry of ``betas``, each with its +-3 std interval and effective sample size."""
    neg_free_energy = float(log_likelihood(rbm, test, 0.0).mean())
    if rbm.hparams.n_hidden <= 25:
        return {"log_z": "exact", "test_log_likelihood": round(neg_free_energy - exact_log_partition(rbm), 2)}
    with torch.no_grad():
        hidden_input = rbm.layer.hidden_input(train[:2000]).abs()
    result: dict[str, object] = {"hidden_input_abs_mean": round(float(hidden_input.mean()), 2)}
    for seed, num_betas in enumerate(betas):
        start = time.perf_counter()
        estimate = estimate_log_partition(rbm, num_chains=100, betas=num_betas, data=train, seed=seed)
        result[f"ais_{num_betas}_betas"] = {
            "log_z": [round(estimate.lower, 2), round(estimate.estimate, 2), round(estimate.upper, 2)],
            "effective_sample_size": round(estimate.effective_sample_size, 1),
            "test_log_likelihood": [
                round(neg_free_energy - estimate.upper, 2),
                round(neg_free_energy - estimate.estimate, 2),
                round(neg_free_energy - estimate.lower, 2),
            ],
            "s": round(time.perf_counter() - start, 1),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST)
    parser.add_argument("--hidden", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--sklearn-lr", type=float, nargs="+", default=[0.1], help="its learning rates (0.1: default)")
    parser.add_argument("--betas", type=int, nargs="+", default=[14_500], help="AIS runs (above 25 hidden units)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    train, test = load(args.mnist_dir)
    results: dict[str, object] = {
        "data": f"{len(train)} train / {len(test)} test binarized MNIST images",
        "model": f"784x{args.hidden}, {args.epochs} epochs, batches of {args.batch_size}",
    }
    for lr in args.sklearn_lr:
        start = time.perf_counter()
        sk = fit_sklearn(train, args.hidden, args.epochs, args.batch_size, lr)
        score_sk = score(sk, train, test, args.betas)
        results[f"sklearn_lr_{lr}"] = {**score_sk, "train_s": round(time.perf_counter() - start, 1)}
    for name, recipe in RECIPES.items():
        start = time.perf_counter()
        rbm = fit_ours(train, args.hidden, args.epochs, args.batch_size, **recipe)
        results[name] = {**score(rbm, train, test, args.betas), "train_s": round(time.perf_counter() - start, 1)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
