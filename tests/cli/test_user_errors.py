"""Mistakes a user can make print one ``error:`` line naming the problem and the fix, exit with status
2, and leave the checkpoints already written as they were; never a traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from helpers.cli import run_cli
from tiny_cli_model import tiny_config

from lightning_ebm.cli import check_resumable
from lightning_ebm.errors import UserError
from lightning_ebm.plugins import FORMAT_KEY

# ---------------------------------------------------------------------------------------------------
# The only tests here that name options of the shipped methods (the CURRENT names, which are being
# changed to injected optimiser specs): adapt these two lists when the methods' options change.
SHIPPED_MODEL_MISTAKES = [
    ("dem_toy", ["--model.init_args.mcmc_steps", "-1"], "mcmc_steps"),
    ("meg_toy", ["--model.init_args.energy_steps", "0"], "energy_steps"),
    ("dem_toy", ["--model.init_args.sample_noise_std", "-1"], "sample_noise_std"),
    ("meg_toy", ["--model.init_args.latent_dim", "3"], "latent_dim"),  # the generator takes 2
    ("dem_toy", ["--model.init_args.data_shape", "[3]"], "data_shape"),  # the networks take 2
    ("jem_toy", ["--model.init_args.num_classes", "5", "--model.init_args.buffer_size", "100"], "num_classes"),
    ("jem_toy", ["--model.init_args.reinit_prob", "1.5"], "reinit_prob"),
    ("dem_toy", ["--model.init_args.lr_schedule", "lightning_ebm.optim.Schedule",
                 "--model.init_args.lr_schedule.linear_decay_start", "1.5"], "linear_decay_start"),  # fmt: skip
    ("rbm_mnist", ["--model.init_args.num_chains", "0"], "num_chains"),
    ("dem_toy", ["--trainer.max_epochs", "-5"], "max_epochs"),
]
# ---------------------------------------------------------------------------------------------------


def error_of(capsys: pytest.CaptureFixture[str]) -> str:
    """The ``error:`` line of a failed run, after checking that there is one and no traceback."""
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, captured.err[-3000:]
    return errors[0]


def fit(config: Path, *extra: str) -> int:
    return run_cli(["fit", "--config", str(config), *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of a 2-epoch run of the tiny model (written once for this module; copy it to change it)."""
    directory = tmp_path_factory.mktemp("trained")
    assert fit(tiny_config(directory)) == 0
    return directory / "logs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("name,args,option", SHIPPED_MODEL_MISTAKES)
def test_a_setting_that_a_shipped_model_refuses(name: str, args: list[str], option: str, capsys) -> None:
    assert run_cli(["fit", "--config", name, *args]) == 2
    error = error_of(capsys)
    assert option in error and ("Fix:" in error or "use -1" in error) and "Namespace(" not in error
    assert len(capsys.readouterr().err.splitlines()) <= 3


def test_a_constructor_value_error_is_one_line_naming_the_option(tmp_path: Path, capsys) -> None:
    assert fit(tiny_config(tmp_path, noise_std=0.0)) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) <= 3
    assert (
        "error: TinyEBM: noise_std must be positive, got 0.0. Fix: change --model.init_args.noise_std" in captured.err
    )


def test_a_negative_learning_rate(tmp_path: Path, capsys) -> None:
    assert fit(tiny_config(tmp_path, lr=-0.1)) == 2
    error = error_of(capsys)
    assert "Invalid learning rate: -0.1" in error and "--model.init_args.lr -0.1" in error and "Fix:" in error


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "directory"])
def test_an_unusable_ckpt_path(trained: Path, tmp_path: Path, damage: str, capsys) -> None:
    path = tmp_path / "damaged.ckpt"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    elif damage == "directory":
        path.mkdir()
    expected = {"missing": "no such file", "empty": "is empty (0 bytes)", "truncated": "truncated or not a checkpoint",
                "directory": "is a directory"}[damage]  # fmt: skip
    for sub in ("fit", "test"):
        assert run_cli([sub, "--config", str(tiny_config(tmp_path)), "--ckpt_path", str(path)]) == 2
        assert f"--ckpt_path {path}" in (error := error_of(capsys)) and expected in error
    assert not (tmp_path / "logs").exists()  # refused before anything was written


def test_resuming_with_max_epochs_already_reached(trained: Path, tmp_path: Path, capsys) -> None:
    before = trained.read_bytes()
    for epochs in ("1", "2"):  # below, and equal to, the 2 epochs of the checkpoint
        assert fit(tiny_config(tmp_path), "--trainer.max_epochs", epochs, "--ckpt_path", str(trained)) == 2
        error = error_of(capsys)
        assert "has already trained 2 epochs" in error and "set --trainer.max_epochs above 2" in error
    assert trained.read_bytes() == before
    assert fit(tiny_config(tmp_path), "--trainer.max_epochs", "3", "--ckpt_path", str(trained)) == 0
    resumed = torch.load(tmp_path / "logs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == 12 and resumed[FORMAT_KEY] == 2


def test_an_unwritable_log_directory(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("not a directory")
    save_dir = tmp_path / "afile" / "sub"
    assert fit(tiny_config(tmp_path), "--trainer.logger.init_args.save_dir", str(save_dir)) == 2
    error = error_of(capsys)
    assert f"cannot write the run's files to {save_dir}" in error and f"{tmp_path / 'afile'} is a file" in error
    assert "--trainer.logger.init_args.save_dir" in error


def test_a_full_disk_while_writing_a_checkpoint(tmp_path: Path, monkeypatch, capsys) -> None:
    """The writes of the second epoch fail halfway with ENOSPC: a short error naming the file and the
    full disk; the first epoch's checkpoints are intact and no temporary file is left."""
    real_save = torch.save

    def fill_the_disk_in_the_second_epoch(obj, f, *args, **kwargs) -> None:  # noqa: ANN001
        if obj["global_step"] <= 4:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", fill_the_disk_in_the_second_epoch)
    assert fit(tiny_config(tmp_path)) == 2
    monkeypatch.setattr(torch, "save", real_save)
    checkpoints = tmp_path / "logs" / "tiny" / "version_0" / "checkpoints"
    error = error_of(capsys)
    assert f"the disk is full: could not write {checkpoints}{os.sep}" in error and "No space left on device" in error
    assert "checkpoint" in error.split("is intact")[0].split("; the previous")[1] and "Fix: free space" in error
    assert not [p for p in checkpoints.iterdir() if not p.name.endswith(".ckpt")]  # no temporary file left
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == 4  # the first epoch's


def test_a_full_disk_while_writing_logs(tmp_path: Path, capsys) -> None:
    log = tmp_path / "logs" / "tiny" / "version_0" / "events.out"
    args = ["--trainer.callbacks+=tiny_cli_model.DiskFullAt", "--trainer.callbacks.filename", str(log)]
    assert fit(tiny_config(tmp_path), *args) == 2
    error = error_of(capsys)
    assert f"error: the disk is full: could not write {log} (No space left on device). Fix: free space" in error
    last = tmp_path / "logs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4  # the checkpoint of epoch 0 is intact


def test_resuming_a_checkpoint_at_max_steps() -> None:
    checkpoint = {"global_step": 50, "loops": {"fit_loop": {"epoch_progress": {"current": {"processed": 3}}}}}
    check_resumable(checkpoint, Path("a.ckpt"), {"max_epochs": None, "max_steps": 51})
    with pytest.raises(UserError, match=r"a.ckpt is at step 50 and --trainer.max_steps is 50, so there is nothing"):
        check_resumable(checkpoint, Path("a.ckpt"), {"max_epochs": None, "max_steps": 50})
    with pytest.raises(UserError, match="has already trained 1000 epochs"):  # Lightning's default: 1000 epochs
        check_resumable({**checkpoint, "loops": {"fit_loop": {"epoch_progress": {"current": {"processed": 1000}}}}},
                        Path("a.ckpt"), {"max_epochs": None, "max_steps": -1})  # fmt: skip


def test_data_that_gives_no_batch_is_an_error_not_an_empty_success(tmp_path: Path, capsys) -> None:
    """Fewer examples than one batch (the last batch dropped): Lightning trains nothing and exits 0,
    as a DDP run does when the data gives no batch per process."""
    assert fit(tiny_config(tmp_path), "--data.init_args.num_examples", "8") == 2
    error = error_of(capsys)
    assert "the training data gives no complete batch of 16" in error and "nothing was trained" in error
    assert "--data.batch_size" in error


def test_the_checkpoints_line_names_what_exists(tmp_path: Path, capsys) -> None:
    assert fit(tiny_config(tmp_path), "--trainer.max_epochs", "1") == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("Checkpoints:"))
    checkpoints = tmp_path / "logs" / "tiny" / "version_0" / "checkpoints"
    assert line.startswith(f"Checkpoints:    {checkpoints} (") and line.endswith(")")
    names = line[len(f"Checkpoints:    {checkpoints} (") : -1].split(", ")
    assert "last.ckpt" in names and all((checkpoints / name).is_file() for name in names)
    no_checkpoints = ["--checkpoint.save_last", "false", "--checkpoint.save_top_k", "0"]
    assert fit(tiny_config(tmp_path), *no_checkpoints, "--trainer.max_epochs", "1") == 0
    assert "Checkpoints:    none written" in capsys.readouterr().out
