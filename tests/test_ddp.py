"""Teleportation, G-space optimisers and weight fixing inside DistributedDataParallel training (issue 17).

Two processes on the gloo back-end (CPU, float64), each with its own half of the batch, its own initial weights
(DDP must replace rank 1's by rank 0's) and its own generator (the CoB must still be one for both): after a few
steps both ranks hold bit-identical parameters, equal to a single-process run on the whole batch up to float64
round-off (DDP averages two half-batch gradients where the reference takes one mean).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

import nnteleport
from nnteleport.distributed import broadcast_cob, max_rank_difference, sync_module, teleport_ddp, unwrap
from nnteleport.errors import InvalidValueError

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")

WORLD = 2
N = 4  # rows per rank
STEPS = 3
SCENARIOS = ("teleport", "gsgd", "fixing")


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(WORLD * N, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (WORLD * N,), generator=g)
    return x, y


def make_model(scenario: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    act = nn.Tanh if scenario == "teleport" else nn.ReLU  # tanh: the teleport needs TeleportedActivation wrappers
    return nn.Sequential(nn.Linear(5, 8), act(), nn.Linear(8, 6), act(), nn.Linear(6, 3)).double()


def train(scenario: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, teleport, log: dict) -> None:
    """The same training code for DDP ranks (``model`` the wrapper, ``x, y`` the rank's shard) and the reference.

    ``teleport(model, x, seed)`` applies one CoB sampled from ``seed``; ``log["grads"]`` collects the
    gradients right after the first backward following a teleport (DDP must have averaged them).
    """
    inner = unwrap(model)
    loss_fn = nn.CrossEntropyLoss()
    if scenario == "teleport":
        teleport(model, x, 10)
        opt: torch.optim.Optimizer = torch.optim.SGD(inner.parameters(), lr=0.1, momentum=0.9)
    elif scenario == "gsgd":
        opt = nnteleport.GSpaceOptimizer(inner, torch.optim.SGD, lr=1e-2, momentum=0.9, reparametrize=True)
    else:
        opt = torch.optim.SGD(inner.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        log["fixed"] = nnteleport.fix_weights(inner, value=1.0, select="hungarian", optimizer=opt)
    for step in range(STEPS):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        if step == 0:
            log["grads"] = [p.grad.clone() for p in inner.parameters()]
        opt.step()
        if scenario == "teleport" and step == 1:  # a second teleport mid-training, then the last step
            teleport(model, x, 11)


def _ddp_teleport(model: nn.Module, x: torch.Tensor, seed: int) -> None:
    rank = torch.distributed.get_rank()
    g = torch.Generator().manual_seed(seed + 1000 * rank)  # every rank its own stream: rank 0's CoB must win
    teleport_ddp(model, x, cob_range=0.9, sampling="inter", generator=g)


def _reference_teleport(model: nn.Module, x: torch.Tensor, seed: int) -> None:
    cob = nnteleport.sample_cob(model, x, 0.9, "inter", torch.Generator().manual_seed(seed))
    nnteleport.teleport(model, x, cob, inplace=True)


def _worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                                         world_size=WORLD)  # fmt: skip
    try:
        x, y = data()
        xs, ys = x[rank * N : (rank + 1) * N], y[rank * N : (rank + 1) * N]
        out = {}
        for scenario in SCENARIOS:
            model = nn.parallel.DistributedDataParallel(make_model(scenario, seed=rank))  # rank 0's weights win
            log: dict = {}
            train(scenario, model, xs, ys, teleport=_ddp_teleport, log=log)
            fixed = log.get("fixed")
            masks = {} if fixed is None else fixed.masks
            out[scenario] = {
                "state": {k: v.clone() for k, v in model.module.state_dict().items()},
                "grads": log["grads"],
                "apart": max_rank_difference(model),
                "fixed_grads": [
                    float(p.grad[masks[n]].abs().max()) for n, p in model.module.named_parameters() if n in masks
                ],
                "wrappers": sum(isinstance(m, nnteleport.TeleportedActivation) for m in model.module.modules()),
            }
        # the helpers' own checks: a CoB of another layout is refused on every rank; sync_module copies rank 0
        bad = {"a": torch.ones(3 + rank)}
        try:
            broadcast_cob(bad)
            out["refused"] = False
        except InvalidValueError:
            out["refused"] = True
        m = make_model("gsgd", seed=rank)
        out["apart_before_sync"] = max_rank_difference(m)
        sync_module(m)
        out["apart_after_sync"] = max_rank_difference(m)
        rank0 = make_model("gsgd", seed=0).state_dict()
        out["synced_equals_rank0"] = all(torch.equal(v, rank0[k]) for k, v in m.state_dict().items())
        torch.save(out, Path(folder) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.multiprocessing.spawn(_worker, args=(str(folder),), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def reference(scenario: str) -> tuple[dict, dict]:
    x, y = data()
    model = make_model(scenario, seed=0)
    log: dict = {}
    train(scenario, model, x, y, teleport=_reference_teleport, log=log)
    return model.state_dict(), log


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ranks_identical_and_equal_to_one_process_on_the_whole_batch(ranks, scenario):
    r0, r1 = ranks[0][scenario], ranks[1][scenario]
    assert r0["apart"] == 0.0 and r1["apart"] == 0.0
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # DDP averaged the gradients (after the in-place teleport too): the same on both ranks
    for g0, g1 in zip(r0["grads"], r1["grads"]):
        assert torch.equal(g0, g1)
    ref_state, ref_log = reference(scenario)
    assert ref_state.keys() == r0["state"].keys()
    for k, v in ref_state.items():
        torch.testing.assert_close(r0["state"][k], v, rtol=0, atol=1e-12, msg=k)
    for g, rg in zip(r0["grads"], ref_log["grads"]):
        torch.testing.assert_close(g, rg, rtol=0, atol=1e-12)
    start = make_model(scenario, seed=0).state_dict()
    moved = max(float((ref_state[k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-3  # the runs did move the weights
    if scenario == "teleport":
        assert r0["wrappers"] == 2  # tanh neurons: TeleportedActivation wrappers inside the DDP module
    if scenario == "fixing":
        assert r0["fixed_grads"] == [0.0, 0.0]  # DDP averaged the zeroed gradients of the fixed entries
        fixed = ref_log["fixed"]
        for name, mask in fixed.masks.items():
            assert torch.equal(r0["state"][name][mask].abs(), torch.ones(int(mask.sum()), dtype=torch.float64))


def test_the_two_ranks_did_differ_before_ddp():
    a, b = make_model("gsgd", 0).state_dict(), make_model("gsgd", 1).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_helpers_refuse_mismatch_and_sync(ranks):
    assert ranks[0]["refused"] and ranks[1]["refused"]  # both ranks raise, none hangs
    assert ranks[0]["apart_before_sync"] > 0 and ranks[0]["apart_after_sync"] == 0.0
    assert ranks[1]["synced_equals_rank0"]


def test_helpers_need_an_initialised_process_group():
    model = make_model("gsgd", 0)
    with pytest.raises(InvalidValueError, match=r"teleport_ddp: torch\.distributed is not initialised"):
        teleport_ddp(model, torch.zeros(2, 5, dtype=torch.float64))
    assert unwrap(model) is model
