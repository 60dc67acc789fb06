"""``--ckpt_path``: a checkpoint of another model class, architecture or data shape, of an older
checkpoint format, or options that the checkpoint would silently override, stop with one line; ``last``
finds the config's newest run; stale temporary files of killed writes are removed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers.cli import run_cli
from tiny_cli_model import tiny_config

from lightning_ebm.cli import EBMCLI, resolve_config_args
from lightning_ebm.errors import UserError
from lightning_ebm.plugins import (
    CHECKPOINT_FORMAT,
    FORMAT_KEY,
    AtomicCheckpointIO,
    check_checkpoint_format,
    remove_stale_temporary_files,
)


def error_of(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, captured.err[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of a 2-epoch run of the tiny model (hidden 8, noise_std 1.0)."""
    directory = tmp_path_factory.mktemp("trained")
    assert run_cli(["fit", "--config", str(tiny_config(directory))]) == 0
    return directory / "logs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"


def test_every_checkpoint_records_its_format(trained: Path) -> None:
    assert torch.load(trained, weights_only=False)[FORMAT_KEY] == CHECKPOINT_FORMAT == 2


def test_a_checkpoint_of_another_model_class(trained: Path, tmp_path: Path, capsys) -> None:
    config = tiny_config(tmp_path, class_path="tiny_cli_model.OtherTinyEBM")
    for sub in ("fit", "test"):
        assert run_cli([sub, "--config", str(config), "--ckpt_path", str(trained), "--trainer.max_epochs", "3"]) == 2
        error = error_of(capsys)
        assert (
            "is a checkpoint of tiny_cli_model.TinyEBM, but the config's model is tiny_cli_model.OtherTinyEBM" in error
        )
        assert f"use the config it was trained with ({trained.parent.parent / 'config.yaml'})" in error


def test_a_dem_checkpoint_given_to_the_meg_config(tmp_path: Path, capsys) -> None:
    """The issue's case: it trained a DEM and exited 0. (A checkpoint with only what the check reads.)"""
    path = tmp_path / "dem.ckpt"
    hparams = {"_class_path": "lightning_ebm.models.DEM", "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    torch.save({"state_dict": {}, "hyper_parameters": hparams, FORMAT_KEY: 2, "global_step": 0}, path)
    assert run_cli(["fit", "--config", "meg_toy", "--ckpt_path", str(path)]) == 2
    error = error_of(capsys)
    assert "checkpoint of lightning_ebm.models.DEM, but the config's model is lightning_ebm.models.MEG" in error


def test_a_checkpoint_of_lightning_ebm_0_1(trained: Path, tmp_path: Path, capsys) -> None:
    checkpoint = torch.load(trained, weights_only=False)
    del checkpoint[FORMAT_KEY]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    expected = (
        f"{old} was written by lightning-ebm 0.1 (checkpoint format 1); this lightning-ebm reads format 2: retrain, "
        "or evaluate it with lightning-ebm 0.1"
    )
    for sub in ("fit", "test"):
        assert run_cli([sub, "--config", str(tiny_config(tmp_path)), "--ckpt_path", str(old)]) == 2
        assert error_of(capsys) == f"error: {expected}"
    with pytest.raises(UserError, match="written by a newer lightning-ebm"):
        check_checkpoint_format({FORMAT_KEY: 3}, old)
    check_checkpoint_format({FORMAT_KEY: 2})


def test_resuming_refuses_model_options_that_differ_from_the_checkpoint(trained: Path, tmp_path: Path, capsys) -> None:
    args = ["fit", "--config", str(tiny_config(tmp_path)), "--ckpt_path", str(trained), "--trainer.max_epochs", "3"]
    assert run_cli([*args, "--model.init_args.hidden", "16", "--model.init_args.lr", "0.05"]) == 2  # lr: as trained
    error = error_of(capsys)
    assert "--model.init_args.hidden 16 (the checkpoint has 8): a resumed fit keeps the checkpoint's" in error
    assert "lr" not in error and "drop this option to resume, or start a new fit" in error


def test_a_config_whose_settings_differ_resumes_with_the_checkpoints_and_says_so(trained, tmp_path, capsys) -> None:
    config = tiny_config(tmp_path, hidden=16, noise_std=0.5)
    assert run_cli(["fit", "--config", str(config), "--ckpt_path", str(trained), "--trainer.max_epochs", "3"]) == 0
    err = capsys.readouterr().err
    assert "note: the checkpoint's model settings replace the config's: hidden 8 (config: 16), noise_std 1.0 " in err
    saved = yaml.safe_load((tmp_path / "logs" / "tiny" / "version_0" / "config.yaml").read_text())
    assert saved["model"]["init_args"]["hidden"] == 8 and saved["model"]["init_args"]["noise_std"] == 1.0


def test_another_data_shape_is_refused(trained: Path, tmp_path: Path, capsys) -> None:
    config = tiny_config(tmp_path, data_shape=[3])
    assert run_cli(["test", "--config", str(config), "--ckpt_path", str(trained)]) == 2
    assert "holds a model of data shaped [2], but the config's data_shape is [3]" in error_of(capsys)


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_evaluation_applies_the_command_lines_model_options_and_records_them(trained: Path, tmp_path: Path) -> None:
    """validate/test/predict: the checkpoint's hyper-parameters replace the config's, but not what the
    command line gives (sampler settings such as ``--model.init_args.mcmc_steps 0``)."""
    config = tiny_config(tmp_path, noise_std=3.0)  # the config file's value: the checkpoint's (1.0) wins
    argv = ["test", "--config", str(config), "--ckpt_path", str(trained), "--model.init_args.noise_std", "0.25"]
    cli = EBMCLI(args=resolve_config_args(argv))  # runs the test
    assert cli.model.hparams.noise_std == 0.25 and cli.model.hparams.hidden == 8 and cli.model.hparams.lr == 0.05
    saved = yaml.safe_load((tmp_path / "logs" / "tiny" / "version_0" / "config.yaml").read_text())
    assert saved["model"]["init_args"]["noise_std"] == 0.25 and saved["model"]["init_args"]["hidden"] == 8
    assert run_cli([*argv, "--model.init_args.lr", "0.5"]) == 0
    saved = yaml.safe_load((tmp_path / "logs" / "tiny" / "version_1" / "config.yaml").read_text())
    assert saved["model"]["init_args"]["lr"] == 0.5 and saved["model"]["init_args"]["noise_std"] == 0.25


def test_evaluation_with_another_architecture_on_the_command_line(trained: Path, tmp_path: Path, capsys) -> None:
    argv = ["test", "--config", str(tiny_config(tmp_path)), "--ckpt_path", str(trained)]
    assert run_cli([*argv, "--model.init_args.hidden", "16"]) == 2
    error = error_of(capsys)
    assert "the checkpoint's weights do not fit the model" in error and "size mismatch" in error
    assert "Fix: drop --model.init_args.hidden 16" in error


def test_ckpt_path_last_resumes_the_newest_run_of_the_config(trained: Path, tmp_path: Path, capsys) -> None:
    config = tiny_config(tmp_path)
    assert run_cli(["fit", "--config", str(config), "--ckpt_path", "last"]) == 2
    error = error_of(capsys)
    assert f"--ckpt_path last: no last checkpoint (last.ckpt) was found in {tmp_path / 'logs' / 'tiny' / '*'}" in error
    assert run_cli(["fit", "--config", str(config), "--trainer.max_epochs", "1"]) == 0
    last = tmp_path / "logs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    assert run_cli(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_epochs", "2"]) == 0
    assert f"note: --ckpt_path last: resuming {last}" in capsys.readouterr().err
    resumed = tmp_path / "logs" / "tiny" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(resumed, weights_only=False)["global_step"] == 8  # 4 batches more than the first run's
    # best: the best checkpoint that the newest run recorded
    best = torch.load(resumed, weights_only=False)["callbacks"]
    best = next(state["best_model_path"] for state in best.values() if "best_model_path" in state)
    assert Path(best).parent == resumed.parent and Path(best).is_file()
    assert run_cli(["test", "--config", str(config), "--ckpt_path", "best"]) == 0
    assert f"note: --ckpt_path best: evaluating {best}" in capsys.readouterr().err


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temporary_files_of_killed_writes_are_removed_at_the_next_start(trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "logs" / "tiny" / "version_0" / "checkpoints"
    run.mkdir(parents=True)
    stale = run / f".last.ckpt.{_dead_pid()}.abcd1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = run / f".last.ckpt.{__import__('os').getpid()}.abcd1234.tmp"  # a write in progress: ours
    live.write_bytes(b"half")
    others = [run / "notes.tmp", run / ".hidden.tmp", run / "last.ckpt.tmp"]
    for other in others:
        other.write_bytes(b"not ours")
    assert remove_stale_temporary_files(run) == [stale]
    live.unlink()
    stale.write_bytes(b"half a checkpoint")  # a run killed while writing, then started again
    assert run_cli(["fit", "--config", str(tiny_config(tmp_path)), "--trainer.max_epochs", "1"]) == 0
    assert not stale.exists() and all(other.exists() for other in others)
    # the writer also cleans a directory it writes into
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / stale.name).write_bytes(b"half")
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, target / "last.ckpt")
    assert sorted(p.name for p in target.iterdir()) == ["last.ckpt"]
