"""meg_stackedmnist3.yaml under two-process CPU DDP (gloo), through the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
from helpers.data import fake_mnist

from lightning_ebm.models import Classifier
from lightning_ebm.nn import ConvClassifier

TESTS = Path(__file__).resolve().parent


def test_stacked_mnist_meg_under_two_process_ddp(tmp_path: Path) -> None:
    """Each rank composes its own shard of the stacks; the parameters stay identical, and ModeCounting
    (rank 0 samples and classifies, then broadcasts) gives both ranks the same modes and KL."""
    fake_mnist(tmp_path / "data", n_train=300, n_test=100)
    classifier = tmp_path / "classifier.ckpt"
    trainer = L.Trainer(max_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(Classifier(ConvClassifier(channels=(4, 8), hidden=16)))
    trainer.save_checkpoint(classifier)  # untrained: the values are arbitrary, but must agree across ranks
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "lightning_ebm", "fit", "--config", "meg_stackedmnist3",
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "1",
        "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.callbacks.classifier_checkpoint", str(classifier),
        "--trainer.callbacks.num_samples", "300", "--trainer.callbacks.batch_size", "100",
        "--trainer.callbacks.every_n_epochs", "1",
        "--data.data_dir", str(tmp_path / "data"), "--data.val_size", "50", "--data.num_train", "1280",
        "--data.num_val", "64", "--data.batch_size", "16",
        "--model.init_args.energy_net.init_args.width", "32", "--model.init_args.generator.init_args.width", "32",
        "--model.init_args.statistics_net.init_args.width", "32",
        "--trainer.callbacks+=helpers.callbacks.ParameterDigest",
        "--trainer.callbacks.dirpath", str(tmp_path / "digest"),
        "--trainer.callbacks+=helpers.callbacks.MetricsDigest",
        "--trainer.callbacks.dirpath", str(tmp_path / "digest"),
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    params = [json.loads((tmp_path / "digest" / f"rank{r}.json").read_text()) for r in range(2)]
    assert params[0]["_world_size"] == 2 and params[0] == params[1]
    metrics = [json.loads((tmp_path / "digest" / f"metrics{r}.json").read_text()) for r in range(2)]
    assert metrics[0] == metrics[1] and {"val/modes", "val/mode_kl"} <= set(metrics[0])
    assert 1 <= metrics[0]["val/modes"] <= 300
