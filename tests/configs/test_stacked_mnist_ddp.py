"""meg_stackedmnist3.yaml under two-process CPU DDP (gloo), through the real command line."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from helpers.data import fake_mnist
from helpers.ddp_cli import fit_two_processes

from lightning_ebm.models import Classifier
from lightning_ebm.nn import ConvClassifier

TESTS = Path(__file__).resolve().parents[1]


def test_stacked_mnist_meg_under_two_process_ddp(tmp_path: Path) -> None:
    """Each rank composes its own shard of the stacks; the parameters stay identical, and ModeCounting
    (rank 0 samples and classifies, then broadcasts) gives both ranks the same modes and KL."""
    fake_mnist(tmp_path / "data", n_train=300, n_test=100)
    classifier = tmp_path / "classifier.ckpt"
    trainer = L.Trainer(max_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(Classifier(ConvClassifier(channels=(4, 8), hidden=16)))
    trainer.save_checkpoint(classifier)  # untrained: the values are arbitrary, but must agree across ranks
    params, metrics = fit_two_processes(
        tmp_path, "meg_stackedmnist3",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "1",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.callbacks.classifier_checkpoint", str(classifier),
        "--trainer.callbacks.num_samples", "300", "--trainer.callbacks.batch_size", "100",
        "--trainer.callbacks.every_n_epochs", "1",
        "--data.data_dir", str(tmp_path / "data"), "--data.val_size", "50", "--data.num_train", "1280",
        "--data.num_val", "64", "--data.batch_size", "16",
        "--model.init_args.energy_net.init_args.width", "32", "--model.init_args.generator.init_args.width", "32",
        "--model.init_args.statistics_net.init_args.width", "32",
    )  # fmt: skip
    assert params[0]["_world_size"] == 2 and params[0] == params[1]
    assert metrics[0] == metrics[1] and {"val/modes", "val/mode_kl"} <= set(metrics[0])
    assert 1 <= metrics[0]["val/modes"] <= 300
