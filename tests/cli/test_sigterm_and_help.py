"""SIGTERM stops a fit with a non-zero status after writing its last checkpoint, and prints the command
that resumes it; ``--help`` names the program and the project; ``configs`` lists the shipped configs."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.cli import run_cli
from tiny_cli_model import HERE, tiny_config

import lightning_ebm
from lightning_ebm.cli import CONFIG_DIR, EXIT_SIGTERM, main, shipped_configs
from lightning_ebm.plugins import FORMAT_KEY

TESTS = HERE.parent


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(TESTS), env.get("PYTHONPATH", "")])
    return env


def test_sigterm_stops_a_fit_with_a_checkpoint_and_the_command_that_resumes_it(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    args = ["fit", "--config", str(config), "--trainer.max_epochs", "100000"]
    command = [sys.executable, "-m", "lightning_ebm", *args]
    checkpoints = tmp_path / "logs" / "tiny" / "version_0" / "checkpoints"
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (checkpoints / "last.ckpt").is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (checkpoints / "last.ckpt").is_file(), "no checkpoint was written"
        first = {p.name: p.read_bytes() for p in checkpoints.glob("best-*.ckpt")}  # written earlier
        time.sleep(0.5)  # training on
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == EXIT_SIGTERM != 0, err[-3000:]
    lines = [line for line in (out + err).splitlines() if "SIGTERM" in line and "resume with" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    last = checkpoints / "last.ckpt"
    assert f"; the last checkpoint is {last}; resume with: python -m lightning_ebm fit" in lines[0]
    resume = shlex.split(lines[0].split("resume with: ")[1])
    assert resume[3:] == [*args, "--ckpt_path", str(last)]
    checkpoint = torch.load(last, weights_only=False)  # complete, and of the moment of the signal
    assert checkpoint[FORMAT_KEY] == 2 and checkpoint["global_step"] > 0
    assert all(p.read_bytes() == data for p, data in ((checkpoints / n, d) for n, d in first.items()) if p.exists())
    assert not [p for p in checkpoints.iterdir() if p.suffix != ".ckpt"]
    # the printed command resumes it (here for one more epoch than it had started)
    epoch = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
    assert run_cli([*resume[3:], "--trainer.max_epochs", str(epoch + 1)]) == 0


MAIN = str(Path(lightning_ebm.__file__).parent / "__main__.py")


@pytest.mark.parametrize("argv0,program", [(MAIN, "python -m lightning_ebm"), ("/bin/lightning-ebm", "lightning-ebm")])
def test_help_names_the_program_and_the_project(argv0: str, program: str, monkeypatch, capsys) -> None:
    """``python -m lightning_ebm --help`` (``sys.argv[0]`` is the package's ``__main__.py``) and the
    console script."""
    monkeypatch.setattr(sys, "argv", [argv0, "--help"])
    assert run_cli(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {program} [-c CONFIG] {{fit,validate,test,predict}}") and "__main__" not in out
    assert "lightning-ebm: energy-based models" in out and "Lightning Trainer command line" not in out
    assert "`configs` lists the shipped configs" in out


def test_configs_lists_every_shipped_config_with_its_header(capsys) -> None:
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in shipped_configs():
        first = next(x for x in (CONFIG_DIR / name).read_text().splitlines() if x.strip("# "))
        assert any(x.split()[0] == name.removesuffix(".yaml") and first.strip("# ") in x for x in lines), name
    assert len(lines) == len(shipped_configs()) + 1
