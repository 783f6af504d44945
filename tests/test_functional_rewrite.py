"""``functional="rewrite"`` (the default): activations called as functions are teleported, the result stays an
instance of the user's class (a generated subclass whose forward runs the traced graph with the calls wrapped).

Every exactness check compares the original model with the teleported one on fresh random float64 inputs, in train
and eval mode (the RNG seeded before each forward, so dropout draws the same masks): the reference is the user's own
forward, independent of the engine.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnteleport as nt
from nnteleport.errors import UnsupportedModelError

EPS64 = torch.finfo(torch.float64).eps


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / a.abs().max().clamp_min(1e-300)).detach())


def same_function(m: nn.Module, v: nn.Module, shape: tuple[int, ...], tol: float = 1e6 * EPS64) -> None:
    """``v`` computes ``m``'s function on fresh inputs of two batch sizes, in train and eval mode."""
    g = torch.Generator().manual_seed(5)
    for train in (True, False):
        for batch in (4, 7):
            x = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
            outs = []
            for model in (m, v):
                model.train(train)
                torch.default_generator.manual_seed(3)
                with torch.no_grad():
                    outs.append(model(x.clone()))
            err = rel_err(*outs)
            assert err < tol, f"train={train} batch={batch}: relative error {err:.2e}"


def teleport(m: nn.Module, x: torch.Tensor, **kw) -> nn.Module:
    kw.setdefault("cob_range", 0.9)
    kw.setdefault("sampling", "inter")
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return nt.teleport(m, x, **kw)


class Issue(nn.Module):
    """The forward of the issue: ``o(silu(b(gelu(a(x)))))``, plus a tensor method and a torch function."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.o = nn.Linear(5, 8), nn.Linear(8, 8), nn.Linear(8, 6), nn.Linear(6, 3)
        self.note = "kept"

    def forward(self, x):
        h = F.silu(self.b(F.gelu(self.a(x))))
        return self.o(torch.sigmoid(self.c(h.tanh())))

    def double_it(self, x):
        return 2 * self(x)


def _issue() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Issue().double(), torch.randn(3, 5, dtype=torch.float64)


def test_default_teleports_functional_activations_in_the_users_class():
    m, x = _issue()
    assert nt.analyze(m, x, functional="constrain").report.free_neurons == 0
    rep = nt.analyze(m, x).report
    graph = nt.analyze(m, x, functional="graph").report
    assert (rep.free_neurons, rep.parameters_moving) == (graph.free_neurons, graph.parameters_moving)
    assert rep.free_neurons == rep.hidden_neurons == 22
    v = teleport(m, x)
    assert isinstance(v, Issue) and type(v) is not Issue and type(v).__name__ == "TeleportedIssue"
    assert v.note == "kept" and rel_err(m.double_it(x), v.double_it(x)) < 1e6 * EPS64  # methods call forward
    user_keys = list(m.state_dict())
    keys = list(v.state_dict())
    assert keys[: len(user_keys)] == user_keys
    assert sorted(keys[len(user_keys) :]) == sorted(f"teleport_functional.{n}.tau" for n in ("gelu", "silu", "tanh",
                                                                                             "sigmoid"))  # fmt: skip
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in v.named_parameters()]
    assert {n for n, _ in m.named_children()} | {"teleport_functional"} == {n for n, _ in v.named_children()}
    assert max(rel_err(p, q) for p, q in zip(m.parameters(), v.parameters())) > 1e-2  # it moved
    same_function(m, v, (5,))
    assert type(m) is Issue and type(teleport(m, x)) is type(v)  # the user's model untouched; one class per graph


def test_report_lists_functional_call_sites_by_default():
    m, x = _issue()
    rep = nt.analyze(m, x).report
    sites = [s["module"] for s in rep.wrapper_sites if s["functional"]]
    assert sites == ["gelu", "silu", "tanh", "sigmoid"]
    assert "gelu (functional call; wrapped where tau != 1)" in str(rep)


@pytest.mark.parametrize("name", ["MLPFunctional", "ConvBNResidual", "SqueezeExcite"])
def test_coverage_equals_graph_mode_and_exact(name):
    import tests.engine_models as em

    torch.manual_seed(0)
    m = getattr(em, name)().double()
    shape = {"MLPFunctional": (6,), "ConvBNResidual": (3, 8, 8), "SqueezeExcite": (3, 6, 6)}[name]
    x = torch.randn(4, *shape, dtype=torch.float64)
    rep, graph = nt.analyze(m, x).report, nt.analyze(m, x, functional="graph").report
    assert (rep.free_neurons, rep.parameters_moving) == (graph.free_neurons, graph.parameters_moving)
    c = nt.analyze(m, x, functional="constrain")  # fewer free neurons, or more restricted to tau > 0
    assert rep.free_neurons > c.report.free_neurons or int(nt.analyze(m, x).positive_mask.sum()) < int(
        c.positive_mask.sum()
    )
    v = teleport(m, x)
    assert isinstance(v, type(m))
    same_function(m, v, shape)


class Calls(nn.Module):
    """Keyword arguments, the tensor passed by keyword, in-place functional calls, an alias read after one."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(12, 2)

    def forward(self, x):
        h = F.leaky_relu(self.a(x), negative_slope=0.2)
        h = F.gelu(input=self.b(h), approximate="tanh")
        g = self.c(h)
        skip = g
        g = F.relu(g, inplace=True)  # skip is overwritten too
        g = g.clamp_(min=-0.3, max=0.4)
        return self.d(torch.cat([g, skip], dim=1))


class BNSilu(nn.Module):
    """Batch norm (batch statistics in train mode) followed by a functional SiLU, and a channel pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        h = F.silu(self.bn(self.conv(x)))
        h = F.max_pool2d(F.elu(self.conv2(h)), 2)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class Branchy(nn.Module):
    """``if self.training:``: the train and eval graphs differ, with a call only the train graph makes."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.o = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if self.training:
            h = F.softplus(self.drop(h)) * 0.5
        return self.o(F.gelu(self.b(h)))


@pytest.mark.parametrize("cls,shape", [(Calls, (4,)), (BNSilu, (2, 6, 6)), (Branchy, (4,))], ids=str)
@pytest.mark.parametrize("sampling", ["intra", "inter"])
def test_exact_on_fresh_inputs(cls, shape, sampling):
    torch.manual_seed(1)
    m = cls().double()
    x = torch.randn(3, *shape, dtype=torch.float64)
    plan = nt.analyze(m, x)
    assert plan.functional_sites and not plan.report.notes
    v = teleport(m, x, sampling=sampling)
    assert isinstance(v, cls) and type(v) is not cls
    same_function(m, v, shape)
    for p in [*m.modules()]:  # batch-norm statistics moved in the same way in both models
        if isinstance(p, nn.BatchNorm2d):
            assert rel_err(p.running_var, v.get_submodule("bn").running_var) < 1e6 * EPS64


def test_mode_dependent_graphs_dispatch_on_training():
    torch.manual_seed(1)
    m = Branchy().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    plan = nt.analyze(m, x)
    names = [s.path for s in plan.functional_sites]
    assert "softplus" in names and "tanh" in names  # the train graph's only call has a site too
    v = teleport(m, x)
    assert len({id(g) for g in type(v)._nnteleport_spec.graphs}) == 2
    same_function(m, v, (4,))
    v.train()
    v.a.eval()  # a leaf of the graph: it runs its own forward, in its own mode, as in the user's forward
    torch.default_generator.manual_seed(0)
    out_v = v(x)
    m.train()
    m.a.eval()
    torch.default_generator.manual_seed(0)
    assert rel_err(m(x), out_v) < 1e6 * EPS64

    outer = nn.Sequential(Branchy()).double()  # Branchy's code is inlined into the graph of the Sequential
    w = teleport(outer, x)
    w.train()
    w[0].eval()  # a mixed mode the graphs were not traced for
    with pytest.raises(UnsupportedModelError, match="eval mode"):
        w(x)


def _round_trips(m: nn.Module, v: nn.Module, shape: tuple[int, ...]) -> None:
    for w in (copy.deepcopy(v), pickle.loads(pickle.dumps(v))):
        assert type(w) is type(v) and w is not v
        same_function(m, w, shape)
    buf = io.BytesIO()
    torch.save(v.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf)
    other = copy.deepcopy(v)
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
        for k, b in other.named_buffers():
            if k.endswith(".tau"):
                b.fill_(1.0)
    other.load_state_dict(state)
    same_function(m, other, shape)


def test_deepcopy_pickle_and_state_dict_round_trip():
    m, x = _issue()
    v = teleport(m, x)
    _round_trips(m, v, (5,))
    fresh = Issue().double()
    with pytest.raises(RuntimeError, match=r"teleport_functional\.gelu\.tau"):  # strict: loud, never another function
        fresh.load_state_dict(v.state_dict())
    with pytest.raises(RuntimeError, match="Missing key"):
        copy.deepcopy(v).load_state_dict(m.state_dict())


def test_to_dtype_device_and_modes():
    m, x = _issue()
    v = teleport(m, x)
    w = copy.deepcopy(v).float()
    assert all(t.dtype == torch.float32 for t in w.state_dict().values())
    xf = x.float()
    assert rel_err(m(x).float(), w(xf)) < 1e-4
    w = copy.deepcopy(v).to("cpu", torch.float64).eval()
    assert not w.training and rel_err(m.eval()(x), w(x)) < 1e6 * EPS64
    assert w.train().training and rel_err(m.train()(x), w(x)) < 1e6 * EPS64


def test_composition_and_inverse():
    m, x = _issue()
    cob = nt.sample_cob(m, x, 0.9, "inter", torch.Generator().manual_seed(2))
    v = nt.teleport(m, x, cob)
    w = teleport(v, x, generator=torch.Generator().manual_seed(3))
    assert isinstance(w, Issue)
    same_function(m, w, (5,), tol=2e6 * EPS64)
    back = nt.teleport(v, x, cob.inverse())  # teleporting by the inverse returns to the original weights
    for (n, p), q in zip(m.named_parameters(), back.parameters()):
        assert rel_err(p, q) < 1e3 * EPS64, n
    taus = [b for k, b in back.named_buffers() if k.endswith(".tau")]
    assert taus and all(float((t - 1).abs().max()) < 1e3 * EPS64 for t in taus)
    same_function(m, back, (5,))


def test_inplace_keeps_the_object_and_its_parameters():
    m, x = _issue()
    ref = copy.deepcopy(m)
    params = [id(p) for p in m.parameters()]
    out = teleport(m, x, inplace=True)
    assert out is m and isinstance(m, Issue) and type(m) is not Issue
    assert [id(p) for p in m.parameters()] == params
    same_function(ref, m, (5,))
    again = teleport(m, x, inplace=True, generator=torch.Generator().manual_seed(4))  # composes in place
    assert again is m
    same_function(ref, m, (5,), tol=2e6 * EPS64)


def test_no_wrapper_needed_keeps_the_plain_class():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    m, x = M().double(), torch.randn(4, 3, dtype=torch.float64)
    v = teleport(m, x, sampling="intra")  # tau > 0 at a ReLU call: f(tau z) = tau f(z), no wrapper
    assert type(v) is M
    same_function(m, v, (3,))


class Hooked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.c, self.mid, self.b = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 2)
        self.calls = [0]
        self.mid.register_forward_hook(self._count)

    def _count(self, module, args, out):
        self.calls[0] += 1
        return out * 1.5

    def forward(self, x):
        return self.b(F.gelu(self.mid(self.c(F.gelu(self.a(x))))))  # mid: a black box (its hook)


def test_hooks_run_in_the_teleported_model():
    torch.manual_seed(0)
    m, x = Hooked().double(), torch.randn(3, 3, dtype=torch.float64)
    v = teleport(m, x)
    assert type(v) is not Hooked
    seen = []
    v.register_forward_hook(lambda mod, args, out: seen.append(out.shape))  # a hook on the root runs too
    before = v.calls[0]
    same_function(m, v, (3,))
    assert v.calls[0] - before == 4 and len(seen) == 4  # one call per forward of same_function


def test_changes_after_teleport_are_refused_not_ignored():
    m, x = _issue()
    v = teleport(m, x)
    with pytest.raises(UnsupportedModelError, match="changed since teleport"):
        w = copy.deepcopy(v)
        w.note = "another value"  # a plain attribute the forward could branch on
        w(x)

    class Opt(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x, scale=None):
            h = F.gelu(self.a(x))
            return self.b(h if scale is None else h * scale)

    o, xo = Opt().double(), torch.randn(2, 3, dtype=torch.float64)
    vo = teleport(o, xo)
    assert rel_err(o(xo), vo(xo)) < 1e6 * EPS64 and rel_err(o(xo), vo(xo, None)) < 1e6 * EPS64
    with pytest.raises(UnsupportedModelError, match="'scale' at its default"):
        vo(xo, scale=2.0)


class SideEffect(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        self.last = h  # the rewritten graph would not do this
        return self.b(F.gelu(h))


class Alias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        skip = h
        h += self.b(x)  # torch.fx traces h + b(x): skip would keep the old value in the graph
        return self.c(F.gelu(h) + skip)


@pytest.mark.parametrize("cls,why", [(SideEffect, "sets attribute 'last'"), (Alias, "another output")])
def test_forward_the_graph_does_not_capture_falls_back_to_constrain(cls, why):
    torch.manual_seed(0)
    m, x = cls().double(), torch.randn(3, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="fell back to 'constrain'"):
        plan = nt.analyze(m, x)
    assert not plan.functional_sites and why in plan.report.notes[0] and "note: " in str(plan.report)
    constrain = nt.analyze(m, x, functional="constrain").report
    assert plan.report.free_neurons == constrain.free_neurons and not constrain.notes
    v = teleport(m, x)
    assert type(v) is cls
    same_function(m, v, (3,))
    if cls is Alias:
        with pytest.raises(UnsupportedModelError, match="another output"):
            teleport(m, x, functional="graph")  # graph mode refuses a graph that computes something else


def test_forward_replaced_on_the_instance_falls_back():
    m, x = _issue()
    m.forward = m.forward  # an instance attribute shadows the class's forward
    with pytest.warns(UserWarning, match="replaced on the instance"):
        v = teleport(m, x)
    assert type(v) is Issue


# ---------------------------------------------------------------------------------- only forward is rewritten
def _act(h):
    return F.gelu(h)  # a module-level helper: its call runs in the code of whoever calls it


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 4)

    def forward(self, x):
        return x + self.b(F.gelu(self.a(x)))


class Staged(nn.Module):
    """timm-like: ``forward`` = ``forward_head(forward_features(x))``; the features run inlined submodules
    (``block1``, the ``stages`` Sequential) whose code calls ``F.gelu``, and root code calls ``tanh``."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.block1 = nn.Linear(3, 4), Block()
        self.stages = nn.Sequential(Block(), Block())
        self.mid, self.head, self.act = nn.Linear(4, 5), nn.Linear(5, 2), nn.GELU()

    def embed(self, x):
        return torch.tanh(self.inp(x))

    def forward_features(self, x):
        return self.stages(self.block1(self.embed(x)))

    def forward_head(self, h):
        return self.head(_act(self.mid(h)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def predict(self, x):  # calls the network: the teleported forward runs
        return self(x).argmax(-1)

    def scores(self, x):
        return 2 * self.forward(x)

    def activate(self, h):  # an activation module: a leaf of the graph, teleported as a module
        return self.act(h)


def _staged() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = Staged().double()
    x = torch.randn(6, 3, dtype=torch.float64)
    return m, teleport(m, x), x


def _refuses_partial_calls(v: nn.Module, x: torch.Tensor) -> None:
    h = torch.randn(6, 4, dtype=x.dtype)
    for call, who in [
        (lambda: v.block1(h), "'block1'"),
        (lambda: v.stages(h), "'stages'"),
        (lambda: v.stages[1](h), r"'stages\.1'"),
        (lambda: v.forward_features(x), "'block1'|embed"),
        (lambda: v.embed(x), "embed"),
        (lambda: v.forward_head(h), "forward_head"),
    ]:
        with pytest.raises(UnsupportedModelError, match=who):
            call()


def test_submodules_and_methods_whose_code_the_graph_rewrote_refuse_to_run_unwrapped():
    """Before: ``v.block1(h)``, ``v.forward_features(x)`` ran the user's code without the wrappers of its calls on
    weights rescaled as if they were there -- neither the original nor the teleported function, silently."""
    m, v, x = _staged()
    same_function(m, v, (3,))
    assert isinstance(v.block1, Block) and isinstance(v.stages, nn.Sequential)
    assert type(v.block1) is not Block and type(v.stages[0]) is type(v.block1)
    _refuses_partial_calls(v, x)
    assert type(v.inp) is nn.Linear and type(v.head) is nn.Linear  # leaves run their own forward
    assert torch.equal(m.predict(x), v.predict(x)) and rel_err(m.scores(x), v.scores(x)) < 1e6 * EPS64
    h = torch.randn(6, 5, dtype=torch.float64)
    assert rel_err(v.act(h), v.activate(h)) == 0  # a module call from a method is the module's own forward
    assert list(v.state_dict()) == list(copy.deepcopy(v).state_dict())


def test_the_guards_survive_copies_pickles_conversions_and_a_second_teleport():
    m, v, x = _staged()
    buf = io.BytesIO()
    torch.save(v, buf)
    buf.seek(0)
    for w in (copy.deepcopy(v), pickle.loads(pickle.dumps(v)), torch.load(buf, weights_only=False)):
        assert type(w.block1) is type(v.block1) and type(w) is type(v)
        same_function(m, w, (3,))
        _refuses_partial_calls(w, x)
    w = copy.deepcopy(v).float()
    assert type(w.stages[0]) is type(v.stages[0]) and rel_err(m(x).float(), w(x.float())) < 1e-4
    _refuses_partial_calls(w, x.float())
    fresh = copy.deepcopy(v)  # a new object: analysed afresh, its traced graph is the rewritten forward
    w = teleport(fresh, x, generator=torch.Generator().manual_seed(7))
    same_function(m, w, (3,), tol=2e6 * EPS64)
    _refuses_partial_calls(w, x)
    u = teleport(v, x, inplace=True, generator=torch.Generator().manual_seed(8))
    same_function(m, u, (3,), tol=2e6 * EPS64)
    _refuses_partial_calls(u, x)


def test_no_guard_without_a_wrapped_call():
    """ReLU-like calls under ``tau > 0`` need no wrapper: the plain classes, every submodule callable."""

    class ReluBlock(Block):
        def forward(self, x):
            return x + self.b(F.relu(self.a(x)))

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.block, self.out = nn.Linear(3, 4), ReluBlock(), nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.block(F.relu(self.inp(x))))

    torch.manual_seed(0)
    m, x = M().double(), torch.randn(5, 3, dtype=torch.float64)
    v = teleport(m, x, sampling="intra")
    assert type(v) is M and type(v.block) is ReluBlock
    same_function(m, v, (3,))


class ShapeConstants(nn.Module):
    """Tensors built in forward: from the input's shape (a graph node: right at every length), constant ones (a
    tensor constant the class holds), and one whose dtype is read from a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):  # x: (batch, length, 4)
        h = F.gelu(self.a(x)) * torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
        scale = torch.linspace(0.5, 1.0, 4, dtype=next(self.parameters()).dtype)
        return self.b(F.gelu(h * scale))


def test_tensors_built_in_forward_are_exact_at_other_lengths_and_refused_after_a_dtype_change():
    torch.manual_seed(0)
    m, x = ShapeConstants().double(), torch.randn(2, 5, 4, dtype=torch.float64)
    v = teleport(m, x)
    assert type(v) is not ShapeConstants and list(type(v)._nnteleport_spec.constants)  # the linspace is frozen
    for length in (1, 3, 9):
        same_function(m, v, (length, 4))
    w = copy.deepcopy(v).float()  # forward would build a float32 linspace, the graph holds the float64 one
    with pytest.raises(UnsupportedModelError, match="tensor constants"):
        w(x.float())
    back = w.double()  # the traced dtype again: it runs (the parameters went through float32)
    assert rel_err(m(x), back(x)) < 1e-5


class RandomInForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        noise = 1 + 0.1 * torch.rand(4, dtype=torch.float64)  # no input in it: tracing draws it once
        return self.b(F.gelu(self.a(x)) * noise)  # a new draw every call


def test_random_tensor_built_in_forward_is_not_frozen():
    torch.manual_seed(0)
    m, x = RandomInForward().double(), torch.randn(3, 4, dtype=torch.float64)
    with pytest.warns(UserWarning, match="fell back to 'constrain'"):
        v = teleport(m, x)
    assert type(v) is RandomInForward
    same_function(m, v, (4,))


def test_missing_module_stacks_fail_loudly(monkeypatch):
    """The submodule guards read ``nn_module_stack`` from the traced nodes: a torch that stops recording it must
    make the rewrite refuse, never leave the inlined submodules unguarded."""
    from nnteleport.engine import rewrite_guards

    torch.manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64)
    tp = nt.teleport(Staged().double(), x, cob_range=0.5, sampling="inter")
    with pytest.raises(UnsupportedModelError, match="block1"):
        tp.block1(torch.randn(2, 4, dtype=torch.float64))  # guarded while the stacks are recorded

    real = rewrite_guards.check_module_stacks

    def stripped(nodes):
        for n in nodes:
            n.meta.pop("nn_module_stack", None)
        return real(nodes)

    monkeypatch.setattr(rewrite_guards, "check_module_stacks", stripped)
    with pytest.raises(UnsupportedModelError, match="nn_module_stack"):
        nt.teleport(Staged().double(), x, cob_range=0.5, sampling="inter")
