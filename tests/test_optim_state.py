"""Optimizer state across a teleport (issue 18): transformed like the gradients, it round-trips and makes
teleport-then-optimize equal to optimizing the original network with per-parameter rates."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nnteleport as nt
from nnteleport.engine.optim_state import parameter_factors, transform_optimizer_state
from nnteleport.errors import InvalidValueError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()


def _steps(model, opt, x, y, n):
    for _ in range(n):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


X = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
        lambda p: torch.optim.Adagrad(p, lr=0.1),
        lambda p: torch.optim.RMSprop(p, lr=1e-2),
    ],
    ids=["momentum", "adam-amsgrad", "adagrad", "rmsprop"],
)
def test_teleport_then_inverse_restores_parameters_and_state(make):
    model = _net()
    opt = make(model.parameters())
    _steps(model, opt, X, Y, 3)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)} for p in model.parameters()}
    cob = nt.sample_cob(model, X, cob_range=0.9, sampling="inter", generator=torch.Generator().manual_seed(3))
    for c in (cob, cob.inverse()):
        f = parameter_factors(model, X, c)
        nt.teleport(model, X, cob=c, inplace=True)
        transform_optimizer_state(opt, model, f)
    moved = False
    for k, v in model.state_dict().items():
        if k in params:
            torch.testing.assert_close(v, params[k], rtol=1e-13, atol=1e-15)
    for p in model.parameters():
        for k, v in state[id(p)].items():
            torch.testing.assert_close(opt.state[p][k], v, rtol=1e-13, atol=1e-15)
            moved = True
    assert moved


@pytest.mark.parametrize("transform", [True, False], ids=["transformed", "control-stale-buffer"])
def test_transformed_momentum_sgd_is_momentum_sgd_with_per_parameter_rates(transform):
    """Teleport mid-training with the momentum buffer transformed (buf_V = buf_W / T). Mapped back (W = V / T), the
    run is momentum SGD on W with every later gradient, and the buffer at the teleport, scaled by T^-2:
    b <- mu b + T^-2 g_W, W <- W - lr b. Checked to round-off against that run."""
    a = _net()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.05, momentum=0.9)
    _steps(a, opt_a, X, Y, 3)
    b = _net()
    b.load_state_dict(a.state_dict())
    opt_b = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # load_state_dict may alias the tensors
    cob = nt.sample_cob(a, X, cob_range=0.9, sampling="inter", generator=torch.Generator().manual_seed(4))
    f = parameter_factors(a, X, cob)
    nt.teleport(a, X, cob=cob, inplace=True)
    if transform:
        transform_optimizer_state(opt_a, a, f)
    pb = dict(b.named_parameters())
    with torch.no_grad():
        for n, T in f.items():
            opt_b.state[pb[n]]["momentum_buffer"].mul_(T.pow(-2))
    for _ in range(4):
        for m, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad()
            nn.functional.cross_entropy(m(X), Y).backward()
        with torch.no_grad():
            for n, T in f.items():
                pb[n].grad.mul_(T.pow(-2))
        opt_a.step()
        opt_b.step()
    diff = max(float(((p / f[n] if n in f else p) - pb[n]).abs().max()) for n, p in a.named_parameters())
    if transform:
        assert diff < 1e-12, diff
        torch.testing.assert_close(a(X), b(X), rtol=1e-11, atol=1e-13)
    else:  # the stale buffer (keep) is another run: the check can fail
        assert diff > 1e-4, diff


def test_unknown_state_is_refused_before_anything_changes():
    model = _net()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2, centered=True)
    _steps(model, opt, X, Y, 2)
    before = {id(p): {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)} for p in model.parameters()}
    cob = nt.sample_cob(model, X, cob_range=0.5, generator=torch.Generator().manual_seed(5))
    f = parameter_factors(model, X, cob)
    with pytest.raises(InvalidValueError, match="centered"):
        transform_optimizer_state(opt, model, f)
    for p in model.parameters():
        for k, v in before[id(p)].items():
            assert torch.equal(opt.state[p][k], v)


def test_train_with_transform_matches_keep_at_a_tiny_teleport_and_refuses_pseudo():
    from nnteleport.lab.data import load_dataset
    from nnteleport.lab.training import train

    data = load_dataset("digits")
    runs = {}
    for policy in ("keep", "transform"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        hist = train(model, data, epochs=2, batch_size=64, lr=0.05, optimizer="momentum", teleport_at=1,
                     cob_range=1e-9, sampling="intra", optimizer_state_on_teleport=policy, progress=False,
                     seed=0)  # fmt: skip
        runs[policy] = hist.train_loss
    # factors within 1e-9 of 1 (intra: no sign flips), so transforming the state changes it by at most ~1e-9
    torch.testing.assert_close(torch.tensor(runs["transform"]), torch.tensor(runs["keep"]), rtol=1e-6, atol=1e-7)
    with pytest.raises(InvalidValueError, match="pseudo-teleport"):
        train(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data, epochs=2, teleport_at=1, pseudo_teleport=True,
              optimizer_state_on_teleport="transform", progress=False)  # fmt: skip
