"""Running the command line in-process, and shrunk copies of the shipped configs."""

from __future__ import annotations

from pathlib import Path

import yaml

from lightning_ebm.cli import CONFIG_DIR, main


def run_cli(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code or 0)


def small_config(tmp_path: Path, name: str) -> Path:
    """The shipped config with cheap AIS settings, for a quick run."""
    config = yaml.safe_load((CONFIG_DIR / name).read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("AISLogLikelihood"):
            callback["init_args"].update(num_betas=300, test_num_betas=300, num_chains=20, max_examples=1000)
        if callback["class_path"].endswith("SampleGrid"):
            callback["init_args"]["num_samples"] = 16
    config["model"]["init_args"]["sample_steps"] = 20
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path
