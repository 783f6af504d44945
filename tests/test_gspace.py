"""Tests of nnteleport.gspace: the G-space chart, its closed-form gradient and GSpaceOptimizer.

References are independent float64 computations: autograd through the differentiable weight allocation, a chart
written out by hand for a tiny network, brute-force maximal paths, and the rescaling-invariance property.
Tolerances: float64 round-off (1e-12 relative on single maps; trajectories of 25 steps measured at <= 2e-12).
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnteleport import GSpace, GSpaceOptimizer
from nnteleport.gspace import trace_chain

DT = torch.float64


def mlp(widths, bias=True, act=nn.ReLU):
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).to(DT)


def convnet():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 3, 3),
        nn.LeakyReLU(0.1),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 5),
        nn.ReLU(),
        nn.Linear(5, 2),
    ).to(DT)


class Functional(nn.Module):
    """fx path through functional calls, x.view and a shape query."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 6)
        self.fc2 = nn.Linear(6, 4, bias=False)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return F.log_softmax(self.out(x), dim=1)


ZOO = {
    "equal-bias-free": (lambda: mlp((6, 5, 5, 5, 3), bias=False), (6,)),
    "unequal-bias": (lambda: mlp((5, 7, 3, 6, 2)), (5,)),
    "width-one": (lambda: mlp((4, 1, 3, 2)), (4,)),
    "leaky": (lambda: mlp((4, 6, 2, 3), act=lambda: nn.LeakyReLU(0.2)), (4,)),
    "conv": (convnet, (2, 8, 8)),
    "functional": (lambda: Functional().to(DT), (3, 4)),
    "single-layer": (lambda: mlp((4, 3)), (4,)),
}


def make(name, seed=0):
    torch.manual_seed(seed)
    build, shape = ZOO[name]
    model = build()
    x = torch.randn(7, *shape, dtype=DT)
    return model, x


def hidden_count(model):
    layers = trace_chain(model)
    return sum(lay.module.weight.shape[0] for lay in layers[:-1])


def rescale_randomly(model, scale=1.0, seed=1):
    """Independent positive rescaling of every hidden neuron (written without the library)."""
    gen = torch.Generator().manual_seed(seed)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        for a, b in itertools.pairwise(layers):
            n = a.weight.shape[0]
            alpha = torch.exp(scale * torch.randn(n, generator=gen, dtype=DT))
            a.weight.mul_(alpha.view(-1, *([1] * (a.weight.dim() - 1))))
            if a.bias is not None:
                a.bias.mul_(alpha)
            per = b.weight[0].numel() // n  # columns per source neuron (kernel or flattened map)
            cols = alpha.repeat_interleave(per).view(1, *b.weight.shape[1:]) if b.weight.dim() > 2 else None
            if cols is None:
                b.weight.div_(alpha.repeat_interleave(b.weight.shape[1] // n)[None, :])
            else:
                b.weight.div_(cols)
    return model


@pytest.mark.parametrize("name", list(ZOO))
def test_dimension_is_m_minus_h(name):
    model, _ = make(name)
    gs = GSpace(model)
    m = sum(p.numel() for p in model.parameters())
    H = hidden_count(model)
    assert gs.dim == m - H
    assert gs.values().shape == (m - H,)
    assert sum(int(mk.sum()) for mk in gs.skeleton_masks.values()) == H


def test_dimension_by_hand():
    # 5-7-3-6-2 with biases: m = 35+7 + 21+3 + 18+6 + 12+2 = 104, H = 7+3+6 = 16
    assert GSpace(mlp((5, 7, 3, 6, 2))).dim == 88
    # thesis MNIST net, bias-free: m = 784*64 + 3*64*64 + 64*10, H = 4*64
    assert GSpace(mlp((784, 64, 64, 64, 64, 10), bias=False)).dim == 784 * 64 + 3 * 64 * 64 + 640 - 256


@pytest.mark.parametrize("skeleton", ["greedy", "diagonal"])
@pytest.mark.parametrize("name", list(ZOO))
def test_construction_keeps_model_and_round_trip(name, skeleton):
    model, x = make(name)
    before = copy.deepcopy(model.state_dict())
    y = model(x)
    gs = GSpace(model, skeleton=skeleton)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    v = gs.values()
    gs.load_values(v)
    for k, w in model.state_dict().items():
        torch.testing.assert_close(w, before[k], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gs.values(), v, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(model(x), y, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", ["unequal-bias", "conv", "width-one"])
def test_reparametrize_sets_skeleton_to_pm_one_and_keeps_function(name):
    model, x = make(name)
    y = model(x)
    v0 = GSpace(model).values()
    gs = GSpace(model, reparametrize=True)
    torch.testing.assert_close(model(x), y, rtol=1e-12, atol=1e-13)
    for pname, mask in gs.skeleton_masks.items():
        w = model.get_parameter(pname)[mask]
        torch.testing.assert_close(w.abs(), torch.ones_like(w), rtol=1e-13, atol=0)
    torch.testing.assert_close(gs.values(), v0, rtol=1e-12, atol=1e-14)  # path values are invariant


@pytest.mark.parametrize("name", list(ZOO))
def test_values_invariant_and_same_skeleton_under_rescaling(name):
    model, _ = make(name)
    other = rescale_randomly(copy.deepcopy(model), scale=3.0)
    a, b = GSpace(model), GSpace(other)
    assert all(torch.equal(a.skeleton_masks[k], b.skeleton_masks[k]) for k in a.skeleton_masks)
    assert all(torch.equal(p, q) for p, q in zip(a._pred_flat, b._pred_flat))
    torch.testing.assert_close(a.values(), b.values(), rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("skeleton", ["greedy", "diagonal"])
@pytest.mark.parametrize("name", list(ZOO))
def test_closed_form_gradient_matches_autograd(name, skeleton):
    model, x = make(name)
    gs = GSpace(model, skeleton=skeleton)
    target = torch.randn_like(model(x))
    model.zero_grad()
    F.mse_loss(model(x), target).backward()
    g = gs.gradient()
    v = gs.values().requires_grad_(True)
    out = torch.func.functional_call(model, gs.weights_from_values(v), (x,))
    F.mse_loss(out, target).backward()
    torch.testing.assert_close(g, v.grad, rtol=1e-9, atol=1e-10 * v.grad.abs().max().item())


def test_gsgd_step_matches_hand_written_chart():
    """1-2-2-1 bias-free net, diagonal skeleton, chart written out by hand (Jestädt Table 2.3):
    fixed: B[k,k], c[k]; coordinates v_a[r] = a[r] B[r,r] c[r], v_B[o,j] = a[j] B[o,j] c[o] (o != j)."""
    torch.manual_seed(3)
    model = mlp((1, 2, 2, 1), bias=False)
    a0 = model[0].weight.detach().clone().view(2)
    B0 = model[2].weight.detach().clone()
    c0 = model[4].weight.detach().clone().view(2)
    x = torch.tensor([[0.7], [1.3], [-0.4]], dtype=DT)
    t = torch.tensor([[0.2], [-0.5], [0.9]], dtype=DT)

    def weights(v):
        a = v[:2] / (B0.diagonal() * c0)
        B = torch.stack(
            [
                torch.stack([B0[0, 0], v[2] / (a[1] * c0[0])]),
                torch.stack([v[3] / (a[0] * c0[1]), B0[1, 1]]),
            ]
        )
        return a, B

    def loss(v):
        a, B = weights(v)
        h = torch.relu(x * a[None, :])
        h = torch.relu(h @ B.T)
        return ((h @ c0[:, None] - t) ** 2).mean()

    v0 = torch.stack([a0[0] * B0[0, 0] * c0[0], a0[1] * B0[1, 1] * c0[1], a0[1] * B0[0, 1] * c0[0],
                      a0[0] * B0[1, 0] * c0[1]])  # fmt: skip
    vv = v0.clone().requires_grad_(True)
    loss(vv).backward()
    lr = 0.1
    a1, B1 = weights(v0 - lr * vv.grad)

    gs = GSpace(model, skeleton="diagonal")
    torch.testing.assert_close(gs.values(), v0, rtol=1e-14, atol=0)
    opt = GSpaceOptimizer(gs, torch.optim.SGD, lr=lr)
    opt.zero_grad()
    F.mse_loss(model(x), t).backward()
    opt.step()
    torch.testing.assert_close(model[0].weight.view(2), a1, rtol=1e-12, atol=0)
    torch.testing.assert_close(model[2].weight, B1, rtol=1e-12, atol=0)
    torch.testing.assert_close(model[4].weight.view(2), c0, rtol=0, atol=0)


def _max_paths(model):
    """Brute force: max |product of weights| over all paths from each hidden neuron to the output (suffix)
    and from the input to each hidden neuron (prefix). Linear layers only."""
    Ws = [m.weight.detach().abs() for m in model if isinstance(m, nn.Linear)]
    best_suffix = []
    s = torch.ones(Ws[-1].shape[0], dtype=DT)
    for W in reversed(Ws[1:]):
        s = (W * s[:, None]).max(dim=0).values
        best_suffix.insert(0, s)
    best_prefix = []
    p = torch.ones(Ws[0].shape[1], dtype=DT)
    for W in Ws[:-1]:
        p = (W * p[None, :]).max(dim=1).values
        best_prefix.append(p)
    return best_prefix, best_suffix


def test_greedy_skeleton_maximises_path_factors():
    """(a) conditioning: the greedy skeleton gives the largest-magnitude skeleton paths (dynamic programming),
    checked against brute-force maxima; the diagonal rule can be arbitrarily worse."""
    torch.manual_seed(0)
    model = mlp((6, 5, 5, 4, 3), bias=False)
    with torch.no_grad():
        model[2].weight.diagonal().fill_(1e-9)  # near-zero diagonal skeleton weights
    P, S = GSpace(model).path_factors()
    bp, bs = _max_paths(model)
    for p, q in zip(P, bp):
        torch.testing.assert_close(p.abs(), q, rtol=1e-13, atol=0)
    for s, q in zip(S, bs):
        torch.testing.assert_close(s.abs(), q, rtol=1e-13, atol=0)
    _, S_diag = GSpace(model, skeleton="diagonal").path_factors()
    assert S_diag[0].abs().min() < 1e-8 < S[0].abs().min()


def test_greedy_skeleton_keeps_gradients_bounded_where_diagonal_explodes():
    torch.manual_seed(0)
    model = mlp((6, 5, 5, 4, 3), bias=False)
    with torch.no_grad():
        model[2].weight.diagonal().fill_(1e-9)
    x = torch.randn(16, 6, dtype=DT)
    norms = {}
    for sk in ("greedy", "diagonal"):
        gs = GSpace(model, skeleton=sk)
        model.zero_grad()
        model(x).pow(2).mean().backward()
        norms[sk] = gs.gradient().norm().item()
    assert norms["diagonal"] > 1e6 * norms["greedy"]


def _train_pair(cls, kw, model, other, steps=25, seed=5, gspace=True):
    gen = torch.Generator().manual_seed(seed)
    if gspace:
        opts = [GSpaceOptimizer(m, cls, **kw) for m in (model, other)]
    else:
        opts = [cls(m.parameters(), **kw) for m in (model, other)]
    in_shape = None
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            in_shape = (mod.in_features,) if isinstance(mod, nn.Linear) else (mod.in_channels, 8, 8)
            break
    for _ in range(steps):
        xb = torch.randn(16, *in_shape, generator=gen, dtype=DT)
        yb = torch.randint(0, 2, (16,), generator=gen)
        for m, o in zip((model, other), opts):
            o.zero_grad()
            F.cross_entropy(m(xb), yb).backward()
            o.step()


OPTS = {
    "sgd": (torch.optim.SGD, {"lr": 0.05}),
    "momentum": (torch.optim.SGD, {"lr": 0.02, "momentum": 0.9}),
    "adam": (torch.optim.Adam, {"lr": 0.01}),
}


@pytest.mark.parametrize("opt", list(OPTS))
@pytest.mark.parametrize("name", ["unequal-bias", "conv"])
def test_rescaled_copies_stay_the_same_function(name, opt):
    """The defining property: G-space training is a function of the network function only."""
    cls, kw = OPTS[opt]
    model, _ = make(name)
    x = torch.randn(32, *ZOO[name][1], dtype=DT)
    a, b = copy.deepcopy(model), rescale_randomly(copy.deepcopy(model), scale=1.0)
    torch.testing.assert_close(a(x), b(x), rtol=1e-12, atol=1e-13)
    _train_pair(cls, kw, a, b)
    moved = (a(x) - model(x)).abs().max().item()
    assert moved > 1e-3  # it did train
    torch.testing.assert_close(a(x), b(x), rtol=1e-9, atol=1e-10)
    # the same optimizer in weight space drifts apart
    pa, pb = copy.deepcopy(model), rescale_randomly(copy.deepcopy(model), scale=1.0)
    _train_pair(cls, kw, pa, pb, gspace=False)
    assert (pa(x) - pb(x)).abs().max().item() > 1e-3


def test_optimizer_state_dict_round_trip_and_kept_state():
    model, x = make("unequal-bias")
    t = torch.randn(7, 2, dtype=DT)

    def run(m, o, n):
        for _ in range(n):
            o.zero_grad()
            F.mse_loss(m(x), t).backward()
            o.step()

    ref = copy.deepcopy(model)
    ro = GSpaceOptimizer(ref, torch.optim.Adam, lr=0.01, betas=(0.8, 0.95))
    run(ref, ro, 3)
    assert ro.state and ro.inner.state  # state kept across steps
    saved_model, saved_opt = copy.deepcopy(ref.state_dict()), copy.deepcopy(ro.state_dict())
    run(ref, ro, 3)
    new = copy.deepcopy(model)
    no = GSpaceOptimizer(new, torch.optim.Adam, lr=0.01, betas=(0.8, 0.95))
    new.load_state_dict(saved_model)
    no.load_state_dict(saved_opt)
    run(new, no, 3)
    for k, w in ref.state_dict().items():
        torch.testing.assert_close(new.state_dict()[k], w, rtol=1e-12, atol=1e-14)


def _same_skeleton(a, b):
    sa, sb = a.chart_state(), b.chart_state()
    return all(torch.equal(x, y) for k in ("succ", "pred") for x, y in zip(sa[k], sb[k]))


@pytest.mark.parametrize("reparametrize", [False, True])
def test_resume_from_state_dict_is_bit_identical(reparametrize):
    """A run resumed from (model, optimizer) state dicts continues bitwise like the uninterrupted one, although
    a chart selected from the checkpoint's weights has another skeleton (greedy selection moved)."""
    model, _ = make("unequal-bias")
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(16, 5, generator=gen, dtype=DT), torch.randn(16, 2, generator=gen, dtype=DT))
               for _ in range(30)]  # fmt: skip
    kw = dict(lr=0.05, betas=(0.8, 0.95), reparametrize=reparametrize)

    def run(m, o, data):
        for x, t in data:
            o.zero_grad()
            F.mse_loss(m(x), t).backward()
            o.step()

    ref = copy.deepcopy(model)
    ro = GSpaceOptimizer(ref, torch.optim.Adam, **kw)
    run(ref, ro, batches[:20])
    saved_model, saved_opt = copy.deepcopy(ref.state_dict()), copy.deepcopy(ro.state_dict())
    run(ref, ro, batches[20:])

    new = copy.deepcopy(model)
    new.load_state_dict(saved_model)
    no = GSpaceOptimizer(new, torch.optim.Adam, **kw)
    assert not _same_skeleton(no.gspace, ro.gspace)  # the failure mode: another chart from later weights
    no.load_state_dict(saved_opt)
    assert _same_skeleton(no.gspace, ro.gspace)
    for k, w in saved_model.items():
        assert torch.equal(new.state_dict()[k], w), k  # weights are the checkpoint's (also after reparametrize)
    run(new, no, batches[20:])
    for k, w in ref.state_dict().items():
        assert torch.equal(new.state_dict()[k], w), k
    assert torch.equal(no._coords, ro._coords)


def test_resume_after_external_weight_change_and_bad_state():
    """Saved after the weights were changed from outside (coordinates stale): the resumed run re-reads them, as
    the uninterrupted one does at its next step. A state dict of another network is rejected."""
    model, x = make("unequal-bias")
    t = torch.randn(7, 2, dtype=DT)

    def run(m, o, n):
        for _ in range(n):
            o.zero_grad()
            F.mse_loss(m(x), t).backward()
            o.step()

    ref = copy.deepcopy(model)
    ro = GSpaceOptimizer(ref, torch.optim.SGD, lr=0.05, momentum=0.9)
    run(ref, ro, 3)
    with torch.no_grad():
        ref[0].weight.mul_(1.5)  # changed outside the optimizer
    saved_model, saved_opt = copy.deepcopy(ref.state_dict()), copy.deepcopy(ro.state_dict())
    assert saved_opt["gspace"]["stale"]
    run(ref, ro, 3)
    new = copy.deepcopy(model)
    new.load_state_dict(saved_model)
    no = GSpaceOptimizer(new, torch.optim.SGD, lr=0.05, momentum=0.9)
    no.load_state_dict(saved_opt)
    run(new, no, 3)
    for k, w in ref.state_dict().items():
        assert torch.equal(new.state_dict()[k], w), k
    other = GSpaceOptimizer(mlp((5, 7, 4, 6, 2)), torch.optim.SGD, lr=0.05, momentum=0.9)
    with pytest.raises(ValueError, match="load it into the model it was saved from"):
        other.load_state_dict(saved_opt)


def test_reset_state_each_step_equals_fresh_inner_optimizer_each_step():
    model, x = make("unequal-bias")
    t = torch.randn(7, 2, dtype=DT)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    oa = GSpaceOptimizer(a, torch.optim.Adam, lr=0.01, reset_state_each_step=True)
    gs_b = GSpace(b)
    for _ in range(4):
        oa.zero_grad()
        F.mse_loss(a(x), t).backward()
        oa.step()
        assert len(oa.inner.state) == 0
        ob = GSpaceOptimizer(gs_b, torch.optim.Adam, lr=0.01)  # thesis: a new wrapper every step
        ob.zero_grad()
        F.mse_loss(b(x), t).backward()
        ob.step()
    torch.testing.assert_close(a(x), b(x), rtol=1e-10, atol=1e-12)


def test_lr_scheduler_and_closure_and_zero_grad():
    model, x = make("unequal-bias")
    t = torch.randn(7, 2, dtype=DT)
    opt = GSpaceOptimizer(model, torch.optim.SGD, lr=0.1, momentum=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(x), t)
        loss.backward()
        return loss

    losses = []
    for _ in range(3):
        losses.append(opt.step(closure).item())
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert losses[-1] < losses[0]
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_step_hooks_run_and_fixed_weight_restore_hook_sees_final_weights():
    """GSpaceOptimizer.step runs its own and the global optimizer step hooks like any torch optimizer (the hook
    machinery is inlined for speed): pre hooks before the gradient is read, post hooks after the weights are
    written."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    model, x = make("unequal-bias")
    t = torch.randn(7, 2, dtype=DT)
    opt = GSpaceOptimizer(model, torch.optim.SGD, lr=0.05)
    calls = []
    w = model[0].weight
    h1 = opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", o is opt, w.detach().clone())))
    h2 = opt.register_step_post_hook(lambda o, a, k: calls.append(("post", o is opt, w.detach().clone())))
    h3 = register_optimizer_step_post_hook(lambda o, a, k: calls.append(("global", o is opt, None)))
    try:
        before = w.detach().clone()
        opt.zero_grad()
        F.mse_loss(model(x), t).backward()
        opt.step()
    finally:
        for h in (h1, h2, h3):
            h.remove()
    kinds = [c[0] for c in calls]
    assert kinds.count("pre") == 1 and kinds.count("post") == 1
    assert ("global", True, None) in calls  # the global hook saw the G-space optimizer itself
    assert kinds.count("global") == 1  # once per step: not again for the inner optimizer
    pre = next(c for c in calls if c[0] == "pre")
    post = next(c for c in calls if c[0] == "post")
    assert pre[1] and post[1]
    assert torch.equal(pre[2], before) and torch.equal(post[2], w.detach())
    assert not torch.equal(post[2], before)


def test_external_weight_change_is_picked_up():
    model, x = make("unequal-bias")
    other, _ = make("unequal-bias", seed=9)
    t = torch.randn(7, 2, dtype=DT)
    # diagonal: index-based skeleton, so both charts have the same skeleton positions
    opt = GSpaceOptimizer(model, torch.optim.SGD, lr=0.01, skeleton="diagonal")
    model.load_state_dict(other.state_dict())  # in place: bumps the version counters
    ref = copy.deepcopy(model)
    ro = GSpaceOptimizer(ref, torch.optim.SGD, lr=0.01, skeleton="diagonal")
    for m, o in ((model, opt), (ref, ro)):
        o.zero_grad()
        F.mse_loss(m(x), t).backward()
        o.step()
    torch.testing.assert_close(model(x), ref(x), rtol=1e-12, atol=1e-13)


def test_float32_and_lbfgs():
    torch.manual_seed(0)
    model = mlp((4, 6, 3), bias=True).float()
    x, t = torch.randn(20, 4), torch.randn(20, 3)
    opt = GSpaceOptimizer(model, torch.optim.LBFGS, lr=0.5, max_iter=5)
    assert opt._coords.dtype == torch.float32

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(x), t)
        loss.backward()
        return loss

    first = closure().item()
    for _ in range(3):
        opt.step(closure)
    assert F.mse_loss(model(x), t).item() < first
    assert model[0].weight.dtype == torch.float32


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) + x)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (Residual(), "residual"),
        (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)), "'1'.*BatchNorm1d"),
        (nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2)), "'1'.*Sigmoid.*not positively"),
        (nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), "Tanh"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.PReLU(), nn.Linear(4, 2)), "'2'.*PReLU"),
        (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.Conv2d(4, 2, 1)), "groups=2"),
        (nn.Sequential(nn.ConvTranspose2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 1)), "ConvTranspose2d"),
        (nn.Sequential(nn.ReLU()), "no nn.Linear"),
    ],
)
def test_unsupported_models_raise_clear_errors(model, match):
    with pytest.raises(ValueError, match=match):
        GSpace(model)


def test_zero_skeleton_weight_and_bad_option_raise():
    model = mlp((3, 3, 2), bias=False)
    with torch.no_grad():
        model[2].weight[:, 1] = 0.0  # neuron 1 has no outgoing weight at all: dead
    with pytest.raises(ValueError, match=r"neurons \[1\].*zero"):
        GSpace(model)
    model = mlp((3, 3, 3), bias=False)
    with torch.no_grad():
        model[2].weight.diagonal().zero_()  # diagonal skeleton weights are zero
    with pytest.raises(ValueError, match=r"zero.*skeleton='greedy'"):
        GSpace(model, skeleton="diagonal")
    GSpace(model)  # greedy avoids them
    with pytest.raises(ValueError, match="'greedy', 'diagonal'"):
        GSpace(model, skeleton="diag")
    with pytest.raises(ValueError, match="shape"):
        GSpace(model).load_values(torch.zeros(3, dtype=DT))


def test_deep_float32_chain_underflow_is_named_not_called_dead():
    from nnteleport.errors import UnsupportedModelError

    torch.manual_seed(0)
    layers = []
    for _ in range(100):
        layers += [nn.Linear(8, 8), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(8, 2))
    with pytest.raises(UnsupportedModelError, match=r"underflows float32 .*no neuron is dead: use float64") as e:
        GSpace(model)
    assert "the neuron is dead" not in str(e.value) and "coordinates are undefined" not in str(e.value)
    assert GSpace(model.double()).dim > 0  # float64 reaches that deep


def test_bare_single_layer_gets_a_message_about_the_layer():
    from nnteleport.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match=r"bare Linear layer; one layer has no hidden neurons") as e:
        GSpaceOptimizer(nn.Linear(4, 3), torch.optim.SGD, lr=0.1)
    assert "use nn.Linear" not in str(e.value)


@pytest.mark.parametrize("reparametrize", [False, True], ids=["dense", "direct"])
def test_frozen_chain_weights_are_refused_not_moved(reparametrize):
    """Plain SGD leaves ``requires_grad=False`` weights alone; a G-space step would move them (a path value mixes
    the weights of every layer), so GSpaceOptimizer refuses them by name, at construction (before
    ``reparametrize`` rescales anything) and at a step after a layer was frozen; nothing moves either way."""
    from nnteleport.errors import UnsupportedModelError

    model, x = make("unequal-bias")
    t = torch.randn(7, 2, dtype=DT)
    model[2].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match=r"\['2.weight'\] have requires_grad=False"):
        opt = GSpaceOptimizer(model, torch.optim.SGD, lr=0.1, reparametrize=reparametrize)
        for _ in range(3):
            opt.zero_grad()
            F.mse_loss(model(x), t).backward()
            opt.step()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    model[2].weight.requires_grad_(True)
    opt = GSpaceOptimizer(model, torch.optim.SGD, lr=0.1, reparametrize=reparametrize)
    model[4].weight.requires_grad_(False)  # frozen after the optimizer was built
    opt.zero_grad()
    F.mse_loss(model(x), t).backward()
    frozen = model[4].weight.detach().clone()
    with pytest.raises(UnsupportedModelError, match=r"\['4.weight'\]"):
        opt.step()
    assert torch.equal(model[4].weight, frozen)


class _ShiftedReLU(nn.ReLU):
    """A ReLU subclass whose forward is not homogeneous: must not pass for a ReLU."""

    def forward(self, x):
        return super().forward(x) + 1.0


def _conv_chain(*between):
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), *between, nn.Conv2d(4, 3, 3), nn.ReLU(), nn.Flatten(),
                         nn.LazyLinear(2)).to(DT)  # fmt: skip


class _FunctionalForms(nn.Module):
    """The functional / method forms chain discovery matched by name before it used the engine's table."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 3, 1)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        x = F.leaky_relu(self.c1(x), 0.1)
        x = F.dropout(F.max_pool2d(torch.relu_(x), 2), 0.0, training=False)
        x = F.avg_pool2d(x.relu_(), 1)
        x = torch.flatten(F.relu(self.c2(x)), 1).contiguous()
        return self.fc(x.view(x.size(0), -1))


HOMOGENEOUS_BETWEEN = {
    "RReLU": lambda: _conv_chain(nn.RReLU(0.1, 0.3)),  # eval mode: slope (l + u) / 2; train mode: random > 0
    "LPPool2d": lambda: _conv_chain(nn.ReLU(), nn.LPPool2d(2, 2)),
    "lp_pool2d": lambda: _conv_chain(nn.ReLU(), _Fn(lambda x: F.lp_pool2d(x, 3, 2))),
    "rrelu": lambda: _conv_chain(_Fn(lambda x: F.rrelu(x, 0.1, 0.3, training=False))),
    "Upsample+ZeroPad2d": lambda: _conv_chain(nn.ReLU(), nn.Upsample(scale_factor=2), nn.ZeroPad2d(1)),
    "interpolate": lambda: _conv_chain(nn.ReLU(), _Fn(lambda x: F.interpolate(x, scale_factor=0.5))),
    "functional-forms": lambda: _FunctionalForms().to(DT),
}


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("name", list(HOMOGENEOUS_BETWEEN))
def test_ops_of_the_engine_table_are_chain_ops(name):
    """Chain discovery reads the engine's one table of positively homogeneous ops (``rules.homogeneity``): RReLU,
    LPPool, upsampling and padding now pass (the old gspace list lacked them), the name-matched functional forms
    still do. The maths needs the homogeneity: reparametrising keeps the function, and the closed-form gradient
    matches autograd through the weight allocation."""
    torch.manual_seed(0)
    model = HOMOGENEOUS_BETWEEN[name]().eval()
    x = torch.randn(5, 2, 8, 8, dtype=DT)
    y = model(x)  # materialises LazyLinear
    assert len(trace_chain(model)) == 3
    gs = GSpace(model, reparametrize=True)
    torch.testing.assert_close(model(x), y, rtol=1e-12, atol=1e-13)
    target = torch.randn_like(y)
    model.zero_grad()
    F.mse_loss(model(x), target).backward()
    g = gs.gradient()
    v = gs.values().requires_grad_(True)
    F.mse_loss(torch.func.functional_call(model, gs.weights_from_values(v), (x,)), target).backward()
    torch.testing.assert_close(g, v.grad, rtol=1e-9, atol=1e-10 * v.grad.abs().max().item())


@pytest.mark.parametrize(
    ("between", "match"),
    [((_ShiftedReLU(),), "'add'.*not positively"), ((nn.ReLU6(),), "ReLU6"), ((nn.AlphaDropout(0.1),), "Alpha")],
)
def test_non_homogeneous_ops_between_layers_are_refused(between, match):
    """A subclass of a listed op with its own forward is not taken for the op (fx traces into it and finds the
    shift); ReLU6 and AlphaDropout are not positively homogeneous."""
    model = nn.Sequential(nn.Conv2d(2, 4, 3), *between, nn.Conv2d(4, 2, 1))
    with pytest.raises(ValueError, match=match):
        trace_chain(model)
    with pytest.raises(ValueError, match=match):
        GSpace(model)
