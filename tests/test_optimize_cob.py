"""Optimized teleportation (issue 18): V(tau) as a differentiable function, optimize_cob, select_cob, balanced_cob.

Everything in float64 on tiny models. Tolerances: the functional evaluation and a real teleport compute the same
products in a different order, so they agree to a few ulps of the output scale (``1e-12`` relative leaves a margin
of ~1e3 over float64 round-off and is ~1e4 below float32's, so a wrong factor anywhere fails). Finite differences
are central with ``h = 1e-5`` on ``u``: truncation ``O(h^2) ~ 1e-10`` relative, round-off ``eps / h ~ 1e-11``;
``1e-6`` relative leaves both far below.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnteleport as nt
from nnteleport.engine.optimize import CoBFunction, Objective, _ObjectiveFn, _Orbit
from nnteleport.errors import InvalidArgumentError, InvalidValueError

OBJECTIVES = [o.value for o in Objective]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / a.abs().max().clamp_min(1e-300)).detach())


def relu_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()


def tanh_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 4), nn.GELU(), nn.Linear(4, 3)).double()


def bn_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).double()


def data(shape: tuple[int, ...], n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


CASES = [("relu_mlp", relu_mlp, (4,)), ("tanh_mlp", tanh_mlp, (4,)), ("bn_cnn", bn_cnn, (2, 6, 6))]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---------------------------------------------------------------------------------------------- V(tau)
@pytest.mark.parametrize("name,build,shape", CASES)
@pytest.mark.parametrize("sampling", ["intra", "inter"])
def test_functional_evaluation_equals_teleported_model(name, build, shape, sampling):
    model = build()
    x, _ = data(shape)
    model.train(name == "bn_cnn")  # batch statistics in train mode; the buffers must not move
    before = _snapshot(model)
    fn = CoBFunction(model, x)
    cob = nt.sample_cob(model, x, cob_range=0.8, sampling=sampling, generator=torch.Generator().manual_seed(3))
    tau = fn.plan.flat(cob)
    if sampling == "inter":
        assert bool((tau < 0).any())  # some factors are negative: ReLU sites need wrappers too
    out = fn(tau, x)
    V = fn.parameters(tau)
    after = _snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # no parameter or buffer written
    assert _hooks(model) == 0  # the site hooks are removed
    ref = nt.teleport(model, x, cob=cob)
    assert rel_err(ref(x), out) < 1e-12
    assert rel_err(model(x), out) < 1e-12  # and the function is the model's
    for k, p in ref.named_parameters():
        assert rel_err(p, V[k]) < 1e-14, k


def test_functional_evaluation_sees_wrong_factors():
    """The comparison above can fail: without the activation wrappers a tanh network's output changes."""
    model = tanh_mlp()
    x, _ = data((4,))
    fn = CoBFunction(model, x)
    tau = fn.plan.flat(nt.sample_cob(model, x, cob_range=0.5, generator=torch.Generator().manual_seed(0)))
    V = fn.parameters(tau)
    plain = torch.func.functional_call(model, V, (x,))
    assert rel_err(model(x), plain) > 1e-3


def test_tau_shape_is_checked():
    model = relu_mlp()
    x, _ = data((4,))
    fn = CoBFunction(model, x)
    with pytest.raises(InvalidValueError, match="tau must have shape"):
        fn.parameters(torch.ones(fn.plan.num_free + 1, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- objectives
@pytest.mark.parametrize("name,build,shape", CASES[:2])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objective_gradient_matches_finite_differences(name, build, shape, objective):
    model = build().eval()
    x, y = data(shape)
    fn = CoBFunction(model, x)
    f = _ObjectiveFn(fn, x, y, F.cross_entropy, Objective.parse(objective), 0.1, 2, 0)
    g = torch.Generator().manual_seed(5)
    sign = torch.where(torch.rand(fn.plan.num_free, generator=g) < 0.3, -1.0, 1.0).double()
    sign[fn.plan.positive_mask] = 1.0
    u = (0.4 * torch.rand(fn.plan.num_free, generator=g, dtype=torch.float64) - 0.2).requires_grad_(True)
    (grad,) = torch.autograd.grad(f(sign * torch.exp(u)), u)
    h = 1e-5
    fd = torch.empty_like(grad)
    for k in range(u.numel()):
        e = torch.zeros_like(u)
        e[k] = h
        up = float(f(sign * torch.exp(u.detach() + e)).detach())
        dn = float(f(sign * torch.exp(u.detach() - e)).detach())
        fd[k] = (up - dn) / (2 * h)
    assert float(grad.abs().max()) > 1e-6  # the objective depends on the CoB
    assert rel_err(fd, grad) < 1e-6


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_optimized_cob_keeps_the_function_and_is_not_worse(objective):
    model = tanh_mlp().eval() if objective == "sharpness" else relu_mlp()
    x, y = data((4,))
    maximize = objective != "sharpness"  # towards flatter for sharpness
    r = nt.optimize_cob(model, x, y, F.cross_entropy, objective, steps=15, lr=0.05, maximize=maximize, probes=2)
    assert len(r.trace) == 16 and r.initial == r.trace[0]
    teleported = nt.teleport(model, x, cob=r.cob)
    assert rel_err(model(x), teleported(x)) < 1e-12
    # the value reported is the objective at the returned CoB, recomputed independently
    fn = CoBFunction(model, x)
    f = _ObjectiveFn(fn, x, y, F.cross_entropy, Objective.parse(objective), 0.1, 2, 0)
    value = float(f(fn.plan.flat(r.cob)).detach())
    assert math.isclose(value, r.value, rel_tol=1e-12)
    assert math.isclose(float(f(torch.ones(fn.plan.num_free, dtype=torch.float64)).detach()), r.initial, rel_tol=1e-12)
    if maximize:
        assert r.value > 1.05 * r.initial  # strictly better, not only "not worse"
    else:
        assert r.value < 0.95 * r.initial
    s = 0.5
    flat = fn.plan.flat(r.cob)
    assert bool((flat.abs() >= 1 - s - 1e-15).all() and (flat.abs() <= 1 + s + 1e-15).all())


def test_factors_stay_in_range_with_large_steps():
    model = relu_mlp()
    x, y = data((4,))
    for opt in ("adam", "sgd"):
        r = nt.optimize_cob(model, x, y, F.cross_entropy, steps=10, lr=5.0, cob_range=0.3, optimizer=opt)
        flat = nt.analyze(model, x).flat(r.cob)
        assert bool((flat >= 0.7 - 1e-15).all() and (flat <= 1.3 + 1e-15).all())
        assert float(flat.min()) < 0.7 + 1e-9 or float(flat.max()) > 1.3 - 1e-9  # the bound is reached


def test_optimized_beats_best_of_100_random_on_two_hidden_layers():
    model = relu_mlp()
    x, y = data((4,), n=16)
    s = 0.5
    best = nt.select_cob(model, x, y, F.cross_entropy, n=100, cob_range=s, generator=torch.Generator().manual_seed(0))
    assert len(best.trace) == 100 and best.value == max(best.trace)
    opt = nt.optimize_cob(model, x, y, F.cross_entropy, "grad_norm", steps=60, lr=0.05, cob_range=s)
    assert opt.value >= best.value
    assert best.value > best.initial  # best-of-100 itself helps over the identity on this net


def test_select_cob_minimize_inter_and_reproducible():
    model = relu_mlp()
    x, y = data((4,))
    kw = {"n": 8, "cob_range": 0.7, "sampling": "inter", "maximize": False}
    a = nt.select_cob(model, x, y, F.cross_entropy, generator=torch.Generator().manual_seed(2), **kw)
    b = nt.select_cob(model, x, y, F.cross_entropy, generator=torch.Generator().manual_seed(2), **kw)
    assert a.trace == b.trace and a.value == min(a.trace)
    assert rel_err(model(x), nt.teleport(model, x, cob=a.cob)(x)) < 1e-12


def test_init_signs_are_kept():
    model = tanh_mlp().eval()
    x, y = data((4,))
    init = nt.sample_cob(model, x, cob_range=0.5, sampling="inter", generator=torch.Generator().manual_seed(4))
    plan = nt.analyze(model, x)
    r = nt.optimize_cob(model, x, y, F.cross_entropy, steps=5, init=init)
    assert torch.equal(plan.flat(r.cob).sign(), plan.flat(init).sign())
    assert rel_err(model(x), nt.teleport(model, x, cob=r.cob)(x)) < 1e-12


def test_optimize_leaves_model_untouched_in_train_mode():
    model = bn_cnn().train()
    x, y = data((2, 6, 6))
    before = _snapshot(model)
    nt.optimize_cob(model, x, y, F.cross_entropy, "lookahead", steps=3)
    after = _snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert _hooks(model) == 0


def test_bad_arguments():
    model = relu_mlp()
    x, y = data((4,))
    with pytest.raises(InvalidValueError, match="unknown objective"):
        nt.optimize_cob(model, x, y, F.cross_entropy, "loss")
    with pytest.raises(InvalidValueError, match="lr"):
        nt.optimize_cob(model, x, y, F.cross_entropy, lr=0.0)
    with pytest.raises(InvalidValueError, match="cob_range"):
        nt.optimize_cob(model, x, y, F.cross_entropy, cob_range=1.5)
    with pytest.raises(InvalidValueError, match="outside the cob_range"):
        nt.optimize_cob(model, x, y, F.cross_entropy, cob_range=0.1, init=nt.sample_cob(model, x, cob_range=0.9))
    with pytest.raises(InvalidArgumentError, match="loss_fn"):
        nt.optimize_cob(model, x, y, "mse")
    with pytest.raises(InvalidValueError, match="n must be"):
        nt.select_cob(model, x, y, F.cross_entropy, n=0)
    with pytest.raises(InvalidValueError, match="unknown optimizer"):
        nt.optimize_cob(model, x, y, F.cross_entropy, optimizer="lbfgs")


# ---------------------------------------------------------------------------------------------- balancing
def _lbfgs_minimum(model: nn.Module, x: torch.Tensor) -> float:
    """``min_u sum_p ||V(exp(u))_p||^2`` by LBFGS on the real teleported parameters (not the balancer's sums)."""
    fn = CoBFunction(model, x)
    u = torch.zeros(fn.plan.num_free, dtype=torch.float64, requires_grad=True)

    def value(u: torch.Tensor) -> torch.Tensor:
        return sum(p.pow(2).sum() for p in fn.parameters(torch.exp(u)).values())

    opt = torch.optim.LBFGS([u], lr=1.0, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        v = value(u)
        v.backward()
        return v

    for _ in range(5):
        opt.step(closure)
    return float(value(u.detach()).detach())


@pytest.mark.parametrize("name,build,shape", [CASES[0], CASES[2]])
def test_balanced_cob_reaches_the_orbit_minimum(name, build, shape):
    model = build()
    x, _ = data(shape)
    plan = nt.analyze(model, x)
    r = nt.balanced_cob(model, x)
    orbit = _Orbit(model, plan)
    direct = _lbfgs_minimum(model, x)
    assert r.value <= direct * (1 + 1e-12)
    assert math.isclose(r.value, direct, rel_tol=1e-10)
    assert r.value < 0.999 * r.initial  # the random init is not balanced
    assert all(b <= a * (1 + 1e-15) for a, b in zip(r.trace, r.trace[1:]))  # monotone
    # balanced: every neuron's incoming and outgoing squared mass agree; and F is the teleported model's norm
    a, b = orbit.masses(plan.flat(r.cob).log())
    assert rel_err(a, b) < 1e-9
    teleported = nt.teleport(model, x, cob=r.cob)
    sq = sum(float(p.detach().pow(2).sum()) for p in teleported.parameters())
    assert math.isclose(sq, r.value, rel_tol=1e-12)
    assert rel_err(model.train(False)(x), teleported.train(False)(x)) < 1e-12


def test_balanced_cob_agrees_with_canonicalize():
    model = relu_mlp(2)
    x, _ = data((4,))
    _, cob = nt.canonicalize(model, x, return_cob=True)
    r = nt.balanced_cob(model, x)
    plan = nt.analyze(model, x)
    assert rel_err(plan.flat(cob), plan.flat(r.cob)) < 1e-8


def test_balanced_cob_in_a_box_satisfies_kkt():
    """With cob_range the minimum over the box: dF/du_k = 2 (a_k - b_k) vanishes inside, is >= 0 at the lower
    bound and <= 0 at the upper bound (the first-order conditions of a convex problem on a box)."""
    model = relu_mlp(1)
    with torch.no_grad():
        model[0].weight.mul_(4.0)  # strongly unbalanced: some factors end at the bound
    x, _ = data((4,))
    s = 0.3
    r = nt.balanced_cob(model, x, cob_range=s)
    plan = nt.analyze(model, x)
    u = plan.flat(r.cob).log()
    lo, hi = math.log1p(-s), math.log1p(s)
    assert bool((u >= lo - 1e-15).all() and (u <= hi + 1e-15).all())
    at_lo, at_hi = u <= lo + 1e-12, u >= hi - 1e-12
    assert bool((at_lo | at_hi).any())
    a, b = _Orbit(model, plan).masses(u)
    grad = 2 * (a - b)
    scale = float(grad.abs().max())
    inside = ~(at_lo | at_hi)
    assert bool((grad[inside].abs() <= 1e-9 * scale).all())
    assert bool((grad[at_lo] >= -1e-9 * scale).all()) and bool((grad[at_hi] <= 1e-9 * scale).all())
    assert r.value >= nt.balanced_cob(model, x).value  # the box costs something here


class _SelfCoupled(nn.Module):
    """``h = relu(fc1(x)); h = h + fc2(h)``: the residual ties fc2's outputs to its inputs, so fc2 maps a group
    into itself (balanced_cob updates that group one neuron at a time)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.out(torch.relu(h + self.fc2(h)))


@pytest.mark.parametrize("build", [lambda: relu_mlp(3), _SelfCoupled], ids=["mlp", "self-coupled"])
def test_balanced_cob_block_masses_are_the_full_masses(build):
    """Each block's update reads only the entries touching it: the same a_k, b_k as the full pass, bit for bit
    (the same terms in the same order), and the incremental F of the trace equals F recomputed."""
    torch.manual_seed(0)
    model = build().double()
    x, _ = data((4,))
    plan = nt.analyze(model, x)
    orbit = _Orbit(model, plan)
    u = torch.randn(plan.num_free, dtype=torch.float64) * 0.3
    a, b = orbit.masses(u)
    for g in plan.groups.values():
        idx = torch.arange(g.offset, g.offset + g.size)
        ab, bb = orbit.block_masses(u, idx, orbit.touching(idx))
        assert torch.equal(ab, a[idx]) and torch.equal(bb, b[idx]), g.name
    r = nt.balanced_cob(model, x)
    assert len(r.trace) > 2
    assert r.trace[-1] == float(orbit.value(plan.flat(r.cob).log()))
    assert all(b <= a * (1 + 1e-15) for a, b in zip(r.trace, r.trace[1:]))  # monotone, also incrementally
