"""The command line, driven through ``main([...])`` with the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lightning_ebm.cli import CONFIG_DIR, main, shipped_configs
from lightning_ebm.models import DEM


def run_cli(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize("name", shipped_configs())
def test_print_config_for_every_shipped_config(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["fit", "--config", name, "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["class_path"].startswith("lightning_ebm.models.")
    assert config["seed_everything"] == 0
    assert config["checkpoint"]["save_last"] is True


def test_configs_are_shipped_inside_the_package_and_linked_at_the_root() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    assert CONFIG_DIR.parent.name == "lightning_ebm"
    assert sorted(p.name for p in root.glob("*.yaml")) == shipped_configs()
    assert {"dem_toy.yaml", "dem_mnist.yaml", "dem_celeba.yaml", "dem_lsun.yaml"} <= set(shipped_configs())


def test_paper_settings_in_the_dem_configs() -> None:
    toy = yaml.safe_load((CONFIG_DIR / "dem_toy.yaml").read_text())["model"]["init_args"]
    assert toy["num_experts"] == 4 and toy["latent_dim"] == 4
    assert toy["energy_optimizer"]["class_path"] == toy["generator_optimizer"]["class_path"] == "torch.optim.Adagrad"
    assert toy["feature_net"]["init_args"]["in_features"] == 2
    assert toy["feature_net"]["init_args"]["hidden"] + [toy["feature_net"]["init_args"]["out_features"]] == [128, 128]
    assert toy["generator"]["init_args"]["hidden"] == [128, 128] and toy["generator"]["init_args"]["batch_norm"]
    mnist = yaml.safe_load((CONFIG_DIR / "dem_mnist.yaml").read_text())["model"]["init_args"]
    assert mnist["num_experts"] == 128 and mnist["latent_dim"] == 10
    for name in ("dem_celeba.yaml", "dem_lsun.yaml"):
        cfg = yaml.safe_load((CONFIG_DIR / name).read_text())["model"]["init_args"]
        assert cfg["num_experts"] == 1024 and cfg["latent_dim"] == 100 and cfg["data_shape"] == [3, 64, 64]
        assert cfg["feature_net"]["init_args"]["base_channels"] == 128


def test_unknown_config_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["fit", "--config", "dem_tyo"]) == 2
    err = capsys.readouterr().err
    assert "unknown config 'dem_tyo'" in err and "Did you mean dem_toy.yaml" in err and "dem_celeba.yaml" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--trainer.max_epohcs", "3"], "unknown option --trainer.max_epohcs (did you mean --trainer.max_epochs"),
        (["--trainer.max_epoch", "3"], "unknown option --trainer.max_epoch "),  # no silent prefix matching
        (["--trainer.max_epochs", "abc"], "--trainer.max_epochs: Expected a <class 'int'>"),
        (["--model.init_args.num_expert", "3"], "'num_expert' is not accepted (did you mean num_experts"),
        (["--model.init_args.num_experts", "many"], "--model.num_experts: Expected a <class 'int'>"),
        (["--data.name", "26gaussians"], "Got value: 26gaussians"),
    ],
)
def test_user_mistakes_are_short_errors(args: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["fit", "--config", "dem_toy", *args]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3


def test_missing_subcommand_and_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--config", "dem_toy"]) == 2
    assert "first argument must be one of fit, validate, test, predict" in capsys.readouterr().err
    config = yaml.safe_load((CONFIG_DIR / "dem_mnist.yaml").read_text())
    del config["data"]
    (tmp_path / "no_data.yaml").write_text(yaml.safe_dump(config))
    assert run_cli(["fit", "--config", str(tmp_path / "no_data.yaml")]) == 2
    assert "no `data:` section" in capsys.readouterr().err


def _fit_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", "dem_toy",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.max_epochs", "2",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.log_every_n_steps", "5",
        "--trainer.limit_train_batches", "20",
        "--trainer.enable_progress_bar", "false",
        "--data.num_samples", "6000",
        *extra,
    ]  # fmt: skip


def test_fit_writes_logs_plots_checkpoints_and_resolved_config(tmp_path: Path, capsys) -> None:
    assert run_cli(_fit_args(tmp_path)) == 0
    run = tmp_path / "dem_toy" / "version_0"
    out = capsys.readouterr().out
    assert f"Logs and plots: {run}" in out and "tensorboard --logdir" in out
    assert (run / "config.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    plots = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert any(p.startswith("samples_") for p in plots) and any(p.startswith("energy_landscape_") for p in plots)
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(p.startswith("best-") for p in ckpts)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run)).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss_energy", "train/loss_generator", "train/energy_data", "train/energy_samples",
                "train/grad_norm_energy", "train/grad_norm_generator", "train/entropy", "toy/modes",
                "toy/hq_fraction", "toy/kl", "val/energy_data"):  # fmt: skip
        assert tag in scalars, tag
    assert {"samples", "energy_landscape"} <= set(events.Tags()["images"])

    # the checkpoint loads with its path alone, and the resolved config reproduces the model
    model = DEM.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert model.sample(5).shape == (5, 2) and model.energy(torch.zeros(3, 2)).shape == (3,)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2 and saved["data"]["init_args"]["num_samples"] == 6000

    # running again into the same directory works (a new version), and so do the other subcommands
    assert run_cli(_fit_args(tmp_path)) == 0
    assert (tmp_path / "dem_toy" / "version_1" / "config.yaml").is_file()
    ckpt = str(run / "checkpoints" / "last.ckpt")
    for sub in ("validate", "test", "predict"):
        args = ["--config", "dem_toy", "--trainer.logger.init_args.save_dir", str(tmp_path),
                "--data.num_samples", "6000", "--trainer.enable_progress_bar", "false"]  # fmt: skip
        assert run_cli([sub, *args, "--ckpt_path", ckpt]) == 0


def test_default_root_dir_moves_logs_plots_and_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shipped config's logger writes to the default ``lightning_logs``, which
    ``--trainer.default_root_dir`` replaces: a 5-step fit leaves everything under that directory and
    nothing in the working directory."""
    for name in shipped_configs():
        logger = yaml.safe_load((CONFIG_DIR / name).read_text())["trainer"]["logger"]
        assert logger["init_args"]["save_dir"] == "lightning_logs", name
    work, root = tmp_path / "work", tmp_path / "root"
    work.mkdir()
    monkeypatch.chdir(work)
    args = ["fit", "--config", "dem_toy", "--trainer.max_steps", "5", "--trainer.limit_val_batches", "1",
            "--trainer.check_val_every_n_epoch", "1", "--trainer.default_root_dir", str(root)]  # fmt: skip
    assert run_cli(args) == 0
    assert list(work.iterdir()) == []
    assert (root / "dem_toy" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert list((root / "dem_toy" / "version_0").glob("events.out.tfevents.*"))
