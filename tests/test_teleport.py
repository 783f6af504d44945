"""Teleportation engine: exactness against the float64 original, the paper's gradient theorem, micro-teleportation,
composition, state_dict, caching, dtype/device, bad input.

Tolerances: a teleport multiplies weights by ratios up to ``r = (1 + s) / (1 - s)`` (199 at ``s = 0.99``); each
layer's float64 round-off (``eps = 2.2e-16``) is amplified at most by ``r`` relative to the output scale, so over
``L`` layers the relative output error is bounded by about ``L * r * eps`` times a small constant for the
accumulation inside a layer. We allow ``100 * L * r * eps`` (``L = 30``): 1.3e-9 at ``s = 0.99``, 2.5e-11 at
``s = 0.5``, still ~1e4 below float32 round-off, so any real mistake (a wrong factor anywhere) fails it.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnteleport as nt
from nnteleport.engine.analysis import UntraceableModelError
from nnteleport.engine.trace import _Tracer
from nnteleport.lab.models import build_model
from tests.engine_models import ConvBNResidual, hand_written_cases

EPS64 = torch.finfo(torch.float64).eps


def rel_tol(s: float, layers: int = 30) -> float:
    return 100 * layers * (1 + s) / (1 - s) * EPS64


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / a.abs().max().clamp_min(1e-300)).detach())


def zoo_cases() -> list[tuple[str, nn.Module, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for name, shape, kw in [
        ("mlp", (1, 8, 8), {"activation": "tanh"}),
        ("mlp", (40,), {}),
        ("vgg", (3, 16, 16), {}),
        ("resnet18", (3, 16, 16), {}),
        ("densenet", (1, 8, 8), {}),
        ("mobilenetv2", (3, 16, 16), {}),
    ]:
        m = build_model(name, in_shape=shape, num_classes=5, **kw).double()
        out.append((f"{name}{shape}", m, torch.randn(3, *shape, generator=g, dtype=torch.float64)))
    return out


ALL_CASES = hand_written_cases() + zoo_cases()


def _outputs(m: nn.Module, x: torch.Tensor, train: bool, seed: int = 7) -> torch.Tensor:
    m.train(train)
    torch.manual_seed(seed)  # dropout draws the same masks in both models
    with torch.no_grad():
        return m(x)


@pytest.mark.parametrize("name,model,x", ALL_CASES, ids=[c[0] for c in ALL_CASES])
@pytest.mark.parametrize("sampling", ["intra", "inter"])
@pytest.mark.parametrize("s", [0.5, 0.99])
@torch.no_grad()
def test_function_preserved(name, model, x, sampling, s):
    gen = torch.Generator().manual_seed(11)
    v = nt.teleport(model, x, cob_range=s, sampling=sampling, generator=gen)
    moved = max(float((p - q).abs().max()) for p, q in zip(model.parameters(), v.parameters()) if p.numel())
    assert moved > 1e-3 or nt.analyze(model, x).num_free == 0  # the teleport really moved the weights
    for train in (False, True):
        a, b = _outputs(model, x, train), _outputs(v, x, train)
        assert rel_err(a, b) < rel_tol(s), (name, train)
    # parameter names and shapes are the original's
    assert [(n, p.shape) for n, p in model.named_parameters()] == [(n, p.shape) for n, p in v.named_parameters()]


def test_batchnorm_train_mode_statistics_untouched():
    m = ConvBNResidual().double().train()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    v = nt.teleport(m, x, cob_range=0.9, sampling="inter")
    for (n, b1), (_, b2) in zip(m.named_buffers(), v.named_buffers()):
        if "running" in n:
            assert torch.equal(b1, b2), n
    # one training-mode forward updates the statistics identically in both models
    torch.manual_seed(0)
    m(x)
    torch.manual_seed(0)
    v(x)
    for (n, b1), (_, b2) in zip(m.named_buffers(), v.named_buffers()):
        if "running" in n:
            assert torch.allclose(b1, b2, rtol=1e-12, atol=1e-14), n


def test_analysis_has_no_side_effects():
    m = ConvBNResidual().double().train()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    before = copy.deepcopy(m.state_dict())
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    nt.analyze(m, x)
    assert torch.equal(torch.rand(3), expected)  # global RNG untouched
    assert m.training
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name,model,x", ALL_CASES[:6], ids=[c[0] for c in ALL_CASES[:6]])
def test_gradient_theorem(name, model, x):
    """Paper, Theorem (Sec. 5.4 / Appendix): for every parameter, v * dL/dv == w * dL/dw."""
    model = copy.deepcopy(model).eval()
    v = nt.teleport(model, x, cob_range=0.9, sampling="inter", generator=torch.Generator().manual_seed(2)).eval()
    for m in (model, v):
        m.zero_grad()
        m(x).pow(2).sum().backward()
    for (n, w), (_, p) in zip(model.named_parameters(), v.named_parameters()):
        lhs, rhs = p * p.grad, w * w.grad
        scale = float(rhs.detach().abs().max()) + 1e-300
        assert float((lhs - rhs).abs().max().detach()) / scale < rel_tol(0.9), n


def test_gradient_scaling_formula():
    """dV = tau_prev * dW / tau for a linear layer between two free groups (paper, Sec. 5.4)."""
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    cob = nt.sample_cob(m, x, cob_range=0.8, generator=torch.Generator().manual_seed(0))
    v = nt.teleport(m, x, cob)
    for mm in (m, v):
        F.cross_entropy(mm(x), torch.tensor([0, 1, 0, 1, 1, 0, 1])).backward()
    tau_prev, tau = cob["0"], cob["2"]
    expected = tau_prev.view(1, 6) * m[2].weight.grad / tau.view(5, 1)
    torch.testing.assert_close(v[2].weight.grad, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("builder", ["mlp", "vgg", "resnet18"])
def test_micro_teleportation_orthogonal_to_gradient(builder):
    """s = 1e-3, ReLU, intra: the micro-teleportation vector is at 90 degrees to the gradient within 0.05 degrees."""
    torch.manual_seed(0)
    shape = (1, 8, 8)
    m = build_model(builder, in_shape=shape, num_classes=4).double().eval()
    x = torch.randn(16, *shape, dtype=torch.float64)
    y = torch.randint(0, 4, (16,))
    m.zero_grad()
    F.cross_entropy(m(x), y).backward()
    grad = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
    for seed in range(3):
        d = nt.micro_teleport(m, x, cob_range=1e-3, generator=torch.Generator().manual_seed(seed))
        cos = float(d @ grad / (d.norm() * grad.norm()))
        angle = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
        assert abs(angle - 90.0) < 0.05, angle
    # the deviation from 90 degrees is O(s) (level-curve tangent), not an accident of high dimension:
    # with the same draws u, tau = 1 - s + 2 s u, so cos(angle) shrinks ~10x from s = 1e-2 to s = 1e-3
    cos = []
    for s in (1e-2, 1e-3):
        d = nt.micro_teleport(m, x, cob_range=s, generator=torch.Generator().manual_seed(0))
        cos.append(abs(float(d @ grad / (d.norm() * grad.norm()))))
    assert 3 < cos[0] / cos[1] < 30, cos


def test_composition_and_inverse():
    m = ConvBNResidual().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    c1 = nt.sample_cob(m, x, 0.7, "inter", g)
    c2 = nt.sample_cob(m, x, 0.7, "inter", g)
    v12 = nt.teleport(nt.teleport(m, x, c1), x, c2)
    v = nt.teleport(m, x, c1 * c2)
    for (n, p), (_, q) in zip(v.named_parameters(), v12.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15, msg=n)
    assert rel_err(m(x), v12(x)) < rel_tol(0.7)
    back = nt.teleport(nt.teleport(m, x, c1), x, c1.inverse())
    for (n, p), (_, q) in zip(m.named_parameters(), back.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15, msg=n)


def test_state_dict_round_trip_with_wrappers():
    m = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    v = nt.teleport(m, x, cob_range=0.9, sampling="inter", generator=torch.Generator().manual_seed(0))
    assert isinstance(v[1], nt.TeleportedActivation) and isinstance(v[3], nt.TeleportedActivation)
    assert {"1.tau", "3.tau"} <= set(v.state_dict())
    buf = io.BytesIO()
    torch.save(v.state_dict(), buf)
    buf.seek(0)
    w = nt.teleport(m, x, cob_range=0.9, sampling="inter", generator=torch.Generator().manual_seed(1))
    w.load_state_dict(torch.load(buf))
    torch.testing.assert_close(w(x), v(x), rtol=0, atol=0)
    # original parameter names are kept
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in v.named_parameters()]


def test_inplace_and_original_untouched():
    m = ConvBNResidual().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ref = copy.deepcopy(m.state_dict())
    v = nt.teleport(m, x, cob_range=0.5)
    assert v is not m
    assert all(torch.equal(t, ref[k]) for k, t in m.state_dict().items())
    out = m(x)
    same = nt.teleport(m, x, cob_range=0.5, sampling="inter", inplace=True)
    assert same is m
    assert not torch.equal(m.conv1.weight, ref["conv1.weight"])
    assert rel_err(out, m(x)) < rel_tol(0.5)


def test_analysis_is_cached_no_retrace(monkeypatch):
    calls = {"n": 0}
    original = _Tracer.trace

    def counting(self, *a, **k):
        calls["n"] += 1
        return original(self, *a, **k)

    monkeypatch.setattr(_Tracer, "trace", counting)
    m = ConvBNResidual().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    nt.teleport(m, x, cob_range=0.5)
    first = calls["n"]
    assert first >= 1
    for i in range(5):  # other batch sizes, sampled and explicit CoBs, in place with wrappers
        xb = torch.randn(2 + i, 3, 8, 8, dtype=torch.float64)
        nt.teleport(m, xb, cob_range=0.5, sampling="inter", inplace=True)
        nt.teleport(m, xb, nt.sample_cob(m, xb, 0.3))
    assert calls["n"] == first
    nt.teleport(copy.deepcopy(m), x)  # another model object: a new analysis
    assert calls["n"] > first


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_preserved(dtype):
    m = build_model("resnet18", in_shape=(3, 16, 16), num_classes=5).to(dtype).eval()
    x = torch.randn(2, 3, 16, 16).to(dtype)
    v = nt.teleport(m, x, cob_range=0.5, sampling="inter")
    assert all(p.dtype == dtype for p in v.parameters())
    assert all(b.dtype == dtype for n, b in v.named_buffers() if n.endswith("tau"))
    a, b = m(x).double(), v(x).double()
    # float round-off: a few units of the format's eps relative to the output scale, times depth and ratio 3
    tol = 30 * 3 * 2 * torch.finfo(dtype).eps
    assert rel_err(a, b) < tol


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_preserved():
    m = build_model("resnet18", in_shape=(3, 16, 16), num_classes=5).double().cuda().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, device="cuda")
    v = nt.teleport(m, x, cob_range=0.9, sampling="inter")
    assert all(p.is_cuda for p in v.parameters()) and all(b.is_cuda for b in v.buffers())
    assert rel_err(m(x), v(x)) < rel_tol(0.9)


def test_no_teleportable_neuron_is_not_an_error():
    m = nn.Linear(3, 2).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    plan = nt.analyze(m, x)
    assert plan.num_free == 0 and plan.report.coverage == 0.0
    torch.testing.assert_close(nt.teleport(m, x, cob_range=0.5)(x), m(x), rtol=0, atol=0)


def test_report_names_pins_and_coverage():
    from tests.engine_models import BNTrainMLP

    m = BNTrainMLP().double()
    x = torch.randn(4, 5, dtype=torch.float64)
    rep = nt.analyze(m, x).report
    text = str(rep)
    assert "torch.cumsum" in text and "unsupported" in text
    assert "[normalization] inputs of 'bn'" in text
    # l1 (pinned: BN input), bn and l2 (merged into one set of 9 by the shared Softplus), l3 (pinned: cumsum);
    # l4 is the output. Merged neurons count once.
    assert rep.hidden_neurons == 9 + 9 + 6
    assert rep.free_neurons == 9
    assert 0 < rep.parameter_coverage < 1
    d = rep.to_dict()
    assert d["coverage"] == pytest.approx(9 / 24)
    mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    rep = nt.analyze(mlp, torch.randn(2, 3)).report
    assert rep.coverage == 1.0 and rep.parameters_moving == rep.parameters_total - 2  # the output bias stays


def test_functional_positive_activation_restricts_sign():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    m = M().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    plan = nt.analyze(m, x, functional="constrain")
    assert plan.groups["a"].positive_only
    cob = nt.sample_cob(m, x, 0.9, "inter", torch.Generator().manual_seed(0), functional="constrain")
    assert bool((cob["a"] > 0).all())
    with pytest.raises(ValueError, match="positive factor"):
        nt.teleport(m, x, {"a": -torch.ones(5, dtype=torch.float64)}, functional="constrain")
    # the default (functional="rewrite") wraps the call where a factor is negative, so every sign is allowed
    assert not nt.analyze(m, x).groups["a"].positive_only
    v = nt.teleport(m, x, {"a": -torch.ones(5, dtype=torch.float64)})
    assert isinstance(v, M) and type(v) is not M and "teleport_functional.relu.tau" in v.state_dict()
    x2 = torch.randn(6, 3, dtype=torch.float64)
    assert rel_err(m(x2), v(x2)) < rel_tol(0.0)
    w = nt.teleport(m, x, {"a": torch.full((5,), 2.0, dtype=torch.float64)})
    assert type(w) is M  # tau > 0 at a ReLU call needs no wrapper: the plain class


# ----------------------------------------------------------------------------------------------- bad input
def _mlp():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(2, 3)


@pytest.mark.parametrize("s", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_bad_cob_range(s):
    m, x = _mlp()
    with pytest.raises(ValueError, match="cob_range"):
        nt.teleport(m, x, cob_range=s)
    with pytest.raises(ValueError, match="cob_range"):
        nt.sample_cob(m, x, cob_range=s)


def test_bad_sampling():
    m, x = _mlp()
    with pytest.raises(ValueError, match=r"'intra', 'inter'"):
        nt.teleport(m, x, sampling="both")


@pytest.mark.parametrize(
    "cob,match",
    [
        ({"0": torch.tensor([1.0, 0.0, 1.0, 1.0])}, "zero factor"),
        ({"0": torch.tensor([1.0, float("nan"), 1.0, 1.0])}, "NaN or inf"),
        ({"0": torch.tensor([1.0, float("inf"), 1.0, 1.0])}, "NaN or inf"),
        ({"0": torch.ones(3)}, "4 factors"),
        ({"0": torch.ones(2, 2)}, "4 factors"),
        ({"fc9": torch.ones(4)}, "unknown group"),
    ],
)
def test_bad_cob(cob, match):
    m, x = _mlp()
    with pytest.raises(ValueError, match=match):
        nt.teleport(m, x, cob)


def test_bad_model_and_input():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        nt.teleport(lambda x: x, torch.randn(2, 3))
    m, _ = _mlp()
    with pytest.raises(TypeError, match="example input"):
        nt.teleport(m, [1, 2, 3])
    with pytest.raises(ValueError, match="forward"):
        nt.teleport(m, torch.randn(2, 7))  # wrong feature size


class _DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: not traceable
            return x
        return -x


class _Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.block = _DataDependent()
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.fc(x))))


def test_untraceable_model_names_the_call_and_the_way_out():
    m = _Outer().double()
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(UntraceableModelError, match=r"'block'.*leaf_modules=\['block'\]") as info:
        nt.teleport(m, x)
    assert "x.sum() > 0" in str(info.value)
    assert isinstance(info.value, TypeError)
    # the suggested way out works, and is exact: the black box's spaces stay at 1
    v = nt.teleport(m, x, cob_range=0.9, leaf_modules=["block"])
    assert rel_err(m(x), v(x)) < rel_tol(0.9)
    assert nt.analyze(m, x, leaf_modules=[_DataDependent]).num_free == 0


def test_public_name_not_shadowed_by_a_submodule():
    """Importing the implementation module must not turn ``nnteleport.teleport`` into a module."""
    import importlib

    importlib.import_module("nnteleport.engine.apply")
    assert callable(nt.teleport) and nt.teleport.__module__ == "nnteleport.engine.apply"


# ----------------------------------------------------------------------------------------------- functional="graph"
@pytest.mark.parametrize("model_cls", ["MLPFunctional", "ConvBNResidual", "SqueezeExcite"])
def test_functional_graph_mode_teleports_functional_activations(model_cls):
    import tests.engine_models as em

    m = getattr(em, model_cls)().double()
    x = {
        "MLPFunctional": torch.randn(5, 6),
        "ConvBNResidual": torch.randn(4, 3, 8, 8),
        "SqueezeExcite": torch.randn(3, 3, 6, 6),
    }[model_cls].double()
    constrained = nt.analyze(m, x, functional="constrain").report
    graph = nt.analyze(m, x, functional="graph")
    assert graph.functional_sites  # functional calls became wrapper sites
    assert graph.report.coverage >= constrained.coverage
    assert int(graph.positive_mask.sum()) <= int(nt.analyze(m, x, functional="constrain").positive_mask.sum())
    v = nt.teleport(
        m, x, cob_range=0.9, sampling="inter", functional="graph", generator=torch.Generator().manual_seed(0)
    )
    assert isinstance(v, torch.fx.GraphModule)
    assert {n for n, _ in m.named_parameters()} == {n for n, _ in v.named_parameters()}
    assert any(k.startswith("teleport_functional.") and k.endswith(".tau") for k in v.state_dict())
    for train in (False, True):
        assert rel_err(_outputs(m, x, train), _outputs(v, x, train)) < rel_tol(0.9)
    # teleporting the GraphModule again composes (its wrappers are modules now)
    w = nt.teleport(v, x, cob_range=0.9, sampling="inter")
    # two teleports in a row: the round-off of both adds up, hence twice the one-teleport bound
    assert rel_err(_outputs(m, x, False), _outputs(w, x, False)) < rel_tol(0.9) * 2


def test_functional_graph_mode_frees_tanh_neurons():
    from tests.engine_models import MLPFunctional

    m = MLPFunctional().double()
    x = torch.randn(5, 6, dtype=torch.float64)
    assert "l3" not in nt.analyze(m, x, functional="constrain").groups  # torch.tanh pins l3 in constrain mode
    for mode in ("graph", "rewrite"):
        plan = nt.analyze(m, x, functional=mode)
        assert plan.groups["l3"].size == 8 and not plan.groups["l3"].homogeneous
    assert nt.analyze(m, x).groups.keys() == plan.groups.keys()  # "rewrite" is the default


def test_functional_graph_mode_refusals():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            if self.training:
                h = h * 0.5
            return self.b(h)

    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="train and eval mode"):
        nt.teleport(Branchy(), x, functional="graph")
    nt.teleport(Branchy(), x, functional="constrain")  # keeps the model's own forward: fine
    nt.teleport(Branchy(), x)  # the default rewrites the graph of each mode: fine (tests/test_functional_rewrite.py)
    from tests.engine_models import MLPFunctional

    with pytest.raises(ValueError, match="inplace=False"):
        nt.teleport(MLPFunctional(), torch.randn(2, 6), functional="graph", inplace=True)
    with pytest.raises(ValueError, match="'rewrite', 'constrain', 'graph'"):
        nt.analyze(MLPFunctional(), torch.randn(2, 6), functional="rewritten")


def test_cached_layout_follows_replaced_parameters():
    """The hot path caches views of the parameters; assigning a new Parameter must not teleport a stale tensor."""
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    nt.teleport(m, x, cob_range=0.5, inplace=True)  # builds and caches the layout
    m[0].weight = nn.Parameter(torch.randn(6, 4, dtype=torch.float64))  # same shape: same plan, new tensor
    m[2].weight = nn.Parameter(torch.randn(3, 6, dtype=torch.float64))
    before = m(x)
    cob = nt.sample_cob(m, x, 0.5, generator=torch.Generator().manual_seed(1))
    w0 = m[0].weight.detach().clone()
    nt.teleport(m, x, cob, inplace=True)
    torch.testing.assert_close(m[0].weight.detach(), cob["0"].view(6, 1) * w0)
    assert rel_err(before, m(x)) < rel_tol(0.5)


class _EvalCache(nn.Module):
    """timm LeViT's pattern: in eval mode a tensor computed from the module's state is cached in a dict
    attribute (``self.cache[key] = ...``) and reused by later calls."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, 6))  # a parameter: traced as a proxy
        self.cache: dict[str, torch.Tensor] = {}

    def scales(self) -> torch.Tensor:
        if self.training:
            return self.scale * 2
        if "s" not in self.cache:
            self.cache["s"] = self.scale * 2
        return self.cache["s"]

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) * self.scales())


def test_a_cache_filled_while_tracing_does_not_leak_into_the_next_trace():
    """Each mode is traced from the same Python state: a proxy one trace stored in ``self.cache`` was reused by
    the next trace's graph (``KeyError`` / "referenced nonexistent value" on timm levit_128s)."""
    torch.manual_seed(0)
    m = _EvalCache().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    plan = nt.analyze(m, x)
    assert m.cache == {}  # restored
    assert plan.report.hidden_neurons == 6  # (multiplied by a parameter, the neurons are pinned)
    tp = nt.teleport(m, x, cob_range=0.5)
    y = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(tp(y), m(y), rtol=1e-12, atol=1e-12)
