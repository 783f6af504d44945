"""Tests of nnteleport.ensembles: model averaging, snapshot ensembles, SGDR and diversity measures."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from nnteleport.ensembles import (
    SnapshotEnsemble,
    diversity_report,
    ensemble_probs,
    error_correlation,
    pairwise_disagreement,
    sgdr_scheduler,
    sgdr_snapshot_epochs,
)


def small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()


def test_ensemble_probs_weighted_average():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 5, 4, generator=g, dtype=torch.float64), -1)
    torch.testing.assert_close(ensemble_probs(probs), probs.mean(0), rtol=1e-15, atol=0)
    w = [1.0, 2.0, 5.0]
    expected = (probs[0] * 1 + probs[1] * 2 + probs[2] * 5) / 8
    torch.testing.assert_close(ensemble_probs(probs, w), expected, rtol=1e-15, atol=0)
    torch.testing.assert_close(ensemble_probs(probs, w).sum(-1), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="got 2 weights for 3 members"):
        ensemble_probs(probs, [1.0, 1.0])
    with pytest.raises(ValueError, match="weights must be >= 0"):
        ensemble_probs(probs, [1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match=r"expected member probabilities \(M, N, K\)"):
        ensemble_probs(probs[0])


def test_snapshot_ensemble_matches_members_including_buffers():
    model = small_net(0)
    x = torch.randn(16, 4, dtype=torch.float64)
    ens = SnapshotEnsemble(model)
    members = []
    for step in range(3):
        model.train()
        with torch.no_grad():  # change weights and BatchNorm running statistics
            model(x * (step + 1))
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        ens.add_snapshot(model)
        members.append(copy.deepcopy(model).eval())
    expected = torch.stack([torch.softmax(m(x), -1) for m in members]).detach()
    torch.testing.assert_close(ens.member_probs(x), expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(ens.member_probs(x, batch_size=5), expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(ens(x), expected.mean(0), rtol=1e-14, atol=0)
    torch.testing.assert_close(ens.predict_proba(x, [0, 0, 1]), expected[2], rtol=1e-14, atol=0)
    # resume
    restored = SnapshotEnsemble(small_net(5))
    restored.load_state_dict(ens.state_dict())
    torch.testing.assert_close(restored(x), ens(x), rtol=0, atol=0)


def test_snapshot_ensemble_errors():
    ens = SnapshotEnsemble(small_net(0))
    with pytest.raises(ValueError, match="no snapshots yet"):
        ens(torch.zeros(2, 4, dtype=torch.float64))
    wider = nn.Sequential(nn.Linear(4, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3)).double()
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(7, 4\), expected \(6, 4\)"):
        ens.add_snapshot(wider)
    with pytest.raises(ValueError, match="lacks"):
        ens.add_snapshot(nn.Linear(4, 3))


def test_sgdr_schedule_and_snapshot_epochs():
    assert sgdr_snapshot_epochs(2, 2, 14) == [2, 6, 14]
    assert sgdr_snapshot_epochs(3, 1, 10) == [3, 6, 9]
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = sgdr_scheduler(opt, cycle_len=2, cycle_mult=2, eta_min=0.01)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()

    def closed_form(e):  # cycles [0, 2), [2, 6), [6, 14)
        start, length = (0, 2) if e < 2 else ((2, 4) if e < 6 else (6, 8))
        return 0.01 + (0.1 - 0.01) * (1 + math.cos(math.pi * (e - start) / length)) / 2

    assert lrs == pytest.approx([closed_form(e) for e in range(8)], rel=1e-12)
    with pytest.raises(ValueError, match="cycle_len >= 1"):
        sgdr_scheduler(opt, 0)


def test_disagreement_and_error_correlation():
    # members predict classes (argmax of one-hot rows); targets all class 0
    preds = torch.tensor([[0, 0, 1, 1, 0, 2], [0, 1, 1, 0, 0, 2], [1, 1, 0, 0, 0, 0]])
    probs = torch.nn.functional.one_hot(preds, 3).double()
    targets = torch.zeros(6, dtype=torch.long)
    dis = pairwise_disagreement(probs)
    expected = torch.tensor([[(preds[i] != preds[j]).double().mean() for j in range(3)] for i in range(3)])
    torch.testing.assert_close(dis, expected.double(), rtol=0, atol=0)
    err = (preds != 0).numpy().astype(float)
    torch.testing.assert_close(error_correlation(probs, targets), torch.from_numpy(np.corrcoef(err)))
    # a member without errors has an undefined correlation
    perfect = torch.cat([probs, torch.nn.functional.one_hot(torch.zeros(1, 6, dtype=torch.long), 3).double()])
    corr = error_correlation(perfect, targets)
    assert torch.isnan(corr[3]).all() and not torch.isnan(corr[:3, :3]).any()

    rep = diversity_report(probs, targets)
    assert rep["member_accuracy"] == pytest.approx([3 / 6, 3 / 6, 4 / 6])
    assert rep["ensemble_accuracy"] == pytest.approx(float((probs.mean(0).argmax(-1) == 0).double().mean()))
    off = ~torch.eye(3, dtype=torch.bool)
    assert rep["mean_disagreement"] == pytest.approx(float(expected[off].mean()))
    assert rep["mean_error_correlation"] == pytest.approx(float(np.corrcoef(err)[off.numpy()].mean()))
