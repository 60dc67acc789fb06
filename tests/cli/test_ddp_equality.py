"""Under two-process CPU DDP each method's update equals the one-process update on the same global
batch (``tests/helpers/ddp_equality.py`` says what is held equal between the runs and why), the
parameters are identical on both processes, and each process's chains are its share of the chains
of the one-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ddp_equality
from helpers.ddp_equality import CASES, run_case

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every case trained once under 2-process CPU DDP (one launch for all of them)."""
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(TESTS / "helpers" / "ddp_equality.py"), str(out), *CASES, "--devices", "2"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=out)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def load(directory: Path, case: str) -> list[dict[str, torch.Tensor]]:
    return [torch.load(directory / f"{case}_rank{r}.pt", weights_only=True) for r in range(2)]


def one_process(tmp_path: Path, case: str) -> dict[str, torch.Tensor]:
    run_case(case, tmp_path, devices=1)
    return torch.load(tmp_path / f"{case}_rank0.pt", weights_only=True)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys) -> None:
    for key in keys:
        torch.testing.assert_close(a[key], b[key], rtol=1e-7, atol=1e-8, msg=key)


@pytest.mark.parametrize("case", [c for c in CASES if c != "dem_nosync"])
def test_two_process_step_equals_the_one_process_step(case: str, two_processes: Path, tmp_path: Path) -> None:
    ranks = load(two_processes, case)
    single = one_process(tmp_path, case)
    initial, *_ = ddp_equality.build(case)
    params = [k for k, _ in initial.named_parameters()]
    chains = [k for k in single if k.startswith("per_rank.")]
    shared = [k for k in single if not k.startswith("per_rank.")]  # parameters and buffers
    # the run did something: every parameter tensor of the trained layers moved
    moved = [k for k in params if not torch.allclose(single[k], initial.state_dict()[k].double())]
    assert len(moved) >= len(params) // 2, moved
    for key in shared:  # identical on both processes: parameters, BN running statistics, counters
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert_same(ranks[0], single, shared)  # the one-process update
    for key in chains:  # per-process chains: each process's share of the global run's chains
        assert ranks[0][key].shape[0] * 2 == single[key].shape[0]
        assert_same({key: torch.cat([ranks[0][key], ranks[1][key]])}, single, [key])
        assert not torch.equal(ranks[0][key], ranks[1][key])


def test_without_sync_batchnorm_the_generator_sees_per_process_statistics(two_processes: Path, tmp_path: Path) -> None:
    """The control of the DEM case: with plain batch norm each process normalises by its own half
    of the batch, so the update is not the one-process update and the running statistics differ
    between processes; the shipped image configs therefore set ``sync_batchnorm``."""
    ranks = load(two_processes, "dem_nosync")
    single = one_process(tmp_path, "dem_nosync")
    generator = [k for k in single if k.startswith("generator.") and not k.endswith("num_batches_tracked")]
    assert any(not torch.allclose(ranks[0][k], single[k], atol=1e-6) for k in generator)
    assert not torch.equal(ranks[0]["generator.net.1.running_mean"], ranks[1]["generator.net.1.running_mean"])
