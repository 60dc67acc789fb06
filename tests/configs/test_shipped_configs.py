"""Every shipped config through the command line's ``main([...])`` on small data written in the real
on-disk formats (narrowed networks, the configs' callbacks left out): ``fit`` for two steps (it writes
a checkpoint, which ``fast_dev_run`` would not), then ``validate``, ``test`` and ``predict`` of that
checkpoint with ``fast_dev_run``; and what each stage logs: ``train/`` and ``val/`` after fit, ``val/``
after validate, ``test/`` (and only ``test/``) after test, one finite energy per example from predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers.cli import run_cli
from helpers.configs import CASES

from lightning_ebm.cli import CONFIG_DIR, shipped_configs

#: What each method's evaluation step logs (besides callbacks), the same under val/ and test/.
EVALUATION_KEYS = {
    "RBM": {"free_energy", "reconstruction_error", "pseudo_log_likelihood"},
    "DBN": {"layer0/free_energy", "layer0/reconstruction_error", "layer0/pseudo_log_likelihood", "energy_data"},
    "DBM": {"layer0/free_energy", "layer0/reconstruction_error", "layer0/pseudo_log_likelihood"},
    "DEM": {"energy_data", "energy_samples"},
    "MEG": {"energy_data", "energy_samples"},
    "JEM": {"energy_data", "energy_samples", "accuracy", "cross_entropy"},
    "Classifier": {"loss", "accuracy"},
}


def test_every_shipped_config_has_a_case() -> None:
    assert sorted(CASES) == shipped_configs()


@pytest.mark.parametrize("name", sorted(CASES))
def test_fit_validate_test_predict(tmp_path: Path, name: str) -> None:
    make_data, overrides, _ = CASES[name]
    keys = tmp_path / "keys.json"
    common = [
        "--config", name, *make_data(tmp_path), *overrides,
        "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(tmp_path / "logs"), "--trainer.callbacks", "[]",
        "--trainer.callbacks+=helpers.callbacks.LoggedKeys", "--trainer.callbacks.path", str(keys),
    ]  # fmt: skip
    fit = [
        "--trainer.limit_train_batches", "2", "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "0", "--trainer.log_every_n_steps", "1", "--checkpoint.monitor", "null",
        "--trainer.check_val_every_n_epoch", "1",
    ]  # fmt: skip
    assert run_cli(["fit", *common, *fit]) == 0
    (checkpoint,) = (tmp_path / "logs").glob("*/version_0/checkpoints/last.ckpt")
    for stage in ("validate", "test", "predict"):
        assert run_cli([stage, *common, "--trainer.fast_dev_run", "1", "--ckpt_path", str(checkpoint)]) == 0, stage
    logged = json.loads(keys.read_text())
    method = yaml.safe_load((CONFIG_DIR / name).read_text())["model"]["class_path"].rsplit(".", 1)[1]
    expected = EVALUATION_KEYS[method]
    assert any(k.startswith("train/") for k in logged["fit"]), logged["fit"]
    assert {f"val/{k}" for k in expected} <= set(logged["fit"]), logged["fit"]
    assert {f"val/{k}" for k in expected} <= set(logged["validate"]), logged["validate"]
    assert {f"test/{k}" for k in expected} <= set(logged["test"]), logged["test"]
    assert all(k.startswith("test/") for k in logged["test"]), logged["test"]
    for batch in logged["predict"]:
        if method != "Classifier":  # one energy per example (the classifier predicts classes)
            assert batch["shape"] == [batch["batch_size"]] and batch["finite"], batch
