"""Every registered rule of the engine, exercised by its settings (:mod:`tests.rule_settings`), and a meta-test that
fails when a key of ``rules.MODULE_RULES`` / ``FUNCTION_RULES`` / ``METHOD_RULES`` has no setting (BackPACK's pattern).

Per setting: the op is a node of the traced graph and no op of the model is reported as "not understood by the
engine"; the expected outcome (free / pinned neurons feeding the op) holds under ``functional="constrain"`` (the
mode the settings describe) and the default ``functional="rewrite"`` frees at least as many neurons; and for cob_range
0.5 and 0.9, intra and inter sampling and two seeds, the teleported model equals the original in float64 to a relative
1e-9 (outputs and input gradients, train and eval mode with the RNG seeded before each forward, on the analysis batch
and on a batch of another size), with its parameters moved whenever the plan has free neurons -- in both modes where
they differ (the model has functional call sites).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.fx as fx
from torch import Tensor, nn

import nnteleport as nt
from nnteleport.engine import rules
from tests import rule_settings as rs

CASES = rs.all_cases()
IDS = [rs.case_id(k, c) for k, c in CASES]
COMBOS = [(s, sampling, seed) for s in (0.5, 0.9) for sampling in ("intra", "inter") for seed in (0, 1)]
NOT_HANDLED = ("not understood by the engine", "could not be followed")
REGISTRIES = {
    "MODULE_RULES": rules.MODULE_RULES,
    "FUNCTION_RULES": rules.FUNCTION_RULES,
    "METHOD_RULES": rules.METHOD_RULES,
}


def _registry_of(key: Any) -> str:
    if isinstance(key, str):
        return "METHOD_RULES"
    if isinstance(key, type) and issubclass(key, nn.Module):
        return "MODULE_RULES"
    return "FUNCTION_RULES"


# ------------------------------------------------------------------------------------------------------- meta-tests
def test_every_registered_rule_key_has_a_setting():
    missing = [
        f"{name}[{rs.key_name(key)}]" for name, table in REGISTRIES.items() for key in table if key not in rs.SETTINGS
    ]
    assert not missing, f"{len(missing)} rule keys without a setting in tests/rule_settings.py: {', '.join(missing)}"


def test_no_setting_for_an_unregistered_key():
    stale = [rs.key_name(key) for key in rs.SETTINGS if key not in REGISTRIES[_registry_of(key)]]
    assert not stale, f"settings for keys no rule registry holds (remove them or register the rule): {stale}"


def test_case_ids_are_unique_and_every_key_has_cases():
    assert len(IDS) == len(set(IDS)), sorted({i for i in IDS if IDS.count(i) > 1})
    assert all(rs.SETTINGS[k] for k in rs.SETTINGS)


# ------------------------------------------------------------------------------------------------------- helpers
class _LeafTracer(fx.Tracer):
    """Traces like the engine: modules a rule handles are leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, tuple(rules.MODULE_RULES)) or super().is_leaf_module(m, qualname)


def _op_nodes(model: nn.Module, key: Any, case: rs.Case) -> list[fx.Node]:
    op, target = case.node or (
        ("call_method", key)
        if isinstance(key, str)
        else ("call_module", key)
        if isinstance(key, type)
        else ("call_function", key)
    )
    found = []
    was = model.training
    try:
        for training in (True, False):  # eval mode only when train mode lacks the node
            if found:
                break
            model.train(training)
            graph = _LeafTracer().trace(model)
            for n in graph.nodes:
                if n.op != op:
                    continue
                if op == "call_module":
                    hit = type(model.get_submodule(n.target)) is target
                elif op == "call_method":
                    hit = n.target == target
                else:
                    hit = n.target is target
                if hit:
                    found.append(n)
    finally:
        model.train(was)
    return found


def _neurons(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    if isinstance(m, (nn.modules.conv._ConvNd,)):
        return m.out_channels
    if isinstance(m, nn.Embedding):
        return m.embedding_dim
    p = getattr(m, "weight", None)
    if p is None:
        p = m.bias
    return p.numel()


def _rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-300))


def _run(model: nn.Module, x: Tensor, train: bool) -> tuple[Tensor, Tensor | None]:
    """Output and input gradient (of ``<out, r>`` with a fixed random ``r``), the RNG seeded before the forward."""
    model.train(train)
    xx = x.detach().clone()
    if xx.is_floating_point():
        xx.requires_grad_(True)
    torch.default_generator.manual_seed(7)  # (torch.manual_seed also seeds lazy CUDA/XPU state: 20x slower)
    out = model(xx)
    grad = None
    if xx.requires_grad and out.requires_grad:
        r = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
        (grad,) = torch.autograd.grad((out * r).sum(), xx, allow_unused=True)
    return out.detach(), grad


def _runs(model: nn.Module, xs: tuple[Tensor, Tensor]) -> dict[tuple[bool, int], tuple[Tensor, Tensor | None]]:
    """Eval first, then train (batch-norm statistics move in the same order in both models)."""
    return {(train, i): _run(model, x, train) for train in (False, True) for i, x in enumerate(xs)}


def _build(key: Any, case: rs.Case) -> tuple[nn.Module, Tensor, Tensor]:
    seed = sum(map(ord, rs.case_id(key, case)))
    default = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        torch.set_default_dtype(torch.float64)
        try:
            return case.build()
        finally:
            torch.set_default_dtype(default)


def _check_outcome(case: rs.Case, model: nn.Module, plan: Any) -> list[str]:
    problems = []
    where = {}
    for g in plan.groups.values():
        where[g.name] = g
        for a in g.aliases:
            where.setdefault(a, g)
    must_free = (case.feeds if case.expect == "free" else ()) + case.free
    must_pin = (case.feeds if case.expect == "pinned" else ()) + case.pinned
    for path in must_free:
        g = where.get(path)
        n = _neurons(model.get_submodule(path))
        if g is None:
            problems.append(f"expected {path!r} free ({n} neurons), but it has no group")
        elif g.size != n:
            problems.append(f"expected {path!r} free with {n} neurons, its group {g.name!r} has {g.size}")
        elif case.positive and path in case.feeds and not g.positive_only:
            problems.append(f"expected {path!r} restricted to tau > 0, positive mask {g.positive_mask.tolist()}")
    if must_free and plan.num_free == 0:
        problems.append("expected free neurons, plan.num_free == 0")
    for path in must_pin:
        if path in where:
            problems.append(f"expected {path!r} pinned, it is free (group {where[path].name!r})")
    if case.reason is not None and not any(p["category"] == case.reason for p in plan.report.pinned):
        problems.append(f"expected a pin of category {case.reason!r}, report: {plan.report.pinned}")
    return problems


# ------------------------------------------------------------------------------------------------------- the settings
@pytest.mark.parametrize("key,case", CASES, ids=IDS)
def test_rule_setting(key, case):
    if case.needs_cuda and not torch.cuda.is_available():
        pytest.skip("the op moves a tensor to CUDA")
    model, x, x2 = _build(key, case)
    problems: list[str] = []

    if not _op_nodes(model, key, case):
        target = case.node[1] if case.node else key
        problems.append(f"no graph node for {rs.key_name(target)} (the rule is never reached by this code)")

    # the settings' expected outcomes describe functional="constrain" (the model's own forward, functional calls
    # pinned or tau > 0); the default functional="rewrite" frees at least as much and is checked for exactness too
    plan = nt.analyze(model, x, functional="constrain")
    for p in plan.report.pinned:
        if any(s in p["why"] for s in NOT_HANDLED):
            problems.append(f"report: {p['neurons']} neurons [{p['category']}] {p['why']}")
    problems += _check_outcome(case, model, plan)
    rewritten = nt.analyze(model, x)
    if rewritten.num_free < plan.num_free:
        problems.append(f"functional='rewrite' frees {rewritten.num_free} neurons, 'constrain' {plan.num_free}")
    modes = ["constrain", "rewrite"] if rewritten.functional_sites else ["constrain"]

    state = {k: t.clone() for k, t in model.state_dict().items()}
    ref = _runs(model, (x, x2))
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    for s, sampling, seed, mode in [(*c, m) for c in COMBOS for m in modes]:
        where = f"s={s} {sampling} seed={seed} {mode}"
        v = nt.teleport(
            model, x, cob_range=s, sampling=sampling, generator=torch.Generator().manual_seed(seed), functional=mode
        )
        if plan.num_free:
            params = dict(model.named_parameters())
            vparams = dict(v.named_parameters())
            moved = max(
                (_rel_err(params[n].detach(), vparams[n].detach()) for n in plan.param_scale_indices if n in vparams),
                default=0.0,
            )
            if not moved > 1e-3:
                problems.append(f"{where}: parameters did not move (max relative change {moved:.1e})")
        got = _runs(v, (x, x2))
        for (train, i), (out, grad) in ref.items():
            tag = f"{where} {'train' if train else 'eval'} batch={(x, x2)[i].shape[0]}"
            vout, vgrad = got[(train, i)]
            if out.shape != vout.shape:
                problems.append(f"{tag}: output shape {tuple(vout.shape)} != {tuple(out.shape)}")
                continue
            err = _rel_err(out, vout)
            if not err < case.rtol:
                problems.append(f"{tag}: output relative error {err:.2e}")
            if (grad is None) != (vgrad is None):
                problems.append(f"{tag}: input gradient present in one model only")
            elif grad is not None:
                gerr = _rel_err(grad, vgrad)
                if not gerr < case.rtol:
                    problems.append(f"{tag}: input-gradient relative error {gerr:.2e}")
        model.load_state_dict(state)
    problems = list(dict.fromkeys(problems))
    shown = problems[:12] + ([f"... {len(problems) - 12} more"] if len(problems) > 12 else [])
    assert not problems, f"{rs.case_id(key, case)}:\n  " + "\n  ".join(shown)
