"""The report names what the engine did: wrapper sites (module and functional, with their kind explained),
black boxes, parameters used outside their module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import nnteleport as nt


class _OneSite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.act, self.b = nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


def test_one_wrapper_site_is_singular_and_its_kind_explained():
    text = str(nt.analyze(_OneSite(), torch.randn(2, 3)).report)
    assert "1 site\n" in text + "\n" and "1 sites" not in text
    assert "act (module; wrapped where tau != 1)" in text


class _Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(F.gelu(self.a(x)))


def test_graph_mode_lists_functional_call_sites():
    report = nt.analyze(_Functional(), torch.randn(2, 3), functional="graph").report
    sites = [s for s in report.wrapper_sites if s["functional"]]
    assert [s["module"] for s in sites] == ["gelu"]
    assert "gelu (functional call; wrapped where tau != 1)" in str(report)


class _Hooked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.mid, self.b = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.mid.register_forward_hook(lambda m, i, o: o * 2)

    def forward(self, x):
        return self.b(torch.relu(self.mid(torch.relu(self.a(x)))))


def test_hooked_module_is_a_named_black_box():
    report = nt.analyze(_Hooked(), torch.randn(2, 3)).report
    hook = [p for p in report.pinned if p["category"] == "hook"]
    assert hook and "'mid'" in hook[0]["why"] and "forward hooks" in hook[0]["why"]
    # the black box's input (a's neurons) and its own neurons are pinned: nothing is free
    assert report.free_neurons == 0


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.h = nn.Embedding(5, 4), nn.Linear(4, 4)

    def forward(self, idx):
        return F.linear(torch.relu(self.h(self.emb(idx))), self.emb.weight)


def test_parameter_read_outside_its_module_is_named():
    report = nt.analyze(_Tied(), torch.randint(0, 5, (2, 3))).report
    why = " ".join(p["why"] for p in report.pinned)
    assert "'emb.weight'" in why and "read directly in forward()" in why
    assert report.free_neurons == 0  # h feeds F.linear (pinned); emb's factors are pinned by the direct read


def test_factor_outside_the_model_dtype_is_refused_before_any_change():
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(2, 3)
    group = next(iter(nt.analyze(m, x).groups))
    before = [p.detach().clone() for p in m.parameters()]
    cob = {group: torch.tensor([1e-300, 1.0, 1.0, 1.0], dtype=torch.float64)}
    try:
        nt.teleport(m, x, cob, inplace=True)
    except nt.NNTeleportError as exc:
        assert "1e-300" in str(exc) and repr(group) in str(exc) and "float32" in str(exc)
    else:
        raise AssertionError("a factor of 1e-300 on a float32 model was accepted")
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    m64 = m.double()  # float64 holds it: accepted and exact
    v = nt.teleport(m64, x.double(), cob)
    assert torch.isfinite(torch.cat([p.reshape(-1) for p in v.parameters()])).all()


def test_micro_teleport_in_bfloat16_is_not_rounded_away():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(4, 3)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    ref = nt.micro_teleport(m.double(), x.double(), cob_range=1e-3, generator=gen())
    d = nt.micro_teleport(m.to(torch.bfloat16), x.bfloat16(), cob_range=1e-3, generator=gen())
    assert d.dtype == torch.float64 and float(d.abs().max()) > 0
    # same direction as the float64 vector (the weights differ only by bfloat16 rounding)
    cos = float(d @ ref / (d.norm() * ref.norm()))
    assert cos > 0.99, cos


class _CrashingLinear(nn.Linear):
    """A Linear whose rule registers its parameters and then fails (a rule bug met by the safety net)."""


def test_a_rule_that_fails_after_registering_its_parameters_leaves_them_pinned(monkeypatch):
    from nnteleport.engine import rules

    def crashing_rule(ctx):
        rules.linear_rule(ctx)  # registers weight and bias with fresh output factors
        raise RuntimeError("rule bug after registration")

    monkeypatch.setitem(rules.MODULE_RULES, _CrashingLinear, crashing_rule)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), _CrashingLinear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    plan = nt.analyze(model, x)
    assert any("could not be followed" in p["why"] for p in plan.report.pinned)
    teleported = nt.teleport(model, x, cob_range=0.9, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(teleported(x), model(x), rtol=1e-12, atol=1e-12)
    assert torch.equal(teleported[2].weight, model[2].weight)


class _ClampsItsWeightThroughData(nn.Module):
    """A forward that renormalises its own weight through ``.data`` (no version bump on the parameter)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        self.fc.weight.data.clamp_(-0.1, 0.1)
        return self.fc(x)


class _RenormsItsParameters(nn.Module):
    """A forward that rescales every parameter in place under ``no_grad`` (reached via ``parameters()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        with torch.no_grad():
            for p in self.fc.parameters():
                p.mul_(0.5)
        return self.fc(x)


def test_analyze_restores_parameters_written_by_the_forward():
    for cls in (_ClampsItsWeightThroughData, _RenormsItsParameters):
        torch.manual_seed(0)
        model = cls().double()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        nt.analyze(model, torch.randn(5, 4, dtype=torch.float64))
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), f"{cls.__name__}: {k} changed by analyze"


class _StatsAsParameters(nn.Module):
    """Batch norm whose running statistics are (frozen) parameters: updated in place inside the native op."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.mean = nn.Parameter(torch.zeros(3), requires_grad=False)
        self.var = nn.Parameter(torch.ones(3), requires_grad=False)

    def forward(self, x):
        return F.batch_norm(self.fc(x), self.mean, self.var, training=True)


class _WritesInsideAFunction(nn.Module):
    """An autograd.Function whose forward writes into the parameter it receives."""

    class _AddOne(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, w):
            w.add_(1.0)
            return h * 2

        @staticmethod
        def backward(ctx, g):
            return 2 * g, None

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.w = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return self._AddOne.apply(self.fc(x), self.w)


def test_analyze_restores_a_parameter_written_by_a_native_op_or_refuses_loudly():
    for cls in (_StatsAsParameters, _WritesInsideAFunction):
        torch.manual_seed(0)
        model = cls().double()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            nt.analyze(model, torch.randn(5, 4, dtype=torch.float64))
        except nt.UnsupportedModelError as e:
            assert "changed parameter" in str(e)
            continue
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), f"{cls.__name__}: {k} changed by analyze"


class _NormWeightReadTwice(nn.Module):
    """``F.batch_norm`` with the module's own parameters (accounted for), and the same weight read again."""

    def __init__(self, again: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.Tanh()
        self.head = nn.Linear(4, 2)
        self.again = again

    def forward(self, x):
        h = F.batch_norm(self.conv(x), self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias)
        y = self.head(self.act(h).mean((2, 3)))
        return y * self.bn.weight.sum() if self.again else y


def test_functional_norm_frees_its_output_unless_its_parameters_are_read_elsewhere():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    for again in (False, True):
        model = _NormWeightReadTwice(again).double().eval()
        plan = nt.analyze(model, x)
        assert ("bn" in plan.groups) is not again, plan.report
        t = nt.teleport(model, x, cob_range=0.9, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(t(x), model(x), rtol=1e-12, atol=1e-12)
        assert torch.equal(t.bn.weight, model.bn.weight) is again


class _Logits(NamedTuple):
    logits: torch.Tensor
    hidden: torch.Tensor


@dataclass
class _Output:
    logits: torch.Tensor
    aux: torch.Tensor | None = None


class _RecordOutputs(nn.Module):
    """Outputs wrapped in a NamedTuple or a dataclass (read back by field inside the forward, too)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.a, self.act, self.o = nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)
        self.kind = kind

    def forward(self, x):
        h = self.act(self.a(x))
        if self.kind == "namedtuple":
            out = _Logits(self.o(h), h)
            return _Logits(out.logits * 2, out.logits)  # the field `hidden` is not returned: h stays free
        return _Output(logits=self.o(h))


def test_namedtuple_and_dataclass_outputs_keep_the_neurons_that_feed_them_free():
    torch.manual_seed(0)
    x = torch.randn(5, 4, dtype=torch.float64)
    for kind in ("namedtuple", "dataclass"):
        model = _RecordOutputs(kind).double()
        plan = nt.analyze(model, x)
        assert plan.num_free == 6, plan.report
        t = nt.teleport(model, x, cob_range=0.9, sampling="inter", generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(t(x).logits, model(x).logits, rtol=1e-12, atol=1e-12)
