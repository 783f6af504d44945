"""The result of the analysis: :class:`TeleportPlan` (groups of free neurons, per-parameter index tensors, activation
sites, report) and :func:`_finalize`, which builds it from the walker's state (merged variables by connected
components, pins, positivity constraints).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from nnteleport.engine.cob import CoB, _validate_against_plan
from nnteleport.engine.rules import Kind
from nnteleport.errors import InvalidValueError


@dataclass(frozen=True)
class GroupInfo:
    """One free neuron group of a plan.

    Attributes
    ----------
    name: the module that produces the space (e.g. ``"layer1.0.bn2"``), or the first of merged spaces.
    size: number of free neurons (one per channel of a feature map).
    offset: position of the group's first factor in the flat CoB vector.
    positive_mask: bool tensor ``(size,)``; True where the factor must be positive (functional or shared
        positively homogeneous activations, PReLU).
    homogeneous: True when no neuron of the group passes through a non-homogeneous activation, i.e. positive
        factors need no activation wrapper (the positive-rescaling symmetry of ReLU networks).
    aliases: other spaces merged into this group (residual connections, shared modules).
    """

    name: str
    size: int
    offset: int
    positive_mask: Tensor
    homogeneous: bool
    aliases: tuple[str, ...] = ()

    @property
    def positive_only(self) -> bool:
        return bool(self.positive_mask.all())


@dataclass
class _Site:
    path: str
    S: Tensor  # raw variable ids, compressed, rank of the activation input
    kind: Kind


@dataclass
class _PinEvent:
    vars: Tensor
    category: str
    why: str


@dataclass
class ActivationSite:
    """A module whose activation may need the wrapper ``tau * f(x / tau)``: ``index`` selects its factors."""

    path: str
    index: Tensor  # indices into t = [1, tau...], shaped to broadcast against the input without batch axis
    kind: Kind


# ---------------------------------------------------------------------------------------------- union-find
def _components(n: int, merges: list[Tensor]) -> Tensor:
    """Connected components of the variables ``0..n-1`` under the merged pairs: for each variable the smallest
    variable of its component (label propagation with pointer jumping, whole-tensor operations)."""
    label = torch.arange(n, dtype=torch.long)
    if not merges:
        return label
    pairs = torch.cat(merges)
    a, b = pairs[:, 0].contiguous(), pairs[:, 1].contiguous()
    while True:
        m = torch.minimum(label[a], label[b])
        new = label.scatter_reduce(0, a, m, "amin").scatter_reduce(0, b, m, "amin")
        while True:  # pointer jumping: every label points at a root
            jumped = new[new]
            if torch.equal(jumped, new):
                break
            new = jumped
        if torch.equal(new, label):
            return label
        label = new


_PIN_PRIORITY = {"output": 0, "normalization": 1}


# ---------------------------------------------------------------------------------------------- the plan
@dataclass
class TeleportPlan:
    """The analysis of one model for one input signature; apply it with :func:`nnteleport.teleport`.

    ``param_scale_indices[name] = (out_idx, in_idx)``: int64 index tensors into ``t = cat([1, flat_tau])``,
    broadcastable to the parameter, so that the teleported parameter is ``p * t[out_idx] / t[in_idx]``
    (``in_idx`` is ``None`` for biases and normalisation/embedding parameters). Only parameters that can move are
    listed.
    """

    groups: dict[str, GroupInfo]
    num_free: int
    param_scale_indices: dict[str, tuple[Tensor, Tensor | None]]
    sites: list[ActivationSite]
    positive_mask: Tensor  # (num_free,) bool
    report: Any = None
    functional_sites: list[ActivationSite] = field(default_factory=list)  # functional="rewrite"/"graph": calls
    graph: fx.Graph | None = None  # functional="graph": the traced graph the wrappers are inserted into
    constants: dict[str, Tensor] = field(default_factory=dict)  # functional="graph": the graph's tensor constants
    rewrite: Any = None  # functional="rewrite": the traced graphs and call sites (engine.rewrite.RewriteInfo)
    _device_cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def ones(self) -> Any:
        return CoB({g.name: torch.ones(g.size, dtype=torch.float64) for g in self.groups.values()})

    def cob_from_flat(self, flat: Tensor) -> Any:
        """Split a flat vector of ``num_free`` factors into a :class:`~nnteleport.engine.cob.CoB`."""
        flat = torch.as_tensor(flat)
        if flat.shape != (self.num_free,):
            raise InvalidValueError(f"flat CoB must have shape ({self.num_free},), got {tuple(flat.shape)}")
        return CoB({g.name: flat[g.offset : g.offset + g.size] for g in self.groups.values()})

    def flat(self, cob: Any) -> Tensor:
        """Validate a CoB (mapping group -> factors; missing groups are 1) and return its flat float64 vector."""
        return _validate_against_plan(self, cob)


def _finalize(state: _State, model: nn.Module) -> TeleportPlan:
    from nnteleport.engine.report import build_report

    for pid, use in state.unaccounted.items():
        entry = state.params.get(pid)
        if entry is None:
            continue  # a parameter no rule rescales: any use of it is exact
        name, out_idx, in_idx = entry
        why = f"parameter {name!r} is {use}, which its module's rule does not account for"
        for idx in (out_idx, in_idx):
            if idx is not None:
                state.pins.append(_PinEvent(torch.unique(idx), "shared", why))
    label = _components(state.n_vars, state.merges)
    # pins in priority order, so the report attributes each pinned neuron to the most fundamental reason
    pinned = torch.zeros(state.n_vars, dtype=torch.bool)
    pinned[label[0]] = True
    pinned_by: list[tuple[str, str, int]] = []
    order = sorted(range(len(state.pins)), key=lambda i: _PIN_PRIORITY.get(state.pins[i].category, 2))
    for i in order:
        ev = state.pins[i]
        comps = torch.unique(label[ev.vars])
        new = comps[~pinned[comps]]
        if new.numel():  # neurons (sets of merged variables) newly pinned
            pinned[new] = True
            pinned_by.append((ev.category, ev.why, int(new.numel())))
    # every free neuron is a connected component of variables, named by its root (its smallest variable), so the
    # flat CoB lists the components in the order of their roots (= allocation order of their first variable)
    roots = torch.where(pinned[label], 0, label)
    free_roots = torch.unique(roots[roots != 0])  # sorted
    num_free = int(free_roots.numel())
    mapping = torch.zeros(state.n_vars, dtype=torch.long)
    mapping[free_roots] = torch.arange(1, num_free + 1)
    mapping = mapping[roots]  # variable -> 1-based position in the flat CoB (0: pinned)

    def new_per_reason(events: list[tuple[Tensor, str]]) -> tuple[Tensor, list[tuple[str, int]]]:
        seen = torch.zeros(num_free + 1, dtype=torch.bool)
        reasons = []
        for vars_, why in events:
            pos = torch.unique(mapping[vars_])
            pos = pos[pos != 0]
            new = int((~seen[pos]).sum())
            if new:
                reasons.append((why, new))
            seen[pos] = True
        return seen[1:], reasons

    positive_mask, pos_reasons = new_per_reason(state.positives)
    general, _ = new_per_reason([(t, "") for t in state.general_vars])

    # the space (state.spaces entry) of every variable; a component belongs to the space of its root, and the
    # other spaces it spans (merged by residual adds) are that group's aliases
    first = torch.tensor([f for _, f, _ in state.spaces], dtype=torch.long)
    counts = torch.tensor([c for _, _, c in state.spaces], dtype=torch.long)
    space_of = torch.full((state.n_vars,), -1, dtype=torch.long)
    if len(state.spaces):
        space_of[1:] = torch.repeat_interleave(torch.arange(len(state.spaces)), counts)[: state.n_vars - 1]
        assert int(first[0]) == 1 and int(counts.sum()) == state.n_vars - 1, "spaces must tile the variables"
    names = [name for name, _, _ in state.spaces]
    owner_space = space_of[free_roots].tolist()
    members: dict[str, int] = {}  # space name -> number of free neurons it owns (first-come order)
    for sp in owner_space:
        members[names[sp]] = members.get(names[sp], 0) + 1
    aliases: dict[str, list[str]] = {}
    v = torch.nonzero(roots).reshape(-1)
    if v.numel():
        own, mine = space_of[roots[v]], space_of[v]
        other = own != mine
        if bool(other.any()):
            own, mine, v = own[other], mine[other], v[other]
            key = own * len(names) + mine
            uniq, inv = torch.unique(key, return_inverse=True)
            firstv = torch.full((uniq.numel(),), state.n_vars, dtype=torch.long).scatter_reduce(0, inv, v, "amin")
            for k in uniq[torch.argsort(firstv)].tolist():
                o, m = names[k // len(names)], names[k % len(names)]
                if o != m and m not in aliases.setdefault(o, []):
                    aliases[o].append(m)
    groups: dict[str, GroupInfo] = {}
    offset = 0
    for name, size in members.items():
        gname = name or type(model).__name__
        groups[gname] = GroupInfo(
            name=gname,
            size=size,
            offset=offset,
            positive_mask=positive_mask[offset : offset + size].clone(),
            homogeneous=not bool(general[offset : offset + size].any()),
            aliases=tuple(aliases.get(name, ())),
        )
        offset += size

    param_scale_indices: dict[str, tuple[Tensor, Tensor | None]] = {}
    for name, out_idx, in_idx in state.params.values():
        o = mapping[out_idx]
        i = mapping[in_idx] if in_idx is not None else None
        if i is not None and not bool(i.any()):
            i = None
        if bool(o.any()) or i is not None:
            param_scale_indices[name] = (o, i)

    def resolve(raw: dict[str, _Site]) -> list[ActivationSite]:
        out = []
        for s in raw.values():
            idx = mapping[s.S]
            if not bool(idx.any()):
                continue
            if idx.dim() >= 2 and idx.shape[0] == 1:
                idx = idx.squeeze(0)
            out.append(ActivationSite(s.path, idx, s.kind))
        return out

    plan = TeleportPlan(
        groups, num_free, param_scale_indices, resolve(state.sites), positive_mask,
        functional_sites=resolve(state.fsites),
    )  # fmt: skip
    plan.report = build_report(model, plan, pinned_by, pos_reasons)
    return plan


class _State:
    """Variables and constraints collected over one or more traced graphs of a model."""

    def __init__(self) -> None:
        self.n_vars = 1  # variable 0 is the constant 1
        self.spaces: list[tuple[str, int, int]] = []  # (name, first var, count) in allocation order
        self.module_out: dict[str, Tensor] = {}  # module path -> its output variables (reused)
        self.merges: list[Tensor] = []  # (k, 2) pairs of variables to unite
        self.pins: list[_PinEvent] = []
        self.positives: list[tuple[Tensor, str]] = []
        self.params: dict[int, tuple[str, Tensor, Tensor | None]] = {}  # id(param) -> (name, out, in)
        self.sites: dict[str, _Site] = {}
        self.fsites: dict[str, _Site] = {}  # functional call sites (node name), functional="rewrite"/"graph"
        self.general_vars: list[Tensor] = []
        self.param_names: dict[int, str] = {}  # id(parameter) -> name, for every parameter of the model
        self.unaccounted: dict[int, str] = {}  # id(parameter) -> a use that no rule accounted for

    def new(self, n: int, name: str) -> Tensor:
        ids = torch.arange(self.n_vars, self.n_vars + n, dtype=torch.long)
        self.spaces.append((name, self.n_vars, n))
        self.n_vars += n
        return ids
