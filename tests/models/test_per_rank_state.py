"""Persistent state saved by N processes and resumed on M, for every method that keeps some (PCD's chains
and their hidden states, every DBN/DBM layer's chains, the DBM's fantasy particles, JEM's replay
buffer): every process gets an equal share (DDP gathers them at each checkpoint), taken from the
pooled states, JEM's slots keeping their class labels, and every process its own random stream."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch

from lightning_ebm.models import DBM, DBN, JEM, RBM
from lightning_ebm.models.base import share_out
from lightning_ebm.nn import MLP


def models() -> dict[str, Callable[[], torch.nn.Module]]:
    return {
        "rbm_pcd": lambda: RBM(9, 6, method="pcd", num_chains=7, num_filters=0),
        "dbn_pcd": lambda: DBN([9, 6, 5], layer_epochs=[1, 1], method="pcd", num_chains=7, num_filters=0),
        "dbm": lambda: DBM([9, 6, 5], layer_epochs=[1, 1], method="pcd", layer_num_chains=7, num_chains=7),
        "jem": lambda: JEM(MLP(2, [8], 4), num_classes=4, data_shape=[2], buffer_size=8),
    }


def saved_state(name: str, processes: int) -> dict[str, torch.Tensor]:
    """What ``processes`` processes of the method would have saved: state ``i`` of process ``r`` holds the
    value ``1000 r + i`` everywhere, so a share tells where each of its states came from."""
    if name == "jem":
        shapes = {"replay_buffer": (8, 2)}
    elif name == "rbm_pcd":
        shapes = {"persistent_chains": (7, 9), "persistent_hidden": (7, 6)}
    else:
        shapes = {"layers.0.persistent_chains": (7, 9), "layers.0.persistent_hidden": (7, 6),
                  "layers.1.persistent_chains": (7, 6), "layers.1.persistent_hidden": (7, 5)}  # fmt: skip
        if name == "dbm":
            shapes["persistent_chains"] = (7, 9 + 6 + 5)
    return {
        key: torch.stack([(1000 * r + torch.arange(n)).double().view(n, 1).expand(n, *rest) for r in range(processes)])
        for key, (n, *rest) in shapes.items()
    }


def resume(name: str, state: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    model = models()[name]().double()
    model._trainer = SimpleNamespace(global_rank=rank, world_size=world)  # type: ignore[assignment]
    model.on_load_checkpoint({"lightning_ebm_format": 2, "per_rank_state": state})
    return {k: v.clone() for k, v in model.per_rank_state().items()}


@pytest.mark.parametrize("name", sorted(models()))
@pytest.mark.parametrize(("saved", "resumed"), [(1, 2), (2, 1), (1, 3), (3, 2)])
def test_states_are_pooled_and_shared_out_equally(name: str, saved: int, resumed: int) -> None:
    state = saved_state(name, saved)
    shares = [resume(name, state, r, resumed) for r in range(resumed)]
    for key, pooled in state.items():
        origin = pooled.reshape(-1, *pooled.shape[2:])[:, 0]  # 1000 r + i of every saved state
        got = [share[key] for share in shares]
        assert len({g.shape for g in got}) == 1, (key, [g.shape for g in got])  # the same share everywhere
        total = sum(g.shape[0] for g in got)
        assert total >= min(origin.numel(), resumed)  # nothing dropped but what does not divide evenly
        assert total > origin.numel() - resumed * (4 if name == "jem" else 1)
        for g in got:  # every state is one of the pooled ones, untouched
            assert torch.isin(g[:, 0], origin).all() and (g == g[:, :1]).all()
        if name == "jem":  # slot j of a buffer holds a state that sat in a slot of class j % 4
            for g in got:
                saved_slot = (g[:, 0] % 1000).long()
                assert torch.equal(saved_slot % 4, torch.arange(g.shape[0]) % 4)
            assert all(g.shape[0] % 4 == 0 for g in got)
    if "persistent_hidden" in state:  # a chain's hidden state stays with its visible state
        for share in shares:
            assert torch.equal(share["persistent_chains"][:, 0], share["persistent_hidden"][:, 0])


def test_share_out_by_hand() -> None:
    assert share_out(torch.arange(14), 1).tolist() == [list(range(14))]
    assert share_out(torch.arange(14), 2).tolist() == [list(range(7)), list(range(7, 14))]
    assert share_out(torch.arange(14), 3).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]  # 12, 13 left out
    assert share_out(torch.arange(8), 3, granule=4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]  # repeated


def test_a_run_resumed_on_another_number_of_processes_gives_each_process_its_own_stream() -> None:
    """Saved by 1 process, resumed on 2: both start from the saved stream, then process 1 reseeds from
    its rank (the saved per-process streams do not fit), so their chains do not move in lockstep."""
    import lightning_ebm.rng as rng

    state = {"rng_states": rng.rng_states(), "rng_states_per_rank": [rng.rng_states()], "lightning_ebm_format": 2}
    draws = []
    for rank in (0, 1):
        model = RBM(4, 3, method="pcd", num_filters=0)
        model._trainer = SimpleNamespace(global_rank=rank, world_size=2)  # type: ignore[assignment]
        model.on_load_checkpoint(dict(state))
        draws.append(torch.rand(5))
    assert not torch.equal(draws[0], draws[1])
