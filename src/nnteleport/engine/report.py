"""What the engine could teleport: groups, coverage, and every space pinned to ``tau = 1`` with its reason."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

__all__ = ["TeleportReport"]

_CATEGORY_TEXT = {
    "output": "model output (by definition)",
    "normalization": "normalisation input (paper rule: statistics untouched)",
    "constant": "added to a constant",
    "gate": "product/quotient of hidden tensors",
    "functional": "functional activation without a wrapper",
    "shared": "shared module or parameter, or a parameter used outside its module's rule",
    "hook": "black box: module with hooks or parametrizations",
    "unsupported": "op not understood by the engine",
}

_KIND_TEXT = {
    "positive": "positively homogeneous: wrapped only where tau < 0",
    "general": "wrapped where tau != 1",
    "linear": "never wrapped",
}


@dataclass
class TeleportReport:
    """Summary of a :class:`~nnteleport.engine.analysis.TeleportPlan`; ``print(report)`` gives a readable table.

    Attributes
    ----------
    model: class name of the model.
    hidden_neurons: neurons created inside the model (channels of linear/conv/normalisation/embedding outputs),
        excluding the model's outputs.
    free_neurons: of those, how many get a free factor ``tau``.
    coverage: ``free_neurons / hidden_neurons``.
    parameters_total, parameters_moving: parameter elements in the model, and those a CoB rescales.
    groups: per free group: name, size, positive-only count, homogeneous, merged spaces.
    pinned: per reason: category, text, neurons pinned (neurons are attributed to the first reason in the order
        output, normalisation, others).
    positive_only: per reason, neurons restricted to ``tau > 0``.
    wrapper_sites: every place that receives ``tau * f(x / tau)`` when its factors require it: activation modules
        (``functional`` False, by module path) and, with ``functional="rewrite"`` (the default) or ``"graph"``,
        activations called as functions (``functional`` True, by the call's node name in the traced graph; a call
        that only the graph of another mode makes is named ``"<node> (eval)"``); ``kind`` "positive" (ReLU-like,
        wrapped only where ``tau < 0``) or "general" (wrapped wherever ``tau != 1``).
    notes: what else the analysis decided, e.g. that ``functional="rewrite"`` fell back to ``"constrain"``.
    """

    model: str
    hidden_neurons: int
    free_neurons: int
    parameters_total: int
    parameters_moving: int
    groups: list[dict[str, Any]] = field(default_factory=list)
    pinned: list[dict[str, Any]] = field(default_factory=list)
    positive_only: list[dict[str, Any]] = field(default_factory=list)
    wrapper_sites: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def coverage(self) -> float:
        return self.free_neurons / self.hidden_neurons if self.hidden_neurons else 0.0

    @property
    def parameter_coverage(self) -> float:
        return self.parameters_moving / self.parameters_total if self.parameters_total else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["coverage"] = self.coverage
        d["parameter_coverage"] = self.parameter_coverage
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    def __str__(self) -> str:
        lines = [
            f"Teleportation report for {self.model}",
            f"  hidden neurons with a free CoB: {self.free_neurons} / {self.hidden_neurons} "
            f"({100 * self.coverage:.1f}%)",
            f"  parameters that move:           {self.parameters_moving} / {self.parameters_total} "
            f"({100 * self.parameter_coverage:.1f}%)",
            f"  groups: {len(self.groups)}",
        ]
        width = max([len(g["name"]) for g in self.groups] + [5])
        for g in self.groups:
            extra = []
            if g["positive_only"]:
                extra.append(f"{g['positive_only']} tau>0 only")
            if not g["homogeneous"]:
                extra.append("non-homogeneous activation")
            if g["aliases"]:
                shown = ", ".join(g["aliases"][:4]) + (" ..." if len(g["aliases"]) > 4 else "")
                extra.append(f"merged with {shown}")
            lines.append(f"    {g['name']:<{width}}  {g['size']:>6} neurons  {'; '.join(extra)}")
        if self.pinned:
            lines.append("  pinned to tau = 1:")
            norm = [p for p in self.pinned if p["category"] == "normalization"]
            if norm:
                names = [p["why"].split(":")[0] for p in norm]
                shown = ", ".join(names[:3]) + (f", ... ({len(names)} modules)" if len(names) > 3 else "")
                lines.append(
                    f"    {sum(p['neurons'] for p in norm):>6} neurons  [normalization] inputs of {shown} "
                    "(paper rule: statistics untouched)"
                )
            for p in self.pinned:
                if p["category"] != "normalization":
                    lines.append(f"    {p['neurons']:>6} neurons  [{p['category']}] {p['why']}")
        if self.positive_only:
            lines.append("  restricted to tau > 0:")
            for p in self.positive_only:
                lines.append(f"    {p['neurons']:>6} neurons  {p['why']}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.wrapper_sites:
            n = len(self.wrapper_sites)
            lines.append(f"  activation wrappers tau * f(x / tau) where needed: {n} site{'s' if n != 1 else ''}")
            shown = self.wrapper_sites if n <= 24 else self.wrapper_sites[:20]
            for s in shown:
                where = "functional call" if s.get("functional") else "module"
                lines.append(f"    {s['module']} ({where}; {_KIND_TEXT.get(s['kind'], s['kind'])})")
            if n > len(shown):
                lines.append(f"    ... {n - len(shown)} more (report.wrapper_sites lists all)")
        return "\n".join(lines)


def _still(o: Any, i: Any, numel: int) -> int:
    """Elements of a parameter with ``t[o] / t[i]`` identically 1 (both indices 0), ``o``/``i`` broadcasting
    against it, counted without materialising the parameter's shape when the two index tensors vary along
    different axes (``(O, 1)`` and ``(1, I)`` for a linear weight: counting over ``O * I`` took 0.35 s for AlexNet)."""
    zo = o == 0
    if i is None:
        return int(zo.sum()) * (numel // max(zo.numel(), 1))
    zi = i == 0
    n = max(zo.dim(), zi.dim())
    so = (1,) * (n - zo.dim()) + tuple(zo.shape)
    si = (1,) * (n - zi.dim()) + tuple(zi.shape)
    if all(a == 1 or b == 1 for a, b in zip(so, si)):  # disjoint axes: the count factorises
        return int(zo.sum()) * int(zi.sum()) * (numel // max(zo.numel() * zi.numel(), 1))
    both = zo & zi
    return int(both.sum()) * (numel // max(both.numel(), 1))


def build_report(
    model: nn.Module,
    plan: Any,
    pinned_by: list[tuple[str, str, int]],
    pos_reasons: list[tuple[str, int]],
) -> TeleportReport:
    merged: dict[tuple[str, str], int] = defaultdict(int)
    for cat, why, n in pinned_by:
        if cat != "output":
            merged[(cat, why)] += n
    pinned = [
        {"category": cat, "text": _CATEGORY_TEXT.get(cat, cat), "why": why, "neurons": n}
        for (cat, why), n in merged.items()
    ]
    # hidden neurons: distinct neurons (merged variables count once), free or pinned, except the outputs
    hidden = plan.num_free + sum(merged.values())
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    moving = 0
    for name, (o, i) in plan.param_scale_indices.items():
        p = params.get(name)
        if p is None:
            continue
        moving += p.numel() - _still(o, i, p.numel())
    groups = [
        {
            "name": g.name,
            "size": g.size,
            "positive_only": int(g.positive_mask.sum()),
            "homogeneous": g.homogeneous,
            "aliases": list(g.aliases),
        }
        for g in plan.groups.values()
    ]
    sites = [{"module": s.path, "kind": s.kind.value, "functional": False} for s in plan.sites]
    sites += [{"module": s.path, "kind": s.kind.value, "functional": True} for s in plan.functional_sites]
    return TeleportReport(
        model=type(model).__name__,
        hidden_neurons=hidden,
        free_neurons=plan.num_free,
        parameters_total=total,
        parameters_moving=moving,
        groups=groups,
        pinned=pinned,
        positive_only=[{"why": w, "neurons": n} for w, n in pos_reasons],
        wrapper_sites=sites,
    )
