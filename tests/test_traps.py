"""The trap suite of issue 12: hand-written model code on which an engine can be silently wrong, crash, or leave
side effects (models and what each one traps: :mod:`tests.trap_models`).

The contract, for every model: either ``teleport`` works and is exact, or ``analyze`` refuses with an
:class:`nnteleport.NNTeleportError` -- never a wrong function, never a crash, never a changed model. Each case states
what it expects:

- ``"exact"``: teleport must be exact (pinning what the engine does not understand, at ``tau = 1``, is allowed);
- ``"either"``: exact, or an ``NNTeleportError`` raised by ``analyze`` whose message names the culprit (the issue
  allows refusing hooks and parametrized/pruned layers);
- ``"refused"``: wrapper objects (``DataParallel``, ``torch.compile``, TorchScript): ``NNTeleportError`` whose message
  names the wrapper and what to pass instead.

Exact means, in float64, with ``cob_range`` 0.5 and 0.9, both samplings and three generator seeds: outputs (under
``no_grad`` and with grad enabled) and input gradients equal to relative ``1e-9`` (max abs difference / max abs
reference), in train and eval mode, on the analysis batch and on a batch of another size. ``1e-9`` is the bound of
``tests/test_teleport.py`` at ``s = 0.99`` (``100 * L * r * eps`` with ``L = 30``); at ``s <= 0.9`` these tiny models
stay near ``1e-14``, so any real mistake fails it by orders of magnitude. Forward side effects (BN-like buffers,
spectral-norm power iterations, ``max_norm`` renormalisation) are undone between forwards by restoring a state_dict
snapshot, and the RNG is seeded identically before each forward (dropout). For integer inputs (embeddings) there is
no input gradient; the gradient theorem ``w * dL/dw == v * dL/dv`` (paper, Sec. 5.4) checks the backward pass instead.
"""

from __future__ import annotations

import copy
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

import nnteleport as nt
from tests import trap_models as tm

TOL = 1e-9
SEEDS = (0, 1, 2)
DRAWS = ((0.5, 0), (0.9, 1), (0.9, 2))  # (cob_range, generator seed) per sampling


# ----------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]  # deterministic (seeded), float64
    inputs: Callable[[], tuple[Tensor, Tensor]]  # (analysis batch, another batch)
    expect: str = "exact"  # "exact" | "either" | "refused"
    functional: str = "rewrite"  # the library's default; "constrain" and "graph" variants where they differ
    free: bool = True  # a correct engine obviously has free neurons (the stem)
    culprit: tuple[str, ...] = ()  # "either": words the refusal must contain; "refused": the WRAPPERS key


def built(cls: type, *args) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        # the CPU generator only: torch.manual_seed also queues CUDA seeding, with a traceback each (slow)
        torch.default_generator.manual_seed(0)
        return cls(*args).double()

    return build


def vec(*shape: int, batches: tuple[int, int] = (3, 5)) -> Callable[[], tuple[Tensor, Tensor]]:
    def inputs() -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(1)
        return tuple(torch.randn(b, *shape, generator=g, dtype=torch.float64) for b in batches)

    return inputs


def fixed(shape1: tuple[int, ...], shape2: tuple[int, ...]) -> Callable[[], tuple[Tensor, Tensor]]:
    def inputs() -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(1)
        return tuple(torch.randn(s, generator=g, dtype=torch.float64) for s in (shape1, shape2))

    return inputs


def tokens(vocab: int = 7, length: int = 4) -> Callable[[], tuple[Tensor, Tensor]]:
    def inputs() -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(1)
        return tuple(torch.randint(0, vocab, (b, length), generator=g) for b in (3, 5))

    return inputs


V4 = vec(tm.D_IN)


def _cases() -> list[Case]:
    c: list[Case] = [Case("c0-PlainMLP", built(tm.PlainMLP), V4)]
    # 1. parameter read outside its own module call
    for cls in (
        tm.TiedLinearTranspose,
        tm.TiedMatmul,
        tm.TiedEinsum,
        tm.NormalisedByWeightNorm,
        tm.HandWrittenWeightNorm,
        tm.ForwardMethodCall,
        tm.SharedWeightTwoLinears,
        tm.SameModuleTwice,
        tm.LearnedOffset,
        tm.LayerScale,
        tm.ParameterListMLP,
        tm.WeightPenaltyInOutput,
    ):
        c.append(Case(f"c1-{cls.__name__}", built(cls), V4))
    c.append(Case("c1-TiedLinearTranspose-graph", built(tm.TiedLinearTranspose), V4, functional="graph"))
    c.append(Case("c1-TiedLinearTranspose-constrain", built(tm.TiedLinearTranspose), V4, functional="constrain"))
    c.append(Case("c1-TiedEmbeddingLM", built(tm.TiedEmbeddingLM), tokens()))
    c.append(Case("c1-SharedWithBlackBox", built(tm.SharedWithBlackBox), vec(3, tm.D_IN)))
    # 2. in-place semantics
    for act in ("SiLU", "Hardswish", "ELU"):
        c.append(Case(f"c2-InplaceActPlain-{act}", built(tm.InplaceActPlain, act), V4))
    for act in tm._ACTS:
        c.append(Case(f"c2-InplaceActReread-{act}", built(tm.InplaceActReread, act), V4))
    for kind in tm.InplaceStatement.KINDS:
        for functional in ("constrain", "graph", "rewrite"):
            c.append(
                Case(
                    f"c2-InplaceStatement-{kind}-{functional}",
                    built(tm.InplaceStatement, kind),
                    V4,
                    functional=functional,
                )
            )
    c.append(Case("c2-AugmentedAssignment", built(tm.AugmentedAssignment), V4))
    c.append(Case("c2-AliasInplaceMethod-graph", built(tm.AliasInplaceMethod), V4, functional="graph"))
    c.append(Case("c2-AliasInplaceMethod-rewrite", built(tm.AliasInplaceMethod), V4))
    c.append(Case("c2-AliasInplaceMethod-constrain", built(tm.AliasInplaceMethod), V4, functional="constrain"))
    c.append(Case("c2-RunningNormInForward", built(tm.RunningNormInForward), V4))
    # 3. module hooks (the issue allows refusing a hooked module, by name)
    for kind in tm.HookedMLP.KINDS:
        culprit = {"act_fwd": "act1", "block_store": "block", "block_fwd_add": "block"}.get(kind, "fc2")
        c.append(
            Case(f"c3-HookedMLP-{kind}", built(tm.HookedMLP, kind), V4, expect="either", culprit=(culprit, "hook"))
        )
    c.append(Case("c3-TensorGradHook", built(tm.TensorGradHook), V4, expect="either", culprit=("hook",)))
    # 4. a cached plan outliving what it describes (and the mutation tests below)
    c.append(Case("c4-GradEnabledBranch", built(tm.GradEnabledBranch), V4))
    c.append(Case("c4-BatchMix", built(tm.BatchMix), vec(tm.D_IN, batches=(2, 5))))
    # 5. one activation object under two parents
    for act in ("Tanh", "ELU", "LeakyReLU"):
        c.append(Case(f"c5-SharedActTwoParents-{act}", built(tm.SharedActTwoParents, act), V4))
    c.append(Case("c5-SharedActInSequential", built(tm.SharedActInSequential), V4))
    # 6. subclasses changing behaviour
    c.append(Case("c6-WSConvNet", built(tm.WSConvNet), vec(2, 6, 6)))
    for cls in (tm.PropertyWeightNet, tm.MonkeyPatchedForward, tm.SubclassForwardNet, tm.ResidualSequentialNet):
        c.append(Case(f"c6-{cls.__name__}", built(cls), V4))
    # 7. rules that misread their op
    for kind in tm.OpTrap.KINDS:
        c.append(Case(f"c7-OpTrap-{kind}", built(tm.OpTrap, kind), V4))
    for kind in tm.ModuleOpTrap.KINDS:
        c.append(Case(f"c7-ModuleOpTrap-{kind}", built(tm.ModuleOpTrap, kind), V4))
    c.append(Case("c7-MaxPool2dOnNCL", built(tm.MaxPool2dOnNCL), vec(2, 8)))
    c.append(Case("c7-UnbatchedConv1d", built(tm.UnbatchedConv1d), fixed((2, 7), (2, 9)), free=False))
    c.append(
        Case("c7-UnbatchedConv2dFlatten", built(tm.UnbatchedConv2dFlatten), fixed((2, 5, 5), (2, 5, 5)), free=False)
    )
    c.append(Case("c7-PixelShuffleNet", built(tm.PixelShuffleNet), vec(2, 3, 3)))
    c.append(Case("c7-GroupedConvTranspose", built(tm.GroupedConvTranspose), vec(2, 5)))
    # 8. custom autograd functions
    for kind in tm.CustomFunctionNet.FUNCS:
        for functional in ("constrain", "graph", "rewrite"):
            c.append(
                Case(
                    f"c8-CustomFunction-{kind}-{functional}",
                    built(tm.CustomFunctionNet, kind),
                    V4,
                    functional=functional,
                )
            )
    # 9. crashes and side effects
    for kind in tm.ParametrizedHidden.KINDS:
        c.append(
            Case(
                f"c9-ParametrizedHidden-{kind}",
                built(tm.ParametrizedHidden, kind),
                V4,
                expect="either",
                culprit=("fc",),
            )
        )
    for cls in (tm.KeywordModuleCall, tm.OptionalMask, tm.KwargsForward, tm.DictOutput, tm.Checkpointed):
        c.append(Case(f"c9-{cls.__name__}", built(cls), V4))
    c.append(Case("c9-InputMutatedInPlace", built(tm.InputMutatedInPlace), V4))
    c.append(Case("c9-MaxNormEmbeddingLM", built(tm.MaxNormEmbeddingLM), tokens()))
    c.append(Case("c9-GraphModule", lambda: fx.symbolic_trace(built(tm.PlainMLP)()), V4))
    return c


def _wrapped(wrap: Callable[[nn.Module, Tensor], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        m = built(tm.PlainMLP)()
        return wrap(m, V4()[0])

    return build


def _compile(m: nn.Module, x: Tensor) -> nn.Module:
    try:
        return torch.compile(m, backend="eager")  # the wrapper object only: nothing is compiled before a call
    except Exception as exc:  # pragma: no cover - depends on the installation
        pytest.skip(f"torch.compile unavailable here: {exc}")


def _quiet(fn: Callable, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, and still in use
        return fn(*args)


# wrapper -> (builder, words of which one must name it, words of which one must say what to pass instead)
WRAPPERS = {
    "DataParallel": (lambda m, x: nn.DataParallel(m), ("DataParallel",), (".module",)),
    "torch.compile": (_compile, ("OptimizedModule", "compile"), ("_orig_mod", "original", "uncompiled")),
    "jit.script": (
        lambda m, x: _quiet(torch.jit.script, m),
        ("ScriptModule", "TorchScript", "jit"),
        ("original", "unscripted", "nn.Module", "before"),
    ),
    "jit.trace": (
        lambda m, x: _quiet(torch.jit.trace, m, x),
        ("ScriptModule", "TorchScript", "jit", "TracedModule"),
        ("original", "unscripted", "nn.Module", "before"),
    ),
}

CASES = _cases()
REFUSED = [Case(f"c9-wrapper-{k}", _wrapped(v[0]), V4, expect="refused", culprit=(k,)) for k, v in WRAPPERS.items()]
TELEPORTABLE = [c for c in CASES if c.expect in ("exact", "either")]
ALL = CASES + REFUSED


def ids(cases: list[Case]) -> list[str]:
    return [c.name for c in cases]


# ----------------------------------------------------------------------------------------------- helpers
def rel_err(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(((a - b).abs().max() / a.abs().max().clamp_min(1e-300)).detach())


def leaves(out) -> list[Tensor]:
    """The tensors of a model output (a tensor, or nested tuples/lists/dicts of them), in a fixed order."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in leaves(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in leaves(v)]
    return []


def snapshot(m: nn.Module) -> dict[str, Tensor]:
    return {k: t.detach().clone() for k, t in m.state_dict().items()}


class Restore:
    """Undo what a forward writes into the model's parameters and buffers (running statistics, spectral-norm power
    iterations, ``max_norm`` renormalisation): a copy of every state tensor, written back in place on call."""

    def __init__(self, m: nn.Module) -> None:
        self.pairs = [(t, t.detach().clone()) for t in m.state_dict(keep_vars=True).values()]

    @torch.no_grad()
    def __call__(self) -> None:
        for t, saved in self.pairs:
            t.copy_(saved)


def run(m: nn.Module, restore: Restore, x: Tensor, train: bool) -> dict[str, list[Tensor]]:
    """Outputs under no_grad and with grad, and the gradients of ``sum(out * r)`` with respect to the input (float
    input) or every parameter by name (integer input). Forward side effects are undone before each forward."""
    res: dict[str, list[Tensor]] = {}
    m.train(train)
    restore()
    torch.default_generator.manual_seed(7)
    with torch.no_grad():
        res["out_nograd"] = [t.detach().clone() for t in leaves(m(x.clone()))]
    restore()
    torch.default_generator.manual_seed(7)
    floating = x.is_floating_point()
    xi = x.clone().requires_grad_(floating)
    outs = leaves(m(xi.clone()))
    res["out"] = [t.detach().clone() for t in outs]
    loss = sum(
        (t * torch.randn(t.shape, generator=torch.Generator().manual_seed(3), dtype=t.dtype)).sum() for t in outs
    )
    if floating:
        (g,) = torch.autograd.grad(loss, xi, allow_unused=True)
        res["input_grad"] = [torch.zeros_like(x) if g is None else g]
    else:
        named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        # gradient theorem: w * dL/dw is invariant under teleportation
        res["w_times_grad"] = [
            (p * (torch.zeros_like(p) if g is None else g)).detach() for (_, p), g in zip(named, grads)
        ]
        res["names"] = [n for n, _ in named]  # type: ignore[list-item]
    return res


Results = list[tuple[bool, Tensor, dict[str, list[Tensor]]]]


def reference(ref: nn.Module, inputs: tuple[Tensor, ...]) -> Results:
    """What the original model computes (train and eval mode, every input), to compare teleported models with."""
    restore = Restore(ref)
    results = [(train, x, run(ref, restore, x, train)) for train in (False, True) for x in inputs]
    restore()
    return results


def assert_same_function(ref: nn.Module | Results, v: nn.Module, inputs: tuple[Tensor, ...], where: str) -> None:
    expected = reference(ref, inputs) if isinstance(ref, nn.Module) else ref
    restore = Restore(v)
    for train, x, a in expected:
        b = run(v, restore, x, train)
        at = f"{where}, train={train}, input {tuple(x.shape)}"
        if "names" in a:
            assert a["names"] == b.pop("names"), at
        for key in a:
            if key != "names":
                assert len(a[key]) == len(b[key]), (key, at)
                for i, (p, q) in enumerate(zip(a[key], b[key])):
                    err = rel_err(p, q)
                    assert err < TOL, f"{key}[{i}] differs: rel err {err:.3g} ({at})"


def moved(ref: nn.Module, v: nn.Module) -> float:
    new = dict(v.named_parameters())
    return max(
        (float((p - new[n]).detach().abs().max()) for n, p in ref.named_parameters() if n in new and p.numel()),
        default=0.0,
    )


def proxies_left(model: nn.Module) -> list[str]:
    """Paths of every ``torch.fx.Proxy`` reachable from the modules' ``__dict__`` (through dicts, lists, tuples)."""
    found: list[str] = []
    seen: set[int] = set()

    def walk(value, path: str) -> None:
        if isinstance(value, fx.Proxy):
            found.append(path)
            return
        if isinstance(value, (Tensor, nn.Module)) or id(value) in seen:
            return
        if isinstance(value, dict):
            seen.add(id(value))
            for k, item in list(value.items()):
                walk(item, f"{path}[{k!r}]")
        elif isinstance(value, (list, tuple, set, frozenset)):
            seen.add(id(value))
            for i, item in enumerate(list(value)):
                walk(item, f"{path}[{i}]")

    for name, m in model.named_modules(remove_duplicate=False):
        for k, value in list(vars(m).items()):
            walk(value, f"{name or '<root>'}.{k}")
    return found


def assert_clear_refusal(exc: BaseException, case: Case) -> None:
    msg = str(exc)
    missing = [w for w in case.culprit if w not in msg]
    assert not missing, f"the refusal does not name {missing}: {msg}"
    assert "Pass an input batch" not in msg, f"a refusal must not blame the input that forward() accepts: {msg}"


# ----------------------------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("sampling", ["intra", "inter"])
@pytest.mark.parametrize("case", TELEPORTABLE, ids=ids(TELEPORTABLE))
def test_teleport_is_exact(case: Case, sampling: str):
    """Exact in float64 (outputs and input gradients, train and eval, two batch sizes), or -- where the case allows
    it -- refused at analyze with a message naming the culprit."""
    model = case.build()
    x, x2 = case.inputs()
    try:
        plan = nt.analyze(model, x, functional=case.functional)
    except nt.NNTeleportError as exc:
        if case.expect != "either":
            raise
        assert_clear_refusal(exc, case)
        return
    if case.free:
        assert plan.num_free > 0, f"everything pinned:\n{plan.report}"
    ref = case.build()  # pristine: the function the user wrote (the analysis must not have changed it either)
    expected = reference(ref, (x, x2))
    for s, seed in DRAWS:
        gen = torch.Generator().manual_seed(seed)
        v = nt.teleport(model, x, cob_range=s, sampling=sampling, generator=gen, functional=case.functional)
        if plan.num_free:
            assert moved(ref, v) > 1e-3, "free neurons, but no parameter moved"
        assert_same_function(expected, v, (x, x2), f"s={s}, seed={seed}")


@pytest.mark.parametrize("case", ALL, ids=ids(ALL))
def test_analysis_leaves_model_and_input_unchanged(case: Case):
    """analyze (and teleport, which works on a copy) leaves the model bitwise unchanged: state_dict, parameter
    objects, module classes and modes, hooks; no tracing object behind; the example input unchanged too."""
    model = case.build()
    x, _ = case.inputs()
    x_before = x.clone()
    state = snapshot(model)
    params = [(n, id(p)) for n, p in model.named_parameters(remove_duplicate=False)]
    modules = [(n, type(m), m.training) for n, m in model.named_modules(remove_duplicate=False)]

    def hooks(m: nn.Module) -> tuple:
        return tuple(
            tuple(getattr(m, a, {}) or {})
            for a in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
        )

    hook_keys = [hooks(m) for m in model.modules()]
    # crashes and refusals are the business of the other tests: here only what they leave behind counts
    try:
        nt.analyze(model, x, functional=case.functional)
        nt.teleport(model, x, cob_range=0.9, functional=case.functional)
    except Exception:
        pass
    after = model.state_dict()
    assert list(after) == list(state)
    for k, t in state.items():
        assert torch.equal(after[k], t), f"{k} changed"
    assert [(n, id(p)) for n, p in model.named_parameters(remove_duplicate=False)] == params
    assert [(n, type(m), m.training) for n, m in model.named_modules(remove_duplicate=False)] == modules
    assert [hooks(m) for m in model.modules()] == hook_keys
    assert not proxies_left(model), proxies_left(model)
    assert torch.equal(x, x_before), "the example input was changed"


@pytest.mark.parametrize("case", REFUSED, ids=ids(REFUSED))
def test_wrapper_refused_with_a_clear_message(case: Case):
    """DataParallel / torch.compile / TorchScript objects: an NNTeleportError at analyze (and teleport) that names
    the wrapper and says what to pass instead; no fx traceback, no leaf_modules hint."""
    _, names, hints = WRAPPERS[case.culprit[0]]
    wrapper = case.build()
    x, _ = case.inputs()
    for call in (nt.analyze, lambda m, xx: nt.teleport(m, xx, cob_range=0.5)):
        with pytest.raises(nt.NNTeleportError) as info:
            call(wrapper, x)
        msg = str(info.value)
        assert any(w in msg for w in (type(wrapper).__name__, *names)), f"does not name the wrapper: {msg}"
        assert any(h in msg for h in hints), f"does not say what to pass instead: {msg}"
        assert "leaf_modules" not in msg, f"unrelated leaf_modules hint: {msg}"
    # the way out the message points to works (control: the wrapped model itself is exact)
    inner = wrapper.module if isinstance(wrapper, nn.DataParallel) else getattr(wrapper, "_orig_mod", None)
    if isinstance(inner, nn.Module) and not isinstance(inner, torch.jit.ScriptModule):
        v = nt.teleport(inner, x, cob_range=0.9, generator=torch.Generator().manual_seed(0))
        assert_same_function(built(tm.PlainMLP)(), v, (x,), case.name)


# ----------------------------------------------------------------------------------------------- 3. global hooks
def _global_add(module, inputs, output):
    return output + 0.1 if type(module) is nn.Linear else None


def _global_pre_tanh(module, inputs):
    return (torch.tanh(inputs[0]),) if type(module) is nn.Linear else None


@pytest.mark.parametrize("kind", ["forward_add", "pre_tanh", "store"])
def test_global_module_hooks(kind: str):
    """Hooks registered for every module (``register_module_forward_hook`` / ``_pre_hook``) are as invisible to a
    module's rule as per-module ones: exact, or a refusal naming the hook. A storing global hook must not receive
    (and keep) tracing objects of the analysis."""
    from torch.nn.modules import module as module_mod

    model = built(tm.PlainMLP)()
    model.seen = []
    x, x2 = V4()
    if kind == "forward_add":
        handle = module_mod.register_module_forward_hook(_global_add)
    elif kind == "pre_tanh":
        handle = module_mod.register_module_forward_pre_hook(_global_pre_tanh)
    else:
        seen = model.seen
        handle = module_mod.register_module_forward_hook(lambda m, i, o: seen.append(o))
    try:
        try:
            plan = nt.analyze(model, x)
        except nt.NNTeleportError as exc:
            assert "hook" in str(exc), str(exc)
            return
        assert not [o for o in model.seen if isinstance(o, fx.Proxy)], "a global hook kept tracing objects"
        assert plan.num_free > 0
        ref = built(tm.PlainMLP)()
        for sampling in ("intra", "inter"):
            for seed in SEEDS:
                v = nt.teleport(
                    model, x, cob_range=0.9, sampling=sampling, generator=torch.Generator().manual_seed(seed)
                )
                assert_same_function(ref, v, (x, x2), f"{sampling}, seed={seed}")
                model.seen.clear()
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------------- 4. stale plans
def _untied() -> nn.Module:
    m = built(tm.SharedWeightTwoLinears)()
    m.b.weight = nn.Parameter(m.a.weight.detach().clone() * 0.7)
    return m


def _threshold_zero() -> nn.Module:
    m = built(tm.ModuleOpTrap, "Threshold")()
    m.mod.threshold = 0.0  # a ReLU at the first analysis
    return m


def _not_inplace() -> nn.Module:
    m = built(tm.InplaceActReread, "SiLU")()
    m.act.inplace = False
    return m


def _patch_forward(m: nn.Module) -> None:
    m.fc1.forward = types.MethodType(lambda self, h: torch.tanh(F.linear(h, self.weight, self.bias)) + 0.1, m.fc1)


MUTATIONS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], None]]] = {
    "use_skip-on": (built(tm.SwitchSkip, False), lambda m: setattr(m, "use_skip", True)),
    "use_skip-off": (built(tm.SwitchSkip, True), lambda m: setattr(m, "use_skip", False)),
    "relu-to-tanh": (built(tm.SwitchActivation, "relu"), lambda m: setattr(m, "act", "tanh")),
    "offset-0-to-1": (built(tm.SwitchOffset, 0.0), lambda m: setattr(m, "offset", 1.0)),
    "forward-hook-added": (built(tm.PlainMLP), lambda m: m.fc2.register_forward_hook(lambda mod, i, o: o + 0.5)),
    "pre-hook-added": (built(tm.PlainMLP), lambda m: m.fc2.register_forward_pre_hook(lambda mod, i: (i[0] + 0.5,))),
    "weights-tied": (_untied, lambda m: setattr(m.b, "weight", m.a.weight)),
    "threshold-0-to-0.5": (_threshold_zero, lambda m: setattr(m.mod, "threshold", 0.5)),
    "inplace-flag-set": (_not_inplace, lambda m: setattr(m.act, "inplace", True)),
    "forward-monkeypatched": (built(tm.PlainMLP), _patch_forward),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_cached_plan_not_reused_after_the_model_changed(name: str):
    """Teleport once (exact), change the model in a way the module structure and parameter shapes do not show,
    teleport the same object again: the second teleport must describe the model as it is now."""
    build, mutate = MUTATIONS[name]
    model = build()
    x, x2 = V4()
    for phase in ("before", "after"):
        if phase == "after":
            mutate(model)
        else:
            assert nt.analyze(model, x).num_free > 0
        for sampling in ("intra", "inter"):
            for seed in (0, 1):
                gen = torch.Generator().manual_seed(seed)
                v = nt.teleport(model, x, cob_range=0.9, sampling=sampling, generator=gen)
                assert_same_function(model, v, (x, x2), f"{phase} the change, {sampling}, seed={seed}")


def test_batch_mixing_model_analysed_at_one_batch_size_run_at_another():
    """Analysed at batch 2 (the slice is one branch), teleported again with batch 5 from the cache: exact at both."""
    model = built(tm.BatchMix)()
    x2, x5 = vec(tm.D_IN, batches=(2, 5))()
    for x in (x2, x5):  # the second teleport hits the cache (same shapes but the batch axis)
        for seed in SEEDS:
            v = nt.teleport(model, x, cob_range=0.9, sampling="inter", generator=torch.Generator().manual_seed(seed))
            assert_same_function(built(tm.BatchMix)(), v, (x2, x5), f"analysed with batch {x.shape[0]}")


def test_grad_enabled_branch_under_user_no_grad():
    """A user teleporting inside ``torch.no_grad()`` and training afterwards: the grad-enabled forward is exact."""
    model = built(tm.GradEnabledBranch)()
    x, x2 = V4()
    with torch.no_grad():
        v = nt.teleport(model, x, cob_range=0.9, sampling="inter", generator=torch.Generator().manual_seed(0))
    assert_same_function(built(tm.GradEnabledBranch)(), v, (x, x2), "teleported under no_grad")


def test_harness_hooks_follow_a_deep_copy():
    """Harness check: the storing hooks of the cases are bound to the model, so a deep copy stores into its own
    dict (a teleported copy reads its own features)."""
    m = built(tm.HookedMLP, "tap")()
    x, _ = V4()
    with torch.no_grad():
        m(x)
        c = copy.deepcopy(m)
        c(x * 2)
    assert not torch.equal(c.feats["fc2"], m.feats["fc2"])


@pytest.mark.parametrize("kind", ["store", "tap"])
def test_teleport_after_a_training_step_of_a_model_keeping_outputs(kind: str):
    """A model whose hooks keep the last outputs, teleported after an ordinary forward with grad (the stored outputs
    are non-leaf tensors, which ``copy.deepcopy`` refuses): exact, or a refusal at analyze naming the hook's module;
    never a crash inside teleport."""
    model = built(tm.HookedMLP, kind)()
    x, x2 = V4()
    model(x).sum().backward()  # a training step's forward/backward: feats now hold tensors with grad history
    try:
        nt.analyze(model, x)
    except nt.NNTeleportError as exc:
        assert "fc2" in str(exc), str(exc)
        return
    v = nt.teleport(model, x, cob_range=0.9, generator=torch.Generator().manual_seed(0))
    assert_same_function(built(tm.HookedMLP, kind)(), v, (x, x2), kind)


@pytest.mark.parametrize("case", TELEPORTABLE, ids=ids(TELEPORTABLE))
def test_trap_is_live(case: Case):
    """Harness check: every parameter of the model reaches the output (nonzero gradient on one of the two batches),
    so no trap sits behind dead ReLUs or an unused branch where a wrong teleport could not show."""
    model = case.build().eval()
    dead = []
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for _, p in named]
    for x in case.inputs():
        torch.default_generator.manual_seed(7)
        outs = leaves(model(x.clone()))
        loss = sum(
            (t * torch.randn(t.shape, generator=torch.Generator().manual_seed(3), dtype=t.dtype)).sum() for t in outs
        )
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        total = [t + (0 if g is None else g.abs()) for t, g in zip(total, grads)]
    dead = [n for (n, _), t in zip(named, total) if not bool((t > 0).any())]
    assert not dead, f"parameters that do not reach the output: {dead}"
