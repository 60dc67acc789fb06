"""Does depth pay? A 2-layer DBM against an RBM of its first-layer size trained for the same wall-clock
time, and a 2-layer DBN's bound against its own first RBM, on real binarized MNIST.

The 10,000-image MNIST test split (``--mnist-dir``) is binarized once (seed 0) and split into 8,000
training and 2,000 test images (as in ``rbm_likelihood.py``). Every number is a test log-likelihood
in nats per image with log Z from AIS (``--betas`` betas, ``--chains`` chains; the effective sample
size is printed): for the RBM the likelihood itself, for the DBM its mean-field lower bound, for the
DBN its variational lower bound (Salakhutdinov & Murray 2008).

* DBM ``784-h1-h2``: doubled-input pretraining (``--pretrain-epochs`` per layer, CD-1), then
  ``--joint-epochs`` of joint training (10 mean-field sweeps, 100 persistent chains, 5 Gibbs sweeps).
* RBM ``784-h1``: the DBM's first-layer recipe (CD-1, lr 0.05, momentum 0.5 then 0.9), stopped at
  the DBM's training time (``Trainer(max_time=...)``).
* DBN ``784-h1-h2``: greedy, ``--pretrain-epochs`` per layer; its first RBM is scored at depth 1.

The results are printed as JSON (and written to ``--out`` when given).

Example::

    python benchmarks/boltzmann_depth.py --h1 200 --h2 400 --pretrain-epochs 10 --joint-epochs 20
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
from rbm_likelihood import DEFAULT_MNIST, load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_ebm, not an installed one
from lightning_ebm.evaluation import estimate_log_partition, log_likelihood  # noqa: E402
from lightning_ebm.models import DBM, DBN, RBM  # noqa: E402
from lightning_ebm.optim import spec  # noqa: E402

#: The first-layer recipe: CD-1, SGD at 0.05 with momentum 0.5 (0.9 after 5 epochs) and weight decay 2e-4
#: on ``W``. ``RBM_RECIPE`` are RBM arguments; ``STACK_RECIPE`` the same for every layer of a DBN or DBM.
RBM_OPTIMIZER = spec("torch.optim.SGD", lr=0.05, momentum=0.5, weight_decay=2e-4, fused=True)
RBM_SCHEDULE = spec("lightning_ebm.optim.Schedule", final_momentum=0.9, momentum_epochs=5)
RBM_RECIPE = dict(method="cd", k=1, optimizer=RBM_OPTIMIZER, lr_schedule=RBM_SCHEDULE)
STACK_RECIPE = dict(method="cd", k=1, layer_optimizer=RBM_OPTIMIZER, layer_schedule=RBM_SCHEDULE, num_filters=0)


def fit(model: L.LightningModule, train: torch.Tensor, batch_size: int, **trainer_args) -> float:
    """Train, return the wall-clock seconds."""
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tempfile.mkdtemp(), limit_val_batches=0, **trainer_args,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True)
    start = time.perf_counter()
    trainer.fit(model, loader)
    return time.perf_counter() - start


def score(model, train: torch.Tensor, test: torch.Tensor, betas: int, chains: int) -> dict[str, float]:
    start = time.perf_counter()
    estimate = estimate_log_partition(model, num_chains=chains, betas=betas, data=train, seed=0)
    return {
        "test_log_likelihood": round(float(log_likelihood(model, test, estimate).mean()), 2),
        "log_z": round(estimate.estimate, 2),
        "log_z_interval": [round(estimate.lower, 2), round(estimate.upper, 2)],
        "ais_effective_sample_size": round(estimate.effective_sample_size, 1),
        "eval_s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST)
    parser.add_argument("--h1", type=int, default=200)
    parser.add_argument("--h2", type=int, default=400)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--joint-epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--betas", type=int, default=14_500)
    parser.add_argument("--chains", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    train, test = load(args.mnist_dir)
    p = args.pretrain_epochs
    results: dict[str, object] = {"data": f"{len(train)} train / {len(test)} test binarized MNIST images"}

    dbm = DBM([784, args.h1, args.h2], layer_epochs=[p, p], **STACK_RECIPE)
    seconds = fit(dbm, train, args.batch_size, max_epochs=2 * p + args.joint_epochs)
    results[f"dbm_784_{args.h1}_{args.h2}"] = {
        "train_s": round(seconds, 1),
        **score(dbm, train, test, args.betas, args.chains),
    }

    rbm = RBM(784, args.h1, num_filters=0, **RBM_RECIPE)
    rbm_seconds = fit(rbm, train, args.batch_size, max_epochs=100_000, max_time={"seconds": seconds})
    results[f"rbm_784_{args.h1}_same_time"] = {
        "train_s": round(rbm_seconds, 1),
        "epochs": rbm.current_epoch,
        **score(rbm, train, test, args.betas, args.chains),
    }

    dbn = DBN([784, args.h1, args.h2], layer_epochs=[p, p], **STACK_RECIPE)
    seconds = fit(dbn, train, args.batch_size, max_epochs=2 * p)
    dbn.depth.fill_(1)
    results[f"dbn_first_rbm_784_{args.h1}"] = score(dbn, train, test, args.betas, args.chains)
    dbn.depth.fill_(2)
    results[f"dbn_784_{args.h1}_{args.h2}_bound"] = {
        "train_s": round(seconds, 1),
        **score(dbn, train, test, args.betas, args.chains),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
