"""Two-process CPU DDP runs of the command line, with every rank's parameters and metrics recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def fit_two_processes(tmp_path: Path, config: str, *args: str) -> tuple[list[dict], list[dict]]:
    """``fit --config CONFIG ARGS`` on 2 gloo processes (one thread each), logs under ``tmp_path``.

    Returns each rank's parameter digest and logged metrics (``helpers.callbacks.ParameterDigest`` and
    ``MetricsDigest``); fails with the end of the run's stderr if it does not exit 0.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    digest = tmp_path / "digest"
    cmd = [
        sys.executable, "-m", "lightning_ebm", "fit", "--config", config,
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path),
        *args,
        "--trainer.callbacks+=helpers.callbacks.ParameterDigest", "--trainer.callbacks.dirpath", str(digest),
        "--trainer.callbacks+=helpers.callbacks.MetricsDigest", "--trainer.callbacks.dirpath", str(digest),
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    params = [json.loads((digest / f"rank{r}.json").read_text()) for r in range(2)]
    metrics = [json.loads((digest / f"metrics{r}.json").read_text()) for r in range(2)]
    return params, metrics
