"""Tests of nnteleport.distance: the checkpoint penalty (value, gradient, effect, resume, errors) and the
balanced representative used by the rescaling-invariant distance."""

from __future__ import annotations

import copy
import importlib.util
import itertools

import pytest
import torch
from torch import nn

from nnteleport.distance import (
    CheckpointDistance,
    CheckpointSchedule,
    Kernel,
    StepSchedule,
)
from nnteleport.distance.canonical import Balancer

HAS_ENGINE = importlib.util.find_spec("nnteleport.engine.analysis") is not None and (
    importlib.util.find_spec("nnteleport.engine.apply") is not None
)


def mlp(seed: int = 0, dtype: torch.dtype = torch.float64, widths=(5, 7, 6, 3)) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).to(dtype)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def perturbed_copy(model: nn.Module, scale: float, seed: int) -> nn.Module:
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return other


# ----------------------------------------------------------------------------------------------------------
# value and gradient against the closed form (float64)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.7, 2.5])
def test_rbf_value_and_gradient_closed_form(sigma):
    model = mlp()
    strength = 0.3
    dist = CheckpointDistance(model, sigma=sigma, strength=strength)
    ckpts = []
    for seed in range(3):  # three checkpoints at different distances
        other = perturbed_copy(model, 0.2 * (seed + 1), seed)
        dist.add_checkpoint(other)
        ckpts.append(flat(p.detach() for p in other.parameters()))
    with torch.no_grad():  # move away so that theta != theta_c for all c
        for p in model.parameters():
            p.add_(0.05)
    theta = flat(p.detach() for p in model.parameters())
    ks = [torch.exp(-(theta - c).square().sum() / (2 * sigma**2)) for c in ckpts]
    expected_value = strength * sum(ks)
    expected_grad = strength * sum((c - theta) / sigma**2 * k for c, k in zip(ckpts, ks))

    value = dist()
    value.backward()
    grad = flat(p.grad for p in model.parameters())
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, expected_value, rtol=1e-13, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)
    # the closed form is also what autograd gives through a naive implementation
    ps = [p.detach().clone().requires_grad_() for p in model.parameters()]
    _naive(ps, ckpts, sigma, strength).backward()
    torch.testing.assert_close(grad, flat(p.grad for p in ps), rtol=1e-12, atol=1e-15)


def _naive(ps, ckpts, sigma, strength):
    theta = flat(ps)
    return strength * sum(torch.exp(-(theta - c).square().sum() / (2 * sigma**2)) for c in ckpts)


def test_squared_l2_is_negative_distance():
    model = mlp(1)
    dist = CheckpointDistance(model, kernel="squared_l2", strength=0.5)
    other = perturbed_copy(model, 0.3, 0)
    dist.add_checkpoint(other)
    theta = flat(p.detach() for p in model.parameters())
    c = flat(p.detach() for p in other.parameters())
    value = dist()
    value.backward()
    torch.testing.assert_close(value, -0.5 * (theta - c).square().sum(), rtol=1e-13, atol=0)
    torch.testing.assert_close(flat(p.grad for p in model.parameters()), 0.5 * 2 * (c - theta), rtol=1e-13, atol=0)
    torch.testing.assert_close(dist.distances(), (theta - c).norm().reshape(1), rtol=1e-13, atol=0)


def test_parameter_selection_by_names_and_predicate():
    model = mlp(2)
    names = ["0.weight", "2.bias"]
    by_name = CheckpointDistance(model, params=names)
    by_pred = CheckpointDistance(model, params=lambda n, p: n in names)
    assert by_name.param_names == by_pred.param_names == names
    other = perturbed_copy(model, 0.5, 3)
    by_name.add_checkpoint(other)
    by_name().backward()
    grads = dict((n, p.grad) for n, p in model.named_parameters())
    assert grads["0.bias"] is None and grads["0.weight"] is not None
    own, oth = dict(model.named_parameters()), dict(other.named_parameters())
    d2 = sum((own[n].detach() - oth[n].detach()).square().sum() for n in names)
    torch.testing.assert_close(by_name.distances(), d2.sqrt().reshape(1), rtol=1e-13, atol=0)


def test_no_checkpoint_gives_zero_and_float32_preserved():
    model = mlp(3, dtype=torch.float32)
    dist = CheckpointDistance(model)
    assert float(dist()) == 0.0
    dist.add_checkpoint()
    value = dist()
    assert value.dtype == torch.float32 and value.item() == pytest.approx(1.0)  # distance 0 -> k = 1


def test_max_checkpoints_drops_oldest():
    model = mlp(4)
    dist = CheckpointDistance(model, max_checkpoints=2)
    others = [perturbed_copy(model, 0.1, s) for s in range(3)]
    for o in others:
        dist.add_checkpoint(o)
    assert len(dist) == 2
    torch.testing.assert_close(flat(dist.checkpoints[0]), flat(p.detach() for p in others[1].parameters()))


# ----------------------------------------------------------------------------------------------------------
# the penalty pushes the parameters away under SGD
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["rbf", "squared_l2"])
def test_penalty_pushes_parameters_away_under_sgd(kernel):
    model = mlp(5)
    dist = CheckpointDistance(model, kernel=kernel, sigma=0.5, strength=1.0)
    dist.add_checkpoint()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with torch.no_grad():  # the thesis notes the gradient vanishes exactly at the checkpoint: nudge first
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    history = [float(dist.distances()[0])]
    for _ in range(20):
        opt.zero_grad()
        dist().backward()
        opt.step()
        history.append(float(dist.distances()[0]))
    assert all(b > a for a, b in itertools.pairwise(history)), history
    if kernel == "squared_l2":  # theta - theta_c grows by exactly (1 + 2 lr strength) per step
        assert history[-1] == pytest.approx(history[0] * 1.1**20, rel=1e-10)
    else:
        assert history[-1] > 10 * history[0]


# ----------------------------------------------------------------------------------------------------------
# resume, schedules, errors
# ----------------------------------------------------------------------------------------------------------


def test_state_dict_resume_keeps_checkpoints(tmp_path):
    model = mlp(6)
    dist = CheckpointDistance(model, sigma=StepSchedule(1.0, 0.5, 2), strength=0.7)
    dist.add_checkpoint(perturbed_copy(model, 0.2, 0))
    dist.add_checkpoint(perturbed_copy(model, 0.4, 1))
    for _ in range(3):
        dist.step()
    torch.save({"model": model.state_dict(), "dist": dist.state_dict()}, tmp_path / "ck.pt")

    restored_model = mlp(99)  # different initial weights, same architecture
    state = torch.load(tmp_path / "ck.pt")
    restored_model.load_state_dict(state["model"])
    restored = CheckpointDistance(restored_model, sigma=StepSchedule(1.0, 0.5, 2), strength=0.7)
    restored.load_state_dict(state["dist"])
    assert len(restored) == 2 and restored.epoch == 3 and restored.sigma == 0.5
    torch.testing.assert_close(restored(), dist(), rtol=0, atol=0)
    for a, b in zip(restored.checkpoints, dist.checkpoints):
        torch.testing.assert_close(flat(a), flat(b), rtol=0, atol=0)


def test_schedules():
    s = StepSchedule(2.0, gamma=0.1, step_size=3, start=1)
    assert [s(e) for e in (0, 1, 3, 4, 7)] == pytest.approx([2.0, 2.0, 2.0, 0.2, 0.02])
    cs = CheckpointSchedule(warmup_epochs=5, every=3, max_checkpoints=3)
    assert cs.checkpoint_epochs(20) == [5, 8, 11]
    assert CheckpointSchedule(0, 2).checkpoint_epochs(5) == [2, 4]
    model = mlp(7)
    dist = CheckpointDistance(model, sigma=lambda e: 1.0 + e, strength=StepSchedule(1.0, 0.5, 1))
    dist.add_checkpoint(perturbed_copy(model, 0.3, 0))
    values = []
    for _ in range(3):
        theta = flat(p.detach() for p in model.parameters())
        c = flat(dist.checkpoints[0])
        expected = dist.strength * torch.exp(-(theta - c).square().sum() / (2 * dist.sigma**2))
        values.append((dist().item(), float(expected)))
        dist.step()
    assert [v for v, _ in values] == pytest.approx([e for _, e in values], rel=1e-13)


def test_bad_inputs_give_clear_errors():
    model = mlp(8)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        CheckpointDistance(model, sigma=0.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        CheckpointDistance(model, sigma=-1.0)
    dist = CheckpointDistance(model, sigma=lambda e: 1.0 - e)
    with pytest.raises(ValueError, match=r"sigma must be > 0 .* at epoch 1"):
        dist.step()
    with pytest.raises(ValueError, match=r"unknown kernel 'gauss'.*'rbf', 'squared_l2'"):
        CheckpointDistance(model, kernel="gauss")
    assert Kernel.parse("rbf") is Kernel.RBF
    with pytest.raises(ValueError, match="unknown parameter name"):
        CheckpointDistance(model, params=["nope.weight"])
    with pytest.raises(ValueError, match="needs `example_input=`"):
        CheckpointDistance(model, invariant=True)

    dist = CheckpointDistance(model)
    wider = mlp(8, widths=(5, 8, 6, 3))
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(8, 5\).*\(7, 5\).*another model"):
        dist.add_checkpoint(wider)
    with pytest.raises(ValueError, match=r"lacks parameter '0.weight'.*another model"):
        dist.add_checkpoint({"x": torch.zeros(1)})
    with pytest.raises(TypeError, match=r"expected None, an nn.Module or a mapping"):
        dist.add_checkpoint(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="another model than the one it was built for"):
        dist(wider)
    assert float(dist(model)) == 0.0  # the `penalty(model)` hook of nnteleport.lab.training.train
    other = CheckpointDistance(model, params=["0.weight"])
    with pytest.raises(ValueError, match="selection differs"):
        dist.load_state_dict(other.state_dict())


# ----------------------------------------------------------------------------------------------------------
# balancing (independent of the engine: hand-built scale indices of an MLP)
# ----------------------------------------------------------------------------------------------------------


def mlp_balancer(model: nn.Sequential) -> Balancer:
    """Scale indices of a Linear/ReLU chain: hidden layer l has factors at [off_l, off_l + width_l)."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    indices, groups, off, prev = {}, [], 1, None
    for li, (name, lin) in enumerate(zip([n for n in names if n.endswith("weight")], linears)):
        last = li == len(linears) - 1
        out_idx = torch.zeros(lin.out_features, dtype=torch.long) if last else torch.arange(off, off + lin.out_features)
        in_idx = torch.zeros(1, dtype=torch.long) if prev is None else prev
        indices[name] = (out_idx[:, None], in_idx[None, :])
        indices[name.replace("weight", "bias")] = (out_idx, None)
        if not last:
            groups.append((off, off + lin.out_features))
            prev, off = out_idx, off + lin.out_features
    return Balancer(names, shapes, indices, groups, off - 1, torch.device("cpu"))


def rescale_mlp(model: nn.Sequential, seed: int) -> nn.Sequential:
    """Positive per-neuron rescaling (a teleportation with intra sampling) of a Linear/ReLU chain."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    linears = [m for m in other if isinstance(m, nn.Linear)]
    prev = None
    with torch.no_grad():
        for li, lin in enumerate(linears):
            tau = (
                torch.ones(lin.out_features, dtype=lin.weight.dtype)
                if li == len(linears) - 1
                else torch.exp(torch.empty(lin.out_features, dtype=torch.float64).uniform_(-1, 1, generator=g))
            )
            lin.weight.mul_(tau[:, None] / (1 if prev is None else prev[None, :]))
            lin.bias.mul_(tau)
            prev = tau
    return other


def test_balancer_one_hidden_layer_closed_form():
    model = mlp(9, widths=(4, 6, 3))
    bal = mlp_balancer(model)
    params = list(model.parameters())
    u, sweeps, _ = bal.solve(bal.masses(params, torch.float64), tol=1e-13)
    w1, b1, w2 = (p.detach() for p in params[:3])
    # one hidden layer: neurons decouple, tau_k = (O_k / I_k)^(1/4) exactly
    inc = w1.square().sum(1) + b1.square()
    outg = w2.square().sum(0)
    torch.testing.assert_close(torch.exp(u[1:]), (outg / inc) ** 0.25, rtol=1e-13, atol=0)
    assert sweeps <= 2


def test_balancer_deep_mlp_is_balanced_invariant_and_minimal():
    model = mlp(10, widths=(5, 8, 7, 6, 3))
    bal = mlp_balancer(model)

    def canonical(m):
        ps = [p.detach().clone() for p in m.parameters()]
        u, _, _ = bal.solve(bal.masses(ps, torch.float64), tol=1e-13, max_iter=5000)
        for i, s in bal.scales(u, ps).items():
            ps[i] = ps[i] * s
        return ps

    can = canonical(model)
    # balanced: incoming (weights + bias) equals outgoing squared norm for every hidden neuron
    for l in range(3):
        w, b, w_next = can[2 * l], can[2 * l + 1], can[2 * l + 2]
        torch.testing.assert_close(w.square().sum(1) + b.square(), w_next.square().sum(0), rtol=1e-9, atol=0)
    # the same representative from a rescaled copy (same orbit), and it minimises the squared norm
    can2 = canonical(rescale_mlp(model, 1))
    torch.testing.assert_close(flat(can2), flat(can), rtol=1e-9, atol=1e-12)
    norm = flat(can).square().sum()
    for seed in range(5):
        assert flat(p.detach() for p in rescale_mlp(model, seed).parameters()).square().sum() > norm
    # function unchanged
    x = torch.randn(11, 5, dtype=torch.float64)
    can_model = copy.deepcopy(model)
    with torch.no_grad():
        for p, c in zip(can_model.parameters(), can):
            p.copy_(c)
    torch.testing.assert_close(can_model(x), model(x), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# invariant distance through the engine
# ----------------------------------------------------------------------------------------------------------

engine = pytest.mark.skipif(
    not HAS_ENGINE, reason="teleportation engine (nnteleport.engine.analysis) not available yet"
)


def homogeneous_cob(model: nn.Module, x: torch.Tensor, seed: int, cob_range: float = 0.8):
    """A positive (intra) CoB on the groups the balancing acts on; the other groups keep tau = 1."""
    import nnteleport

    plan = nnteleport.analyze(model, x)
    cob = nnteleport.sample_cob(model, x, cob_range=cob_range, sampling="intra",
                                generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return {name: (f if plan.groups[name].homogeneous else torch.ones_like(f)) for name, f in cob.items()}


def zoo(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    from nnteleport.lab.models import build_model

    torch.manual_seed(seed)
    kw = {"width": 0.125} if name != "mlp" else {"hidden": (12, 10, 8)}
    shape = (1, 8, 8) if name != "mlp" else (6,)
    model = build_model(name, in_shape=shape, num_classes=4, **kw).double()
    with torch.no_grad():  # non-trivial BatchNorm affine parameters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval(), torch.randn(5, *shape, dtype=torch.float64)


@engine
@pytest.mark.parametrize("name", ["mlp", "resnet18", "mobilenetv2"])
def test_canonicalize_orbit_invariant_function_preserving_minimal(name):
    import nnteleport

    model, x = zoo(name)
    can = nnteleport.canonicalize(model, x)
    torch.testing.assert_close(can(x), model(x), rtol=1e-10, atol=1e-12)
    norm = flat(p.detach() for p in can.parameters()).square().sum()
    assert norm <= flat(p.detach() for p in model.parameters()).square().sum()
    for seed in range(2):
        tele = nnteleport.teleport(model, x, homogeneous_cob(model, x, seed))
        assert flat(p.detach() for p in tele.parameters()).square().sum() > norm
        can_tele = nnteleport.canonicalize(tele, x)
        torch.testing.assert_close(
            flat(p.detach() for p in can_tele.parameters()), flat(p.detach() for p in can.parameters()),
            rtol=1e-8, atol=1e-10,
        )  # fmt: skip


@engine
def test_canonicalize_matches_hand_built_mlp_balancing():
    import nnteleport

    model = mlp(11, widths=(5, 8, 7, 6, 3))
    x = torch.randn(4, 5, dtype=torch.float64)
    can, cob = nnteleport.canonicalize(model, x, return_cob=True)
    bal = mlp_balancer(model)
    ps = [p.detach().clone() for p in model.parameters()]
    u, _, _ = bal.solve(bal.masses(ps, torch.float64), tol=1e-13, max_iter=5000)
    for i, s in bal.scales(u, ps).items():
        ps[i] = ps[i] * s
    torch.testing.assert_close(flat(p.detach() for p in can.parameters()), flat(ps), rtol=1e-9, atol=1e-12)
    # the returned CoB teleports the model onto its canonical representative
    tele = nnteleport.teleport(model, x, cob)
    torch.testing.assert_close(
        flat(p.detach() for p in tele.parameters()), flat(p.detach() for p in can.parameters()), rtol=1e-13, atol=0
    )


@engine
@pytest.mark.parametrize("name", ["mlp", "resnet18"])
def test_invariant_distance_zero_to_teleported_copy_and_penalty_unchanged(name):
    import nnteleport

    model, x = zoo(name, seed=1)
    # balance to float64 round-off (the default balance_tol=1e-7 is meant for training)
    dist = CheckpointDistance(model, sigma=0.5, strength=0.7, invariant=True, example_input=x, balance_tol=1e-13)
    plain = CheckpointDistance(model, sigma=0.5, strength=0.7)
    dist.add_checkpoint()
    plain.add_checkpoint()
    tele = nnteleport.teleport(model, x, homogeneous_cob(model, x, 3))
    with torch.no_grad():
        for p, q in zip(model.parameters(), tele.parameters()):
            p.copy_(q)
    assert float(plain.distances()[0]) > 0.1  # the raw parameters did move
    assert float(dist.distances()[0]) < 1e-7
    torch.testing.assert_close(dist().detach(), torch.tensor(0.7, dtype=torch.float64), rtol=1e-13, atol=0)

    # away from the checkpoint: the penalty is the same for the model and any teleported copy of it
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = dist().detach()
    moved = nnteleport.teleport(model, x, homogeneous_cob(model, x, 4))
    with torch.no_grad():
        for p, q in zip(model.parameters(), moved.parameters()):
            p.copy_(q)
    assert float(before) < 0.7 * 0.999
    torch.testing.assert_close(dist().detach(), before, rtol=1e-8, atol=0)


@engine
def test_invariant_gradient_is_constant_tau_chain_rule():
    import nnteleport

    model, x = zoo("mlp", seed=2)
    sigma, strength = 2.0, 0.4
    dist = CheckpointDistance(model, sigma=sigma, strength=strength, invariant=True, example_input=x, balance_tol=1e-13)
    other = perturbed_copy(model, 0.1, 5)
    dist.add_checkpoint(other)
    ckpt = flat(p.detach() for p in nnteleport.canonicalize(other, x).parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theta = flat(p.detach() for p in model.parameters())
    can = flat(p.detach() for p in nnteleport.canonicalize(model, x).parameters())
    scale = can / theta  # t[out] / t[in] per entry (theta has no zero entries here)
    k = torch.exp(-(can - ckpt).square().sum() / (2 * sigma**2))
    model.zero_grad()
    value = dist()
    value.backward()
    assert 0.01 < float(k) < 0.99
    torch.testing.assert_close(value.detach(), strength * k, rtol=1e-10, atol=0)
    expected = scale * strength * (ckpt - can) / sigma**2 * k
    torch.testing.assert_close(flat(p.grad for p in model.parameters()), expected, rtol=1e-7, atol=1e-12)


@engine
def test_invariant_resume_and_errors():
    model, x = zoo("resnet18", seed=3)
    dist = CheckpointDistance(model, invariant=True, example_input=x, sigma=2.0)
    dist.add_checkpoint(perturbed_copy(model, 0.1, 0))
    state = dist.state_dict()
    restored = CheckpointDistance(model, invariant=True, example_input=x, sigma=2.0)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored(), dist(), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="invariant=True"):
        CheckpointDistance(model, sigma=2.0).load_state_dict(state)


def test_non_finite_strength_and_checkpoints_are_refused():
    from nnteleport.errors import InvalidValueError

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(InvalidValueError, match="strength must be finite"):
            CheckpointDistance(model, strength=bad)
    # a schedule that becomes NaN later is caught when it gets there
    d = CheckpointDistance(model, strength=lambda e: 1.0 if e < 1 else float("nan"))
    with pytest.raises(InvalidValueError, match="strength must be finite, got nan at epoch 1"):
        d.step()
    d = CheckpointDistance(model)
    state = {k: v.detach().clone() for k, v in model.named_parameters()}
    state["0.weight"][1, 2] = float("nan")
    with pytest.raises(InvalidValueError, match=r"parameter '0\.weight' has 1 NaN/infinite value"):
        d.add_checkpoint(state)
    assert len(d) == 0
    with torch.no_grad():
        model[2].bias.fill_(float("inf"))  # a diverged model
    with pytest.raises(InvalidValueError, match=r"parameter '2\.bias' has 2 NaN/infinite"):
        d.add_checkpoint()


@engine
def test_newton_balancing_matches_gauss_seidel_and_does_not_need_more_steps_with_depth():
    from nnteleport.distance.canonical import balancer_of

    def chain(depth):
        torch.manual_seed(depth)
        layers = []
        for _ in range(depth):
            layers += [nn.Linear(6, 6), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(6, 2)).double()

    steps = {}
    for depth in (4, 12, 60):
        model = chain(depth)
        bal, _ = balancer_of(model, torch.randn(3, 6, dtype=torch.float64))
        masses = bal.masses(list(model.parameters()), torch.float64)
        u_newton, steps[depth], left = bal.solve(masses, tol=1e-12, max_iter=100, method="newton")
        assert left <= 1e-12
        if depth <= 12:  # Gauss-Seidel needs O(depth^2) sweeps: compared where that is cheap
            u_gs, sweeps, _ = bal.solve(masses, tol=1e-13, max_iter=200_000, method="gauss-seidel")
            torch.testing.assert_close(u_newton, u_gs, rtol=0, atol=1e-9)
            assert sweeps > 5 * steps[depth]
    assert steps[60] <= steps[4] + 6  # (5, 7, 9, 11 steps at 20, 80, 300, 1000 layers: benchmarks)
    assert bal.solve(masses, tol=1e-12, max_iter=100)[1] == steps[60]  # "auto" picks Newton for a cold start
