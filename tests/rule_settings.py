"""One list of settings per registered rule of the engine (BackPACK's pattern): :data:`SETTINGS` maps every key of
``rules.MODULE_RULES`` (a module type), ``rules.FUNCTION_RULES`` (a function) and ``rules.METHOD_RULES`` (a tensor
method name) to the cases that exercise its rule; ``tests/test_rule_settings.py`` runs them and fails when a key has
no entry. Adding a rule is one :func:`add` call here.

Every case builds a tiny float64 model ``x -> pre -> op -> post``: ``pre`` (an ``nn.Linear``, or an ``nn.Conv1d/2d/3d``
for channel inputs) makes the hidden neurons the op is applied to, and ``post`` (an ``nn.Linear`` on the flattened
result, or a given layer) reads its output, so both the rule's input and output spaces matter. ``aux`` is a second
hidden layer on ``x`` for binary ops. The expected outcome is about the neurons that feed the op (``feeds``):

* ``"free"``: they stay free (their group is in ``plan.groups`` with all its neurons), as the rule's docstring
  promises (with ``positive``: restricted to ``tau > 0``);
* ``"pinned"``: the engine pins them on purpose (a gate, a normalisation input, a functional non-homogeneous
  activation under ``functional="constrain"``, a pooling window that spans several factors, a truncating cast),
  optionally with the pin category ``reason`` in the report;
* ``"either"``: the engine may choose (kept for trap variants such as an in-place activation whose input is read
  again), only exactness is required.
"""

from __future__ import annotations

import builtins
import copy
import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

import nnteleport as nt

torch.fx.wrap("len")  # `len(h)` in a forward below becomes a graph node (the builtins.len rule)

# input shapes without the batch axis, and the width of the hidden layer `pre` per kind
SHAPES: dict[str, tuple[int, ...]] = {"vec": (4,), "1d": (2, 8), "2d": (2, 6, 6), "3d": (2, 4, 4, 4), "idx": (5,)}
WIDTH = {"vec": 6, "1d": 4, "2d": 4, "3d": 4, "idx": 6}
BATCH, OTHER_BATCH = 3, 2

Fn = Callable[[Any, Tensor, Tensor], Any]  # fn(model, h = pre(x), x) -> what post reads


def make_input(kind: str, n: int) -> Tensor:
    if kind == "idx":
        return torch.randint(0, 10, (n, *SHAPES[kind]))
    return torch.randn(n, *SHAPES[kind], dtype=torch.float64)


def hidden_layer(kind: str, width: int) -> nn.Module:
    if kind == "vec":
        return nn.Linear(SHAPES["vec"][0], width)
    if kind == "idx":
        return nn.Embedding(10, width)
    conv = {"1d": nn.Conv1d, "2d": nn.Conv2d, "3d": nn.Conv3d}[kind]
    return conv(SHAPES[kind][0], width, 3, padding=1)


class Net(nn.Module):
    """``post(fn(self, pre(x), x))``; ``post`` is an ``nn.Linear`` on the flattened result unless given."""

    def __init__(
        self,
        kind: str,
        fn: Fn,
        *,
        width: int | None = None,
        aux: bool = False,
        const: bool = False,
        mods: dict[str, nn.Module] | None = None,
        post: Callable[[tuple[int, ...]], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        width = width or WIDTH[kind]
        self.pre = hidden_layer(kind, width)
        if aux:
            self.aux = hidden_layer(kind, width)
        if const:  # a constant (non-hidden) tensor of the hidden's shape without the batch axis
            self.register_buffer("c", torch.randn(self.pre(make_input(kind, 1)).shape[1:], dtype=torch.float64))
        for name, m in (mods or {}).items():
            setattr(self, name, m)
        self.fn = fn
        with torch.no_grad():
            x = make_input(kind, BATCH)
            y = fn(self, self.pre(x), x)
        if post is not None:
            self.flat = False
            self.post = post(tuple(y.shape))
        else:
            self.flat = y.dim() > 2
            self.post = nn.Linear(y[0].numel(), 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fn(self, self.pre(x), x)
        if self.flat:
            y = torch.flatten(y, 1)
        return self.post(y)


@dataclass(frozen=True)
class Case:
    """One setting of a rule: a model, its inputs and the expected outcome (see the module docstring)."""

    variant: str
    build: Callable[[], tuple[nn.Module, Tensor, Tensor]]  # (model, analysis batch, batch of another size)
    expect: str  # "free" | "pinned" | "either" (the neurons of `feeds`)
    feeds: tuple[str, ...] = ("pre",)
    free: tuple[str, ...] = ()  # other groups that must be free (e.g. a normalisation's own output)
    pinned: tuple[str, ...] = ()  # other modules whose neurons must be pinned (e.g. a gate)
    positive: bool = False  # the free `feeds` are restricted to tau > 0
    reason: str | None = None  # a pin category the report must list
    rtol: float = 1e-9
    node: tuple[str, Any] | None = None  # (op, target) of the graph node, when it is not the registry key
    needs_cuda: bool = False

    def __post_init__(self) -> None:
        assert self.expect in ("free", "pinned", "either"), self.expect


def net(kind: str, fn: Fn, **kw: Any) -> Callable[[], tuple[nn.Module, Tensor, Tensor]]:
    """A builder: modules in ``kw["mods"]`` are factories, called at build time (seeded, float64 default)."""

    def build() -> tuple[nn.Module, Tensor, Tensor]:
        opts = dict(kw)
        opts["mods"] = {k: f() for k, f in (kw.get("mods") or {}).items()}
        return Net(kind, fn, **opts), make_input(kind, BATCH), make_input(kind, OTHER_BATCH)

    return build


def C(variant: str, fn: Fn, expect: str, kind: str = "vec", *, op: Callable[[], nn.Module] | None = None, **kw: Any):
    """A case of the standard ``x -> pre -> fn -> post`` model; ``op`` is the factory of ``self.op``."""
    net_kw = {k: kw.pop(k) for k in ("width", "aux", "const", "mods", "post") if k in kw}
    mods = dict(net_kw.pop("mods", None) or {})
    if op is not None:
        mods["op"] = op
    return Case(variant, net(kind, fn, mods=mods, **net_kw), expect, **kw)


SETTINGS: dict[Any, list[Case]] = {}


def add(key: Any, *cases: Case) -> None:
    """Register cases for one registry key (module type, function object, or method name)."""
    SETTINGS.setdefault(key, []).extend(cases)


def OP(m: Any, h: Tensor, x: Tensor) -> Tensor:
    return m.op(h)


def REREAD(m: Any, h: Tensor, x: Tensor) -> Tensor:
    """An in-place op whose input is read again afterwards."""
    y = m.op(h)
    return torch.cat([y, h], 1)


def conv_post(nd: int, out: int = 3) -> Callable[[tuple[int, ...]], nn.Module]:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
    return lambda shape: conv(shape[1], out, 1)


def linear_post(shape: tuple[int, ...]) -> nn.Module:
    return nn.Linear(shape[-1], 3)


# readable names of registry keys ---------------------------------------------------------------------------------
_NAMES: dict[int, str] = {}


def key_name(key: Any) -> str:
    """``nn.Linear``, ``F.relu``, ``torch.cat``, ``operator.add``, ``builtins.len``, ``Tensor.view``."""
    if isinstance(key, str):
        return f"Tensor.{key}"
    if isinstance(key, type):
        if getattr(nn, key.__name__, None) is key:
            return f"nn.{key.__name__}"
        if getattr(nt, key.__name__, None) is key:
            return f"nt.{key.__name__}"
        return f"{key.__module__}.{key.__qualname__}"
    if not _NAMES:
        for prefix, ns in (("F", F), ("torch", torch), ("operator", operator), ("builtins", builtins)):
            for name in dir(ns):
                if name.startswith("__"):
                    continue
                try:
                    obj = getattr(ns, name)
                except Exception:
                    continue
                if callable(obj) and not isinstance(obj, type):
                    _NAMES.setdefault(id(obj), f"{prefix}.{name}")
    return _NAMES.get(id(key), getattr(key, "__qualname__", repr(key)))


# ==================================================================================================== module rules
# linear maps ------------------------------------------------------------------------------------------------------
add(
    nn.Linear,
    C("hidden", OP, "free", op=partial(nn.Linear, 6, 5), free=("op",)),
    C("no-bias", OP, "free", op=partial(nn.Linear, 6, 5, bias=False), free=("op",)),
    C("3d-input", lambda m, h, x: m.op(h.transpose(1, 2)), "free", "1d", op=partial(nn.Linear, 4, 5), free=("op",)),
    C("non-feature-axis", OP, "pinned", "1d", op=partial(nn.Linear, 8, 5), free=("op",), reason="unsupported"),
)
for _nd, _cls in ((1, nn.Conv1d), (2, nn.Conv2d), (3, nn.Conv3d)):
    _k = f"{_nd}d"
    add(
        _cls,
        C("plain", OP, "free", _k, op=partial(_cls, 4, 5, 3, padding=1), free=("op",)),
        C("grouped", OP, "free", _k, op=partial(_cls, 4, 6, 3, padding=1, groups=2), free=("op",)),
        C("depthwise", OP, "free", _k, op=partial(_cls, 4, 4, 3, padding=1, groups=4, bias=False), free=("op",)),
        C("stride-dilation", OP, "free", _k, op=partial(_cls, 4, 5, 2, stride=2, dilation=2), free=("op",)),
    )
    if _nd < 3:
        add(
            _cls,
            *(
                C(
                    f"padding-{mode}",
                    OP,
                    "free",
                    _k,
                    op=partial(_cls, 4, 5, 3, padding=1, padding_mode=mode),
                    free=("op",),
                )
                for mode in ("reflect", "replicate", "circular")
            ),
            C(
                "padding-same-dilated",
                OP,
                "free",
                _k,
                op=partial(_cls, 4, 5, 3, padding="same", dilation=2),
                free=("op",),
            ),
        )
for _nd, _cls in ((1, nn.ConvTranspose1d), (2, nn.ConvTranspose2d), (3, nn.ConvTranspose3d)):
    _k = f"{_nd}d"
    add(
        _cls,
        C("plain", OP, "free", _k, op=partial(_cls, 4, 5, 3), free=("op",)),
        C("stride-output-padding", OP, "free", _k, op=partial(_cls, 4, 5, 3, stride=2, output_padding=1), free=("op",)),
        C("grouped", OP, "free", _k, op=partial(_cls, 4, 6, 3, groups=2, bias=False), free=("op",)),
    )
add(
    nn.Embedding,
    Case("plain", net("idx", lambda m, h, x: h), "free"),
    Case(
        "padding-idx",
        net("idx", lambda m, h, x: m.op(x), mods={"op": partial(nn.Embedding, 10, 5, padding_idx=0)}),
        "free",
        feeds=("op",),
    ),
    Case(
        "max-norm",
        net("idx", lambda m, h, x: m.op(x), mods={"op": partial(nn.Embedding, 10, 5, max_norm=1.0)}),
        "pinned",
        feeds=("op",),
    ),
)

# normalisation ------------------------------------------------------------------------------------------------------
_NORM = {"reason": "normalization"}
add(
    nn.BatchNorm1d,
    C("features", OP, "pinned", op=partial(nn.BatchNorm1d, 6), free=("op",), **_NORM),
    C("channels", OP, "pinned", "1d", op=partial(nn.BatchNorm1d, 4), free=("op",), **_NORM),
    C("no-affine", OP, "pinned", op=partial(nn.BatchNorm1d, 6, affine=False), **_NORM),
    C(
        "no-running-stats",
        OP,
        "pinned",
        op=partial(nn.BatchNorm1d, 6, track_running_stats=False),
        free=("op",),
        **_NORM,
    ),
    C("cumulative-momentum", OP, "pinned", "1d", op=partial(nn.BatchNorm1d, 4, momentum=None), free=("op",), **_NORM),
)
add(
    nn.BatchNorm2d,
    C("plain", OP, "pinned", "2d", op=partial(nn.BatchNorm2d, 4), free=("op",), **_NORM),
    C("no-affine", OP, "pinned", "2d", op=partial(nn.BatchNorm2d, 4, affine=False), **_NORM),
    C("then-conv", OP, "pinned", "2d", op=partial(nn.BatchNorm2d, 4), free=("op",), post=conv_post(2), **_NORM),
)
add(nn.BatchNorm3d, C("plain", OP, "pinned", "3d", op=partial(nn.BatchNorm3d, 4), free=("op",), **_NORM))
add(nn.SyncBatchNorm, C("plain", OP, "pinned", "2d", op=partial(nn.SyncBatchNorm, 4), free=("op",), **_NORM))
for _nd, _cls in ((1, nn.InstanceNorm1d), (2, nn.InstanceNorm2d), (3, nn.InstanceNorm3d)):
    _k = f"{_nd}d"
    add(
        _cls,
        C("affine", OP, "pinned", _k, op=partial(_cls, 4, affine=True), free=("op",), **_NORM),
        C("no-affine", OP, "pinned", _k, op=partial(_cls, 4), **_NORM),
    )
_IN_STATS = partial(nn.InstanceNorm1d, 4, affine=True, track_running_stats=True)
add(nn.InstanceNorm1d, C("running-stats", OP, "pinned", "1d", op=_IN_STATS, free=("op",), **_NORM))
add(
    nn.GroupNorm,
    C("two-groups", OP, "pinned", "2d", op=partial(nn.GroupNorm, 2, 4), free=("op",), **_NORM),
    C("per-channel-no-affine", OP, "pinned", "1d", op=partial(nn.GroupNorm, 4, 4, affine=False), **_NORM),
)
# functional forms with the module's own parameters (timm's BatchNormAct2d, GroupNormAct, LayerNorm2d)
_BN = partial(nn.BatchNorm2d, 4)
_FBN: Fn = lambda m, h, x: F.batch_norm(  # noqa: E731
    h, m.bn.running_mean, m.bn.running_var, m.bn.weight, m.bn.bias, m.training, 0.1, 1e-5
)
add(
    F.batch_norm,
    C("module-parameters", _FBN, "pinned", "2d", mods={"bn": _BN}, free=("bn",), **_NORM),
    C(
        "keywords",
        lambda m, h, x: F.batch_norm(
            h, m.bn.running_mean, m.bn.running_var, bias=m.bn.bias, weight=m.bn.weight, training=m.training
        ),
        "pinned",
        "2d",
        mods={"bn": _BN},
        free=("bn",),
        **_NORM,
    ),
    C("no-affine", lambda m, h, x: F.batch_norm(h, None, None, training=True), "pinned", "2d", **_NORM),
    C(
        "computed-weight",
        lambda m, h, x: F.batch_norm(h, None, None, m.bn.weight * 2, m.bn.bias, training=True),
        "pinned",
        "2d",
        mods={"bn": _BN},
        pinned=("bn",),
        **_NORM,
    ),
)
add(
    F.instance_norm,
    C(
        "module-parameters",
        lambda m, h, x: F.instance_norm(h, weight=m.bn.weight, bias=m.bn.bias),
        "pinned",
        "2d",
        mods={"bn": _BN},
        free=("bn",),
        **_NORM,
    ),
)
add(
    F.group_norm,
    C(
        "two-groups",
        lambda m, h, x: F.group_norm(h, 2, m.gn.weight, m.gn.bias),
        "pinned",
        "2d",
        mods={"gn": partial(nn.GroupNorm, 2, 4)},
        free=("gn",),
        **_NORM,
    ),
)
add(
    F.layer_norm,
    C(
        "features",
        lambda m, h, x: F.layer_norm(h, (6,), m.ln.weight, m.ln.bias),
        "pinned",
        mods={"ln": partial(nn.LayerNorm, 6)},
        free=("ln",),
        **_NORM,
    ),
    C(
        "channels-last-2d",  # timm's LayerNorm2d: permute, normalise the channels, permute back
        lambda m, h, x: F.layer_norm(h.permute(0, 2, 3, 1), (4,), m.ln.weight, m.ln.bias).permute(0, 3, 1, 2),
        "pinned",
        "2d",
        mods={"ln": partial(nn.LayerNorm, 4)},
        free=("ln",),
        **_NORM,
    ),
    C("no-affine", lambda m, h, x: F.layer_norm(h, (6,)), "pinned", **_NORM),
)
if hasattr(F, "rms_norm"):
    add(
        F.rms_norm,
        C(
            "features",
            lambda m, h, x: F.rms_norm(h, (6,), m.ln.weight),
            "pinned",
            mods={"ln": partial(nn.RMSNorm, 6)},
            free=("ln",),
            **_NORM,
        ),
    )
add(
    nn.LayerNorm,
    C("features", OP, "pinned", op=partial(nn.LayerNorm, 6), free=("op",), **_NORM),
    C("last-axis-of-channels", OP, "pinned", "1d", op=partial(nn.LayerNorm, 8), free=("op",), **_NORM),
    C("chw", OP, "pinned", "2d", op=partial(nn.LayerNorm, [4, 6, 6]), free=("op",), **_NORM),
    C("no-affine", OP, "pinned", op=partial(nn.LayerNorm, 6, elementwise_affine=False), **_NORM),
    C("no-bias", OP, "pinned", op=partial(nn.LayerNorm, 6, bias=False), free=("op",), **_NORM),
)
if hasattr(nn, "RMSNorm"):
    add(
        nn.RMSNorm,
        C("features", OP, "pinned", op=partial(nn.RMSNorm, 6), free=("op",), **_NORM),
        C("chw", OP, "pinned", "2d", op=partial(nn.RMSNorm, [4, 6, 6], eps=1e-3), free=("op",), **_NORM),
        C("no-affine", OP, "pinned", op=partial(nn.RMSNorm, 6, elementwise_affine=False), **_NORM),
    )

# element-wise activations and dropouts -------------------------------------------------------------------------------
_ELEMENTWISE: list[tuple[type[nn.Module], str, tuple]] = [  # (type, kind, constructor args)
    (nn.Identity, "vec", ()), (nn.Dropout, "vec", (0.5,)), (nn.Dropout1d, "1d", (0.5,)), (nn.Dropout2d, "2d", (0.5,)),
    (nn.Dropout3d, "3d", (0.5,)), (nn.ReLU, "vec", ()), (nn.LeakyReLU, "vec", (0.2,)), (nn.RReLU, "vec", (0.1, 0.3)),
    (nn.ReLU6, "vec", ()), (nn.Hardtanh, "vec", (-0.5, 2.0)), (nn.ELU, "vec", (0.5,)), (nn.SELU, "vec", ()),
    (nn.CELU, "vec", (0.7,)), (nn.GELU, "vec", ()), (nn.SiLU, "vec", ()), (nn.Mish, "vec", ()),
    (nn.Sigmoid, "vec", ()), (nn.Tanh, "vec", ()), (nn.Softplus, "vec", (2.0, 1.0)), (nn.Softsign, "vec", ()),
    (nn.Hardswish, "vec", ()), (nn.Hardsigmoid, "vec", ()), (nn.LogSigmoid, "vec", ()), (nn.Tanhshrink, "vec", ()),
    (nn.Softshrink, "vec", (0.3,)), (nn.Hardshrink, "vec", (0.3,)), (nn.Threshold, "vec", (0.1, 20.0)),
    (nn.AlphaDropout, "vec", (0.5,)), (nn.FeatureAlphaDropout, "2d", (0.5,)),
]  # fmt: skip
for _cls, _k, _args in _ELEMENTWISE:
    add(_cls, C("chain", OP, "free", _k, op=partial(_cls, *_args)))
    if "inplace" in inspect.signature(_cls).parameters:
        _ip = partial(_cls, *_args, inplace=True)
        add(
            _cls,
            C("inplace", OP, "free", _k, op=_ip),
            # the op overwrites h, and h is read again: the original computes cat([f(h), f(h)])
            C("inplace-reread", REREAD, "either", _k, op=_ip),
        )
add(nn.ReLU, C("on-channels", OP, "free", "2d", op=nn.ReLU))
add(nn.GELU, C("tanh-approximation", OP, "free", op=partial(nn.GELU, approximate="tanh")))
add(nn.Softplus, C("default-threshold", OP, "free", op=nn.Softplus))
# one module object called at two places: a positively homogeneous one restricts tau > 0, any other merges the spaces
_SHARED: Fn = lambda m, h, x: torch.cat([m.op(h), m.op(m.aux(x))], 1)  # noqa: E731
add(nn.ReLU, C("shared", _SHARED, "free", op=nn.ReLU, aux=True, feeds=("pre", "aux"), positive=True))
add(nn.Tanh, C("shared", _SHARED, "free", op=nn.Tanh, aux=True, feeds=("pre", "aux")))

# channel-wise: pooling, upsampling, padding --------------------------------------------------------------------------
for _cls, _k, _args in [
    (nn.AvgPool1d, "1d", (2,)), (nn.AvgPool2d, "2d", (2,)), (nn.AvgPool3d, "3d", (2,)),
    (nn.AdaptiveAvgPool1d, "1d", (3,)), (nn.AdaptiveAvgPool2d, "2d", (2,)), (nn.AdaptiveAvgPool3d, "3d", (2,)),
    (nn.MaxPool1d, "1d", (2,)), (nn.MaxPool2d, "2d", (2,)), (nn.MaxPool3d, "3d", (2,)),
    (nn.AdaptiveMaxPool1d, "1d", (3,)), (nn.AdaptiveMaxPool2d, "2d", (2,)), (nn.AdaptiveMaxPool3d, "3d", (1,)),
    (nn.LPPool1d, "1d", (2, 2)), (nn.LPPool2d, "2d", (2, 2)),
    (nn.ZeroPad1d, "1d", (1,)), (nn.ZeroPad2d, "2d", (1,)), (nn.ZeroPad3d, "3d", (1,)),
    (nn.ReflectionPad1d, "1d", (2,)), (nn.ReflectionPad2d, "2d", (1,)), (nn.ReflectionPad3d, "3d", (1,)),
    (nn.ReplicationPad1d, "1d", (2,)), (nn.ReplicationPad2d, "2d", (1,)), (nn.ReplicationPad3d, "3d", (1,)),
    (nn.CircularPad1d, "1d", (2,)), (nn.CircularPad2d, "2d", (1,)), (nn.CircularPad3d, "3d", (1,)),
    (nn.ConstantPad1d, "1d", (1, 0.0)), (nn.ConstantPad2d, "2d", (1, 0.0)), (nn.ConstantPad3d, "3d", (1, 0.0)),
]:  # fmt: skip
    add(_cls, C("plain", OP, "free", _k, op=partial(_cls, *_args)))
add(
    nn.AvgPool1d,
    C("k3-s1-p1-exclude-pad", OP, "free", "1d", op=partial(nn.AvgPool1d, 3, 1, 1, count_include_pad=False)),
    C("window-over-features", OP, "pinned", op=partial(nn.AvgPool1d, 2)),  # (N, F): unbatched (C=N, L=F)
)
add(
    nn.AvgPool2d,
    C("k3x2-s1-p1-ceil", OP, "free", "2d", op=partial(nn.AvgPool2d, (3, 2), 1, 1, ceil_mode=True)),
    C("divisor-override", OP, "free", "2d", op=partial(nn.AvgPool2d, 2, divisor_override=3)),
    C("then-conv", OP, "free", "2d", op=partial(nn.AvgPool2d, 2), post=conv_post(2)),
    C("window-over-channels", OP, "pinned", "1d", op=partial(nn.AvgPool2d, 2)),  # (N, C, L): pools C and L
)
add(
    nn.AdaptiveAvgPool2d,
    C("global", OP, "free", "2d", op=partial(nn.AdaptiveAvgPool2d, 1)),
    C("2x3", OP, "free", "2d", op=partial(nn.AdaptiveAvgPool2d, (2, 3))),
    C("none-2", OP, "free", "2d", op=partial(nn.AdaptiveAvgPool2d, (None, 2))),
    C("window-over-channels", OP, "pinned", "1d", op=partial(nn.AdaptiveAvgPool2d, 2)),
)
add(
    nn.MaxPool1d,
    C("k3-s1-p1-dilation", OP, "free", "1d", op=partial(nn.MaxPool1d, 3, 1, 1, dilation=2)),
    C("maxout-over-features", OP, "pinned", op=partial(nn.MaxPool1d, 2)),  # (N, F): windows over features
)
add(
    nn.MaxPool2d,
    C("k3-s2-p1-ceil", OP, "free", "2d", op=partial(nn.MaxPool2d, 3, 2, 1, ceil_mode=True)),
    C("k2x1", OP, "free", "2d", op=partial(nn.MaxPool2d, (2, 1))),
    C("then-conv", OP, "free", "2d", op=partial(nn.MaxPool2d, 2), post=conv_post(2)),
    C("window-over-channels", OP, "pinned", "1d", op=partial(nn.MaxPool2d, 2)),
)
add(nn.MaxPool3d, C("k2-s1", OP, "free", "3d", op=partial(nn.MaxPool3d, 2, 1)))
add(nn.AdaptiveMaxPool1d, C("over-features", OP, "pinned", op=partial(nn.AdaptiveMaxPool1d, 3)))
add(nn.AdaptiveMaxPool2d, C("2x1", OP, "free", "2d", op=partial(nn.AdaptiveMaxPool2d, (2, 1))))
add(
    nn.LPPool1d,
    C("p4-k3-s1", OP, "free", "1d", op=partial(nn.LPPool1d, 4, 3, 1)),
    C("window-over-features", OP, "pinned", op=partial(nn.LPPool1d, 2, 2)),
)
add(
    nn.LPPool2d,
    C("p2-k2x3", OP, "free", "2d", op=partial(nn.LPPool2d, 2, (2, 3))),
    C("p1-ceil", OP, "free", "2d", op=partial(nn.LPPool2d, 1, 2, ceil_mode=True)),
    C("window-over-channels", OP, "pinned", "1d", op=partial(nn.LPPool2d, 2, 2)),
)
add(
    nn.Upsample,
    C("nearest-x2", OP, "free", "2d", op=partial(nn.Upsample, scale_factor=2)),
    C("nearest-size", OP, "free", "2d", op=partial(nn.Upsample, size=(9, 7))),
    C("nearest-x1.5", OP, "free", "2d", op=partial(nn.Upsample, scale_factor=1.5, mode="nearest")),
    C("nearest-exact", OP, "free", "2d", op=partial(nn.Upsample, scale_factor=2, mode="nearest-exact")),
    C("bilinear", OP, "free", "2d", op=partial(nn.Upsample, scale_factor=2, mode="bilinear")),
    C(
        "bilinear-align-corners",
        OP,
        "free",
        "2d",
        op=partial(nn.Upsample, scale_factor=2, mode="bilinear", align_corners=True),
    ),
    C("bicubic", OP, "free", "2d", op=partial(nn.Upsample, size=(8, 8), mode="bicubic")),
    C("linear-1d", OP, "free", "1d", op=partial(nn.Upsample, scale_factor=2, mode="linear")),
    C("trilinear-3d", OP, "free", "3d", op=partial(nn.Upsample, scale_factor=2, mode="trilinear")),
    C("then-conv", OP, "free", "2d", op=partial(nn.Upsample, scale_factor=2), post=conv_post(2)),
)
add(nn.UpsamplingNearest2d, C("x2", OP, "free", "2d", op=partial(nn.UpsamplingNearest2d, scale_factor=2)))
add(nn.UpsamplingBilinear2d, C("size", OP, "free", "2d", op=partial(nn.UpsamplingBilinear2d, size=(8, 9))))
add(
    nn.ZeroPad1d,
    C("asymmetric", OP, "free", "1d", op=partial(nn.ZeroPad1d, (2, 0))),
    C("crop", OP, "free", "1d", op=partial(nn.ZeroPad1d, (-1, 2))),
)
add(
    nn.ZeroPad2d,
    C("asymmetric-then-conv", OP, "free", "2d", op=partial(nn.ZeroPad2d, (1, 0, 2, 1)), post=conv_post(2)),
    C("over-channels", OP, "either", "1d", op=partial(nn.ZeroPad2d, 1), post=conv_post(1)),  # (N, C, L): pads C
)
add(nn.ReflectionPad2d, C("asymmetric", OP, "free", "2d", op=partial(nn.ReflectionPad2d, (1, 2, 0, 1))))
add(
    nn.ReplicationPad1d,
    C("asymmetric-then-conv", OP, "free", "1d", op=partial(nn.ReplicationPad1d, (0, 3)), post=conv_post(1)),
)
add(nn.CircularPad2d, C("asymmetric", OP, "free", "2d", op=partial(nn.CircularPad2d, (2, 0, 1, 1))))
add(
    nn.ConstantPad1d,
    C("value-0.5", OP, "free", "1d", op=partial(nn.ConstantPad1d, 1, 0.5)),  # non-zero: a module wrapper
    C("value-neg-then-conv", OP, "free", "1d", op=partial(nn.ConstantPad1d, (2, 1), -1.0), post=conv_post(1)),
)
add(nn.ConstantPad2d, C("value-2", OP, "free", "2d", op=partial(nn.ConstantPad2d, (1, 0, 0, 1), 2.0)))
add(nn.ConstantPad3d, C("value-0.5", OP, "free", "3d", op=partial(nn.ConstantPad3d, 1, 0.5)))

add(
    nn.PReLU,
    C("scalar", OP, "free", op=nn.PReLU, positive=True),
    C("per-feature", OP, "free", op=partial(nn.PReLU, 6, 0.1), positive=True),
    C("per-channel", OP, "free", "2d", op=partial(nn.PReLU, 4), positive=True),
)


def _teleported(inner: Callable[[], nn.Module]) -> Callable[[], tuple[nn.Module, Tensor, Tensor]]:
    """A model holding a wrapper of an earlier teleport (inter sampling: every factor needs one)."""

    def build() -> tuple[nn.Module, Tensor, Tensor]:
        m, x, x2 = net("vec", OP, mods={"op": inner})()
        v = nt.teleport(m, x, cob_range=0.9, sampling="inter", generator=torch.Generator().manual_seed(5))
        assert isinstance(v.op, nt.TeleportedActivation), type(v.op)
        return copy.deepcopy(v), x, x2  # a new object: analysed afresh, not the plan registered for `v`

    return build


add(
    nt.TeleportedActivation,
    Case("tanh", _teleported(nn.Tanh), "free"),
    Case("relu", _teleported(nn.ReLU), "free"),
    Case("leaky-relu", _teleported(partial(nn.LeakyReLU, 0.1)), "free"),
)

# rearrangement modules ---------------------------------------------------------------------------------------------
add(
    nn.Flatten,
    C("chw", OP, "free", "2d", op=nn.Flatten),
    C("start-dim-2", OP, "free", "2d", op=partial(nn.Flatten, 2)),
)
add(
    nn.Unflatten,
    C("features", OP, "free", op=partial(nn.Unflatten, 1, (2, 3))),
    # the factors vary along axis 1, which the Linear (over the last axis) does not read: pinned
    C(
        "then-linear-last-axis",
        OP,
        "pinned",
        op=partial(nn.Unflatten, 1, (2, 3)),
        post=linear_post,
        reason="unsupported",
    ),
)
add(
    nn.PixelShuffle,
    C("r2", OP, "free", "2d", op=partial(nn.PixelShuffle, 2), width=8),
    # after the shuffle the factors vary over space: a convolution cannot take them (pinned, exact)
    C(
        "then-conv",
        OP,
        "pinned",
        "2d",
        op=partial(nn.PixelShuffle, 2),
        width=8,
        post=conv_post(2),
        reason="unsupported",
    ),
)
add(nn.PixelUnshuffle, C("r2", OP, "free", "2d", op=partial(nn.PixelUnshuffle, 2)))
add(
    nn.ChannelShuffle,
    C("g2", OP, "free", "2d", op=partial(nn.ChannelShuffle, 2)),
    C("g2-then-conv", OP, "free", "2d", op=partial(nn.ChannelShuffle, 2), post=conv_post(2)),
)

# ================================================================================================== function rules
# positively homogeneous functions: with functional="constrain" a call holds no wrapper, so tau > 0 ------------------
_POS = {"positive": True}
add(
    F.relu,
    C("plain", lambda m, h, x: F.relu(h), "free", **_POS),
    C("inplace", lambda m, h, x: F.relu(h, inplace=True), "free", **_POS),
    C("keyword-input", lambda m, h, x: F.relu(input=h), "free", **_POS),
    C("on-channels", lambda m, h, x: F.relu(h), "free", "2d", **_POS),
)
add(torch.relu, C("plain", lambda m, h, x: torch.relu(h), "free", **_POS))
add(
    torch.relu_,  # the same object as F.relu_
    C("torch", lambda m, h, x: torch.relu_(h), "free", **_POS),
    C("F", lambda m, h, x: F.relu_(h), "free", **_POS),
    C("statement", lambda m, h, x: (torch.relu_(h), h)[1], "free", **_POS),
)
add(
    F.leaky_relu,
    C("slope", lambda m, h, x: F.leaky_relu(h, 0.2), "free", **_POS),
    C("keywords-inplace", lambda m, h, x: F.leaky_relu(h, negative_slope=0.1, inplace=True), "free", **_POS),
)
add(F.leaky_relu_, C("slope", lambda m, h, x: F.leaky_relu_(h, 0.2), "free", **_POS))
add(
    F.rrelu,
    C("eval", lambda m, h, x: F.rrelu(h), "free", **_POS),
    C("training", lambda m, h, x: F.rrelu(h, 0.1, 0.3, training=True), "free", **_POS),
    C("follows-mode", lambda m, h, x: F.rrelu(h, training=m.training), "free", **_POS),
)
add(F.rrelu_, C("training", lambda m, h, x: F.rrelu_(h, 0.1, 0.3, training=True), "free", **_POS))
add(
    F.max_pool1d,
    C("k2", lambda m, h, x: F.max_pool1d(h, 2), "free", "1d", **_POS),
    C("keywords", lambda m, h, x: F.max_pool1d(h, kernel_size=3, stride=1, padding=1), "free", "1d", **_POS),
    C("over-features", lambda m, h, x: F.max_pool1d(h, 2), "pinned"),  # (N, F): windows over features
)
add(
    F.max_pool2d,
    C("k2", lambda m, h, x: F.max_pool2d(h, 2), "free", "2d", **_POS),
    C("k2x1-ceil", lambda m, h, x: F.max_pool2d(h, (2, 1), ceil_mode=True), "free", "2d", **_POS),
    C("window-over-channels", lambda m, h, x: F.max_pool2d(h, 2), "pinned", "1d"),
)
add(F.max_pool3d, C("k2", lambda m, h, x: F.max_pool3d(h, 2), "free", "3d", **_POS))
add(
    torch.max_pool1d,
    C("k2", lambda m, h, x: torch.max_pool1d(h, 2), "free", "1d", **_POS),
    C("keyword-kernel", lambda m, h, x: torch.max_pool1d(h, kernel_size=3, stride=2), "free", "1d", **_POS),
)
add(
    torch.max_pool2d,
    C("k2-s2", lambda m, h, x: torch.max_pool2d(h, 2, 2), "free", "2d", **_POS),
    C("k3-s1-p1", lambda m, h, x: torch.max_pool2d(h, 3, 1, 1), "free", "2d", **_POS),
)
add(torch.max_pool3d, C("k2", lambda m, h, x: torch.max_pool3d(h, 2), "free", "3d", **_POS))
add(F.adaptive_max_pool1d, C("3", lambda m, h, x: F.adaptive_max_pool1d(h, 3), "free", "1d", **_POS))
add(F.adaptive_max_pool2d, C("2x3", lambda m, h, x: F.adaptive_max_pool2d(h, (2, 3)), "free", "2d", **_POS))
add(F.adaptive_max_pool3d, C("1", lambda m, h, x: F.adaptive_max_pool3d(h, 1), "free", "3d", **_POS))
add(
    F.lp_pool1d,
    C("p2-k2", lambda m, h, x: F.lp_pool1d(h, 2, 2), "free", "1d", **_POS),
    C("keywords", lambda m, h, x: F.lp_pool1d(h, norm_type=4, kernel_size=3, stride=1), "free", "1d", **_POS),
)
add(
    F.lp_pool2d,
    C("p2-k2", lambda m, h, x: F.lp_pool2d(h, 2, 2), "free", "2d", **_POS),
    C("window-over-channels", lambda m, h, x: F.lp_pool2d(h, 2, 2), "pinned", "1d"),
)

# linear functions: dropout, average pooling, interpolation ---------------------------------------------------------
add(
    F.dropout,
    C("default-training", lambda m, h, x: F.dropout(h, 0.5), "free"),
    C("follows-mode", lambda m, h, x: F.dropout(h, p=0.3, training=m.training), "free"),
    C("inplace", lambda m, h, x: F.dropout(h, 0.5, inplace=True), "free"),
)
add(F.dropout1d, C("plain", lambda m, h, x: F.dropout1d(h, 0.5), "free", "1d"))
add(F.dropout2d, C("plain", lambda m, h, x: F.dropout2d(h, 0.5, training=m.training), "free", "2d"))
add(F.dropout3d, C("plain", lambda m, h, x: F.dropout3d(h, 0.5), "free", "3d"))
add(
    torch.dropout,
    C("positional", lambda m, h, x: torch.dropout(h, 0.5, True), "free"),
    C("keyword-train", lambda m, h, x: torch.dropout(h, 0.5, train=m.training), "free"),
)
add(
    torch.avg_pool1d,  # the same object as F.avg_pool1d
    C("k2", lambda m, h, x: F.avg_pool1d(h, 2), "free", "1d"),
    C("k3-s1-p1-exclude-pad", lambda m, h, x: torch.avg_pool1d(h, 3, 1, 1, count_include_pad=False), "free", "1d"),
)
add(
    F.avg_pool2d,
    C("k2", lambda m, h, x: F.avg_pool2d(h, 2), "free", "2d"),
    C("k3-s1-p1-divisor", lambda m, h, x: F.avg_pool2d(h, 3, stride=1, padding=1, divisor_override=2), "free", "2d"),
    C("window-over-channels", lambda m, h, x: F.avg_pool2d(h, 2), "pinned", "1d"),
)
add(F.avg_pool3d, C("k2", lambda m, h, x: F.avg_pool3d(h, 2), "free", "3d"))
add(torch.adaptive_avg_pool1d, C("3", lambda m, h, x: F.adaptive_avg_pool1d(h, 3), "free", "1d"))
add(
    F.adaptive_avg_pool2d,
    C("global", lambda m, h, x: F.adaptive_avg_pool2d(h, 1), "free", "2d"),
    C("keyword-output-size", lambda m, h, x: F.adaptive_avg_pool2d(h, output_size=(2, 3)), "free", "2d"),
)
add(F.adaptive_avg_pool3d, C("2", lambda m, h, x: F.adaptive_avg_pool3d(h, 2), "free", "3d"))
add(
    F.interpolate,
    C("nearest-x2", lambda m, h, x: F.interpolate(h, scale_factor=2), "free", "2d"),
    C(
        "bilinear-align-corners",
        lambda m, h, x: F.interpolate(h, size=(8, 9), mode="bilinear", align_corners=True),
        "free",
        "2d",
    ),
    C("bicubic", lambda m, h, x: F.interpolate(h, scale_factor=1.5, mode="bicubic"), "free", "2d"),
    C("area-down", lambda m, h, x: F.interpolate(h, size=(3, 2), mode="area"), "free", "2d"),
    C(
        "bilinear-antialias-down",
        lambda m, h, x: F.interpolate(h, scale_factor=0.5, mode="bilinear", antialias=True),
        "free",
        "2d",
    ),
    C("nearest-exact-1d", lambda m, h, x: F.interpolate(h, scale_factor=2, mode="nearest-exact"), "free", "1d"),
    C("linear-1d", lambda m, h, x: F.interpolate(h, size=11, mode="linear"), "free", "1d"),
    C("trilinear-3d", lambda m, h, x: F.interpolate(h, scale_factor=2, mode="trilinear"), "free", "3d"),
)
add(F.interpolate, C("via-F.upsample", lambda m, h, x: F.upsample(h, scale_factor=2), "free", "2d"))  # traced through

# non-homogeneous functions: pinned with functional="constrain" (no per-call wrapper; the default "rewrite" frees) -
_FN = {"reason": "functional"}
add(
    F.gelu,
    C("plain", lambda m, h, x: F.gelu(h), "pinned", **_FN),
    C("tanh-approximation", lambda m, h, x: F.gelu(h, approximate="tanh"), "pinned", **_FN),
)
add(
    F.silu,
    C("plain", lambda m, h, x: F.silu(h), "pinned", **_FN),
    C("inplace", lambda m, h, x: F.silu(h, inplace=True), "pinned", **_FN),
)
add(
    F.elu,
    C("alpha", lambda m, h, x: F.elu(h, 0.5), "pinned", **_FN),
    C("inplace", lambda m, h, x: F.elu(h, inplace=True), "pinned", **_FN),
)
add(F.selu, C("plain", lambda m, h, x: F.selu(h), "pinned", **_FN))
add(F.celu, C("alpha", lambda m, h, x: F.celu(h, alpha=0.7), "pinned", **_FN))
add(
    F.relu6,
    C("plain", lambda m, h, x: F.relu6(h), "pinned", **_FN),
    C("inplace", lambda m, h, x: F.relu6(h, inplace=True), "pinned", **_FN),
)
add(
    F.hardtanh,
    C("range", lambda m, h, x: F.hardtanh(h, -0.5, 0.5), "pinned", **_FN),
    C("keywords", lambda m, h, x: F.hardtanh(h, min_val=-2.0, max_val=0.3), "pinned", **_FN),
)
add(F.hardswish, C("plain", lambda m, h, x: F.hardswish(h), "pinned", **_FN))
add(F.hardsigmoid, C("plain", lambda m, h, x: F.hardsigmoid(h), "pinned", **_FN))
add(F.mish, C("plain", lambda m, h, x: F.mish(h), "pinned", **_FN))
add(F.softplus, C("beta-threshold", lambda m, h, x: F.softplus(h, beta=2.0, threshold=1.0), "pinned", **_FN))
add(F.softsign, C("plain", lambda m, h, x: F.softsign(h), "pinned", **_FN))
add(F.logsigmoid, C("plain", lambda m, h, x: F.logsigmoid(h), "pinned", **_FN))
add(F.tanhshrink, C("plain", lambda m, h, x: F.tanhshrink(h), "pinned", **_FN))
add(F.softshrink, C("lambda", lambda m, h, x: F.softshrink(h, 0.3), "pinned", **_FN))
add(F.hardshrink, C("lambda", lambda m, h, x: F.hardshrink(h, lambd=0.3), "pinned", **_FN))
add(F.threshold, C("threshold-value", lambda m, h, x: F.threshold(h, 0.1, 20.0), "pinned", **_FN))
add(torch.tanh, C("plain", lambda m, h, x: torch.tanh(h), "pinned", **_FN))
add(torch.sigmoid, C("plain", lambda m, h, x: torch.sigmoid(h), "pinned", **_FN))
add("tanh", C("via-F.tanh", lambda m, h, x: F.tanh(h), "pinned", **_FN))  # F.tanh is traced through
add("sigmoid", C("via-F.sigmoid", lambda m, h, x: F.sigmoid(h), "pinned", **_FN))  # F.sigmoid is traced through
add(F.elu_, C("plain", lambda m, h, x: F.elu_(h), "pinned", **_FN))
add(torch.selu, C("plain", lambda m, h, x: torch.selu(h), "pinned", **_FN))
add(torch.celu, C("alpha", lambda m, h, x: torch.celu(h, 0.7), "pinned", **_FN))

add(
    F.pad,
    C("zero-positional", lambda m, h, x: F.pad(h, (1, 2)), "free", "1d"),
    C("constant-0-explicit", lambda m, h, x: F.pad(h, (1, 1), "constant", 0.0), "free", "1d"),
    C("value-none", lambda m, h, x: F.pad(h, (1, 1), value=None), "free", "1d"),
    C("value-0.5-keyword", lambda m, h, x: F.pad(h, (1, 1), value=0.5), "pinned", "1d", **_FN),
    C("value-neg-positional", lambda m, h, x: F.pad(h, (0, 1, 1, 0), "constant", -1.0), "pinned", "2d", **_FN),
    C("reflect", lambda m, h, x: F.pad(h, (2, 1), mode="reflect"), "free", "1d"),
    C("reflect-2d", lambda m, h, x: F.pad(h, (1, 1, 2, 0), "reflect"), "free", "2d"),
    C("replicate-3d", lambda m, h, x: F.pad(h, (1,) * 6, mode="replicate"), "free", "3d"),
    C("circular-keywords", lambda m, h, x: F.pad(h, pad=(1, 1), mode="circular"), "free", "1d"),
    C("keyword-input", lambda m, h, x: F.pad(input=h, pad=(1, 1)), "free", "1d"),
    C("then-conv", lambda m, h, x: F.pad(h, (1, 1, 1, 1), mode="replicate"), "free", "2d", post=conv_post(2)),
    # padding the channel (or feature) axis: the padded neurons are constant, the others may stay free
    C("over-channels-then-conv", lambda m, h, x: F.pad(h, (0, 0, 1, 1)), "either", "1d", post=conv_post(1)),
    C("over-features-then-linear", lambda m, h, x: F.pad(h, (1, 1)), "either"),
)

# arithmetic --------------------------------------------------------------------------------------------------------
_AUX = {"aux": True}
_BOTH = {"aux": True, "feeds": ("pre", "aux")}


def _h2(m: Any, x: Tensor) -> Tensor:
    return m.aux(x)


def _iadd(m: Any, h: Tensor, x: Tensor) -> Tensor:
    h += m.aux(x)
    return h


def _isub(m: Any, h: Tensor, x: Tensor) -> Tensor:
    h -= m.aux(x)
    return h


def _imul(m: Any, h: Tensor, x: Tensor) -> Tensor:
    h *= 2.0
    return h


def _itruediv(m: Any, h: Tensor, x: Tensor) -> Tensor:
    h /= 2.0
    return h


add(
    operator.add,
    C("residual", lambda m, h, x: h + _h2(m, x), "free", **_BOTH),
    C(
        "residual-broadcast",
        lambda m, h, x: h + m.gate(h.mean((2, 3), keepdim=True)),
        "free",
        "2d",
        mods={"gate": partial(nn.Conv2d, 4, 4, 1)},
        free=("gate",),
    ),
    C("zero", lambda m, h, x: h + 0.0, "free"),
    C("number", lambda m, h, x: h + 1.5, "pinned", reason="constant"),
    C("number-left", lambda m, h, x: 1.5 + h, "pinned", reason="constant"),
    C("constant-tensor", lambda m, h, x: h + m.c, "pinned", const=True, reason="constant"),
    # tuples of chunks concatenated with `+`, then joined: a rearrangement, exact and free
    C("tuple-of-chunks", lambda m, h, x: torch.cat(h.chunk(2, 1) + _h2(m, x).chunk(2, 1), 1), "free", **_BOTH),
)
add(operator.add, C("augmented-residual", _iadd, "free", **_BOTH))  # fx records `h += y` as operator.add
add(
    torch.add,
    C("residual", lambda m, h, x: torch.add(h, _h2(m, x)), "free", **_BOTH),
    C("alpha", lambda m, h, x: torch.add(h, _h2(m, x), alpha=0.5), "free", **_BOTH),
    C("keywords", lambda m, h, x: torch.add(input=h, other=_h2(m, x)), "free", **_BOTH),
    C("number", lambda m, h, x: torch.add(h, 1.0), "pinned", reason="constant"),
)
add(
    operator.sub,
    C("residual", lambda m, h, x: h - _h2(m, x), "free", **_BOTH),
    C("zero", lambda m, h, x: h - 0.0, "free"),
    C("number-left", lambda m, h, x: 1.0 - h, "pinned", reason="constant"),
)
add(operator.sub, C("augmented-residual", _isub, "free", **_BOTH))
add(
    torch.sub,
    C("residual", lambda m, h, x: torch.sub(h, _h2(m, x)), "free", **_BOTH),
    C("alpha", lambda m, h, x: torch.sub(h, _h2(m, x), alpha=2.0), "free", **_BOTH),
    C("number", lambda m, h, x: torch.sub(h, 0.5), "pinned", reason="constant"),
)
add(
    operator.mul,
    C("number", lambda m, h, x: h * 2.0, "free"),
    C("number-left", lambda m, h, x: -3.0 * h, "free"),
    C("constant-tensor", lambda m, h, x: h * m.c, "free", const=True),
    C("gate", lambda m, h, x: h * torch.sigmoid(_h2(m, x)), "free", pinned=("aux",), reason="functional", **_AUX),
    C("hidden-product", lambda m, h, x: h * _h2(m, x), "free", pinned=("aux",), reason="gate", **_AUX),
    C(
        "squeeze-excite",
        lambda m, h, x: h * m.gate(h.mean((2, 3), keepdim=True)),
        "free",
        "2d",
        mods={"gate": partial(nn.Conv2d, 4, 4, 1)},
        pinned=("gate",),
        reason="gate",
    ),
)
add(operator.mul, C("augmented-number", _imul, "free"))
add(
    torch.mul,
    C("number", lambda m, h, x: torch.mul(h, 2.0), "free"),
    C("hidden-product", lambda m, h, x: torch.mul(h, _h2(m, x)), "free", pinned=("aux",), reason="gate", **_AUX),
    C("keywords", lambda m, h, x: torch.mul(input=h, other=2.0), "free"),
)
add(
    operator.truediv,
    C("number", lambda m, h, x: h / 2.0, "free"),
    C("hidden-denominator", lambda m, h, x: h / (_h2(m, x).abs() + 1.0), "free", pinned=("aux",), **_AUX),
    C("number-over-hidden", lambda m, h, x: 1.0 / (h.abs() + 1.0), "pinned"),
    C("constant-tensor", lambda m, h, x: h / (m.c.abs() + 1.0), "free", const=True),
)
add(operator.truediv, C("augmented-number", _itruediv, "free"))
add(
    torch.div,
    C("number", lambda m, h, x: torch.div(h, 2.0), "free"),
    C("rounding-none", lambda m, h, x: torch.div(h, 2.0, rounding_mode=None), "free"),
    C("rounding-floor", lambda m, h, x: torch.div(h * 10, 3.0, rounding_mode="floor"), "pinned"),
    C("rounding-trunc", lambda m, h, x: torch.div(h * 10, 3.0, rounding_mode="trunc"), "pinned"),
    C("keywords", lambda m, h, x: torch.div(input=h, other=2.0), "free"),
    C("hidden-denominator", lambda m, h, x: torch.div(h, _h2(m, x).abs() + 1.0), "free", pinned=("aux",), **_AUX),
)
add(operator.neg, C("plain", lambda m, h, x: -h, "free"))
add(torch.neg, C("plain", lambda m, h, x: torch.neg(h), "free"))

# reductions ----------------------------------------------------------------------------------------------------------
add(
    torch.mean,
    C("spatial", lambda m, h, x: torch.mean(h, (2, 3)), "free", "2d"),
    C("keywords-keepdim", lambda m, h, x: torch.mean(h, dim=(-1, -2), keepdim=True), "free", "2d"),
    C("one-spatial-axis", lambda m, h, x: torch.mean(h, 2), "free", "2d"),
    C("over-features", lambda m, h, x: torch.mean(h, 1, keepdim=True), "pinned"),
    C("all-axes-subtracted", lambda m, h, x: h - torch.mean(h), "pinned"),
    C("empty-dim-keepdim", lambda m, h, x: h - torch.mean(h, dim=[], keepdim=True), "pinned"),
)
add(
    torch.sum,
    C("spatial", lambda m, h, x: torch.sum(h, (2, 3)), "free", "2d"),
    C("keyword-dim-list", lambda m, h, x: torch.sum(h, dim=[2, 3, 4]), "free", "3d"),
    C("over-features", lambda m, h, x: torch.sum(h, dim=1, keepdim=True), "pinned"),
    C("empty-dim-keepdim", lambda m, h, x: h - torch.sum(h, dim=[], keepdim=True), "pinned"),
)

# rearrangements ------------------------------------------------------------------------------------------------------
add(
    torch.flatten,
    C("start-1", lambda m, h, x: torch.flatten(h, 1), "free", "2d"),
    C("keyword-start-end", lambda m, h, x: torch.flatten(h, start_dim=2, end_dim=3), "free", "2d"),
)
add(
    torch.reshape,
    C("split-features", lambda m, h, x: torch.reshape(h, (-1, 3, 2)), "free"),
    C("keyword-shape", lambda m, h, x: torch.reshape(h, shape=(h.shape[0], 4, 36)), "free", "2d"),
)
add(
    torch.permute,
    C("channels-last", lambda m, h, x: torch.permute(h, (0, 2, 3, 1)), "free", "2d"),
    C("channels-last-then-linear", lambda m, h, x: torch.permute(h, (0, 2, 1)), "free", "1d", post=linear_post),
)
add(
    torch.transpose,
    C("1-2", lambda m, h, x: torch.transpose(h, 1, 2), "free", "1d"),
    C("negative-dims", lambda m, h, x: torch.transpose(h, -1, -3), "free", "2d"),
)
add(
    torch.squeeze,
    C("dim", lambda m, h, x: torch.squeeze(h[:, :, None], 2), "free"),
    C("all", lambda m, h, x: torch.squeeze(h[:, None, :, None]), "free"),
    C("dims-tuple", lambda m, h, x: torch.squeeze(h[:, None, :, None], (1, 3)), "free"),
)
add(
    torch.unsqueeze,
    C("dim-1", lambda m, h, x: torch.unsqueeze(h, 1), "free"),
    C("keyword-last", lambda m, h, x: torch.unsqueeze(h, dim=-1), "free", "1d"),
)
add(
    torch.cat,
    C("features", lambda m, h, x: torch.cat([h, _h2(m, x)], 1), "free", **_BOTH),
    C("channels-then-conv", lambda m, h, x: torch.cat((h, _h2(m, x)), dim=1), "free", "2d", post=conv_post(2), **_BOTH),
    C("spatial", lambda m, h, x: torch.cat([h, _h2(m, x)], dim=-1), "free", "1d", **_BOTH),
)
add(torch.concat, C("features", lambda m, h, x: torch.concat([_h2(m, x), h], dim=1), "free", **_BOTH))
add(
    torch.stack,
    C("dim-1", lambda m, h, x: torch.stack([h, _h2(m, x)], 1), "free", **_BOTH),
    C("keyword-last", lambda m, h, x: torch.stack((h, _h2(m, x)), dim=-1), "free", "2d", **_BOTH),
)


def _swap(parts: Any, n: int = 2) -> Tensor:
    """Join ``n`` parts in reverse order (indexing, not iteration: the parts may be a traced tuple)."""
    return torch.cat([parts[i] for i in reversed(range(n))], 1)


add(
    torch.chunk,
    C("2", lambda m, h, x: _swap(torch.chunk(h, 2, 1)), "free"),
    C("keywords-3", lambda m, h, x: _swap(torch.chunk(h, chunks=3, dim=1), 3), "free"),
    C("spatial", lambda m, h, x: torch.chunk(h, 2, dim=2)[1], "free", "2d"),
)
add(
    torch.split,
    C("sections", lambda m, h, x: _swap(torch.split(h, [2, 4], 1)), "free"),
    C("size-keyword-dim", lambda m, h, x: _swap(torch.split(h, 2, dim=1), 3), "free"),
)
add(
    torch.unbind,
    C("channels", lambda m, h, x: torch.stack(torch.unbind(h, 1)[::-1], 1), "free", "2d"),
    C("keyword-dim", lambda m, h, x: torch.unbind(h, dim=2)[0], "free", "2d"),
)
add(
    torch.flip,
    C("features", lambda m, h, x: torch.flip(h, [1]), "free"),
    C("keyword-spatial", lambda m, h, x: torch.flip(h, dims=(2, 3)), "free", "2d"),
)
add(
    torch.roll,
    C("features", lambda m, h, x: torch.roll(h, 1, 1), "free"),
    C("keywords-spatial", lambda m, h, x: torch.roll(h, shifts=(1, -2), dims=(2, 3)), "free", "2d"),
    C("channels-then-conv", lambda m, h, x: torch.roll(h, 1, dims=1), "free", "2d", post=conv_post(2)),
    C("flat-no-dims", lambda m, h, x: torch.roll(h, 2), "free"),
    C("batch-axis", lambda m, h, x: torch.roll(h, 1, 0), "free"),
)
add(
    torch.narrow,
    C("features", lambda m, h, x: torch.narrow(h, 1, 1, 4), "free"),
    C("keywords-spatial", lambda m, h, x: torch.narrow(h, dim=2, start=1, length=3), "free", "2d"),
)
add(
    torch.select,
    C("channel", lambda m, h, x: torch.select(h, 1, 0), "free", "2d"),
    C("spatial", lambda m, h, x: torch.select(h, 2, 1), "free", "2d"),
)
add(
    torch.movedim,
    C("channels-last", lambda m, h, x: torch.movedim(h, 1, -1), "free", "2d"),
    C("tuples", lambda m, h, x: torch.movedim(h, (1, 2), (3, 1)), "free", "2d"),
)
add(torch.swapaxes, C("1-3", lambda m, h, x: torch.swapaxes(h, 1, 3), "free", "2d"))
add(torch.t, C("twice", lambda m, h, x: torch.t(torch.t(h)), "free"))
add(
    operator.getitem,
    C("slice", lambda m, h, x: h[:, 1:5], "free"),
    C("index-list", lambda m, h, x: h[:, [0, 2, 5]], "free"),
    C("index-tensor", lambda m, h, x: h[:, torch.tensor([5, 0, 1, 1])], "free"),
    C("ellipsis-step", lambda m, h, x: h[..., ::2], "free", "2d"),
    C("none", lambda m, h, x: h[:, None], "free"),
    C("channel-spatial-int", lambda m, h, x: h[:, 1:, 2], "free", "2d"),
)
add(
    torch.unflatten,
    C("features", lambda m, h, x: torch.unflatten(h, 1, (2, 3)), "free"),
    C("negative-dim", lambda m, h, x: torch.unflatten(h, -1, (3, 2)), "free", "2d"),
)
add(
    F.pixel_shuffle,  # the same object as torch.pixel_shuffle
    C("r2", lambda m, h, x: F.pixel_shuffle(h, 2), "free", "2d", width=8),
)
add(F.pixel_unshuffle, C("r2", lambda m, h, x: F.pixel_unshuffle(h, 2), "free", "2d"))
add(
    torch.channel_shuffle,
    C("g2", lambda m, h, x: torch.channel_shuffle(h, 2), "free", "2d"),
    C("g2-then-conv", lambda m, h, x: torch.channel_shuffle(h, 2), "free", "2d", post=conv_post(2)),
)
add(
    torch.tile,
    C("features", lambda m, h, x: torch.tile(h, (1, 2)), "free"),
    C("short-reps", lambda m, h, x: torch.tile(h, (2,)), "free"),
)
add(
    torch.clone,
    C("plain", lambda m, h, x: torch.clone(h), "free"),
    C("memory-format", lambda m, h, x: torch.clone(h, memory_format=torch.contiguous_format), "free", "2d"),
)
add(
    builtins.getattr,
    C("T-twice", lambda m, h, x: h.T.T, "free"),
    C("mT", lambda m, h, x: h.mT, "free", "1d"),
    C("shape", lambda m, h, x: h.view(h.shape[0], 3, 2), "free"),
)
add(builtins.len, C("batch-size", lambda m, h, x: h.view(len(h), 3, 2), "free"))

# ==================================================================================================== method rules
add(
    "relu",
    C("plain", lambda m, h, x: h.relu(), "free", **_POS),
    C("on-channels", lambda m, h, x: h.relu(), "free", "2d", **_POS),
)
add(
    "relu_",
    C("value", lambda m, h, x: h.relu_(), "free", **_POS),
    C("statement", lambda m, h, x: (h.relu_(), h)[1], "free", **_POS),
)


def _softplus(m: Any, h: Tensor) -> Tensor:
    return m.sp(h)  # positive values (log, sqrt) from an activation module whose wrapper keeps the space


_SP = {"mods": {"sp": nn.Softplus}}
for _name, _call, _torch_call, _kw in [
    ("sigmoid", lambda h: h.sigmoid(), None, {}),
    ("sigmoid_", lambda h: h.sigmoid_(), lambda h: torch.sigmoid_(h), {}),
    ("tanh", lambda h: h.tanh(), None, {}),
    ("tanh_", lambda h: h.tanh_(), lambda h: torch.tanh_(h), {}),
    ("exp", lambda h: h.exp(), lambda h: torch.exp(h), {}),
    ("abs", lambda h: h.abs(), lambda h: torch.abs(h), {}),
    ("clamp", lambda h: h.clamp(-0.5, 0.5), lambda h: torch.clamp(h, max=0.5), {}),
    ("clamp_", lambda h: h.clamp_(min=-0.2), lambda h: torch.clamp_(h, -0.5, 0.5), {}),
    ("clip", lambda h: h.clip(-0.5, 0.5), lambda h: torch.clip(h, min=-0.5), {}),
    ("pow", lambda h: h.pow(3), lambda h: torch.pow(h, 2), {}),
]:
    add(_name, C("method", lambda m, h, x, f=_call: f(h), "pinned", **_FN))
    if _torch_call is not None:
        _fn = getattr(torch, _name)
        add(
            _fn,
            C("torch-function", lambda m, h, x, f=_torch_call: f(h), "pinned", node=("call_function", _fn), **_FN),
        )
add("log", C("method", lambda m, h, x: _softplus(m, h).log(), "pinned", **_SP, **_FN))
add(
    torch.log,
    C(
        "torch-function",
        lambda m, h, x: torch.log(_softplus(m, h)),
        "pinned",
        node=("call_function", torch.log),
        **_SP,
        **_FN,
    ),
)
add("sqrt", C("method", lambda m, h, x: _softplus(m, h).sqrt(), "pinned", **_SP, **_FN))
add(
    torch.sqrt,
    C(
        "torch-function",
        lambda m, h, x: torch.sqrt(_softplus(m, h)),
        "pinned",
        node=("call_function", torch.sqrt),
        **_SP,
        **_FN,
    ),
)
add("clamp", C("min-only", lambda m, h, x: h.clamp(min=0.0), "pinned", **_FN))
add("clamp_", C("statement", lambda m, h, x: (h.clamp_(-0.5, 0.5), h)[1], "pinned", **_FN))
add("pow", C("square", lambda m, h, x: h.pow(2), "pinned", **_FN))
add("sigmoid", C("gate", lambda m, h, x: h * _h2(m, x).sigmoid(), "free", pinned=("aux",), **_FN, **_AUX))

add(
    "add",
    C("residual", lambda m, h, x: h.add(_h2(m, x)), "free", **_BOTH),
    C("alpha", lambda m, h, x: h.add(_h2(m, x), alpha=0.5), "free", **_BOTH),
    C("keyword-other", lambda m, h, x: h.add(other=_h2(m, x)), "free", **_BOTH),
    C("number", lambda m, h, x: h.add(1.0), "pinned", reason="constant"),
)
add(
    "add_",
    C("value", lambda m, h, x: h.add_(_h2(m, x)), "free", **_BOTH),
    C("statement", lambda m, h, x: (h.add_(_h2(m, x)), h)[1], "free", **_BOTH),
    C("zero", lambda m, h, x: h.add_(0.0), "free"),
    C("number-statement", lambda m, h, x: (h.add_(0.5), h)[1], "pinned", reason="constant"),
)
add(
    "sub",
    C("residual", lambda m, h, x: h.sub(_h2(m, x)), "free", **_BOTH),
    C("number", lambda m, h, x: h.sub(1.0), "pinned", reason="constant"),
)
add("sub_", C("statement", lambda m, h, x: (h.sub_(_h2(m, x), alpha=2.0), h)[1], "free", **_BOTH))
add(
    "mul",
    C("number", lambda m, h, x: h.mul(2.0), "free"),
    C("hidden-product", lambda m, h, x: h.mul(_h2(m, x)), "free", pinned=("aux",), reason="gate", **_AUX),
)
add(
    "mul_",
    C("statement", lambda m, h, x: (h.mul_(2.0), h)[1], "free"),
    C("hidden-product", lambda m, h, x: h.mul_(_h2(m, x)), "free", pinned=("aux",), reason="gate", **_AUX),
)
add(
    "div",
    C("number", lambda m, h, x: h.div(2.0), "free"),
    C("hidden-denominator", lambda m, h, x: h.div(_h2(m, x).abs() + 1.0), "free", pinned=("aux",), **_AUX),
    C("rounding-trunc", lambda m, h, x: (h * 10).div(3.0, rounding_mode="trunc"), "pinned"),
)
add(
    "div_",
    C("statement", lambda m, h, x: (h.div_(2.0), h)[1], "free"),
    C("rounding-floor", lambda m, h, x: (h * 10).div_(3.0, rounding_mode="floor"), "pinned"),
)
add("neg", C("plain", lambda m, h, x: h.neg(), "free"))
add(
    "mean",
    C("spatial", lambda m, h, x: h.mean((2, 3)), "free", "2d"),
    C("keywords-keepdim", lambda m, h, x: h.mean(dim=-1, keepdim=True), "free", "2d"),
    C("over-features", lambda m, h, x: h.mean(1, keepdim=True), "pinned"),
    C("all-axes-subtracted", lambda m, h, x: h - h.mean(), "pinned"),
)
add(
    "sum",
    C("spatial", lambda m, h, x: h.sum((2, 3)), "free", "2d"),
    C("keywords-keepdim", lambda m, h, x: h.sum(dim=(-1,), keepdim=True), "free", "1d"),
    C("over-features", lambda m, h, x: h.sum(1)[:, None], "pinned"),
    C("empty-dim-keepdim", lambda m, h, x: h - h.sum(dim=[], keepdim=True), "pinned"),
)
add(
    "view",
    C("split-features", lambda m, h, x: h.view(-1, 2, 3), "free"),
    C("flatten", lambda m, h, x: h.view(h.size(0), -1), "free", "2d"),
)
add("reshape", C("split-features", lambda m, h, x: h.reshape(-1, 3, 2), "free"))
add(
    "flatten",
    C("start-1", lambda m, h, x: h.flatten(1), "free", "2d"),
    C("keyword-start-2", lambda m, h, x: h.flatten(start_dim=2), "free", "3d"),
)
add(
    "permute",
    C("channels-last", lambda m, h, x: h.permute(0, 2, 3, 1), "free", "2d"),
    C("tuple", lambda m, h, x: h.permute((0, 2, 1)), "free", "1d"),
)
add("transpose", C("1-2", lambda m, h, x: h.transpose(1, 2), "free", "1d"))
add("t", C("twice", lambda m, h, x: h.t().t(), "free"))
add(
    "squeeze",
    C("dim", lambda m, h, x: h[:, :, None].squeeze(2), "free"),
    C("all", lambda m, h, x: h.unsqueeze(-1).squeeze(), "free"),
)
add("unsqueeze", C("dim-1", lambda m, h, x: h.unsqueeze(1), "free"))
add("chunk", C("2", lambda m, h, x: _swap(h.chunk(2, dim=1)), "free"))
add(
    "split",
    C("sections", lambda m, h, x: _swap(h.split([2, 4], 1)), "free"),
    C("size", lambda m, h, x: _swap(h.split(2, dim=1), 3), "free"),
)
add("unbind", C("channels", lambda m, h, x: torch.stack(h.unbind(1)[::-1], 1), "free", "2d"))
add(
    "flip",
    C("features", lambda m, h, x: h.flip(1), "free"),
    C("keyword-dims", lambda m, h, x: h.flip(dims=[2]), "free", "2d"),
)
add(
    "roll",
    C("features", lambda m, h, x: h.roll(1, 1), "free"),
    C("keywords-spatial", lambda m, h, x: h.roll(shifts=2, dims=2), "free", "2d"),
)
add("narrow", C("features", lambda m, h, x: h.narrow(1, 0, 3), "free"))
add("select", C("channel", lambda m, h, x: h.select(1, 2), "free", "2d"))
add("movedim", C("channels-last", lambda m, h, x: h.movedim(1, 2), "free", "1d"))
add("swapaxes", C("1-2", lambda m, h, x: h.swapaxes(1, 2), "free", "1d"))
add(
    "expand",
    C("new-axis", lambda m, h, x: h.unsqueeze(1).expand(-1, 2, -1), "free"),
    C("spatial", lambda m, h, x: h.mean((2, 3), keepdim=True).expand(-1, -1, 3, 2), "free", "2d"),
)
add(
    "repeat",
    C("features", lambda m, h, x: h.repeat(1, 2), "free"),
    C("batch", lambda m, h, x: h.repeat(2, 1), "free"),
)
add("unflatten", C("features", lambda m, h, x: h.unflatten(1, (2, 3)), "free"))
add("view_as", C("round-trip", lambda m, h, x: h.view(-1, 2, 3).view_as(h), "free"))
add("reshape_as", C("hidden-shape", lambda m, h, x: h.reshape(-1, 3, 2).transpose(1, 2).reshape_as(h), "free"))
add("expand_as", C("stack-shape", lambda m, h, x: h.unsqueeze(1).expand_as(torch.stack([h, h], 1)), "free"))
add("tile", C("features", lambda m, h, x: h.tile((1, 2)), "free"))
add(operator.getitem, C("via-__getitem__", lambda m, h, x: h.__getitem__((slice(None), slice(1, 4))), "free"))
add("contiguous", C("after-transpose", lambda m, h, x: h.transpose(1, 2).contiguous(), "free", "1d"))
add("clone", C("plain", lambda m, h, x: h.clone(), "free"))
add("detach", C("method", lambda m, h, x: h.detach(), "free"))
add(
    torch.detach,
    C("torch-function", lambda m, h, x: torch.detach(h), "free", node=("call_function", torch.detach)),
)
add(
    "to",
    C("dtype", lambda m, h, x: h.to(torch.float64), "free"),
    C("keyword-dtype", lambda m, h, x: h.to(dtype=torch.float64), "free"),
    C("device-string", lambda m, h, x: h.to("cpu"), "free"),
    C("like-tensor", lambda m, h, x: h.to(x), "free"),
    C("int64-truncates", lambda m, h, x: (h * 10).to(torch.int64).to(torch.float64), "pinned"),
)
# casts to a narrower float: the rounding is relative, so the teleported model differs from the original by the
# format's round-off (a few eps), not by float64's; a wrong factor would still show as an O(1) error
_EPS = {dt: torch.finfo(dt).eps for dt in (torch.float32, torch.float16, torch.bfloat16)}
add("float", C("round-trip", lambda m, h, x: h.float().double(), "free", rtol=50 * _EPS[torch.float32]))
add("double", C("plain", lambda m, h, x: h.double(), "free"))
add("half", C("round-trip", lambda m, h, x: h.half().double(), "free", rtol=50 * _EPS[torch.float16]))
add("bfloat16", C("round-trip", lambda m, h, x: h.bfloat16().double(), "free", rtol=50 * _EPS[torch.bfloat16]))
add(
    "type",
    C("dtype", lambda m, h, x: h.type(torch.float64), "free"),
    C("string", lambda m, h, x: h.type("torch.DoubleTensor"), "free"),
    C("int32-truncates", lambda m, h, x: (h * 10).type(torch.int32).double(), "pinned"),
)
add("type_as", C("input", lambda m, h, x: h.type_as(x), "free"))
add("cpu", C("plain", lambda m, h, x: h.cpu(), "free"))
add("cuda", C("round-trip", lambda m, h, x: h.cuda().cpu(), "free", needs_cuda=True))
add("requires_grad_", C("plain", lambda m, h, x: h.requires_grad_(), "free"))
add(
    "size",
    C("dim-0", lambda m, h, x: h.view(h.size(0), 2, 3), "free"),
    C("tuple", lambda m, h, x: h.view(h.size()[0], h.size()[1] // 2, 2), "free"),
)
add("dim", C("scale", lambda m, h, x: h * h.dim(), "free"))
add("numel", C("method", lambda m, h, x: h / h.numel(), "free"))
add(
    torch.numel,
    C("torch-function", lambda m, h, x: h / torch.numel(h), "free", node=("call_function", torch.numel)),
)
add("ndimension", C("scale", lambda m, h, x: h * h.ndimension(), "free"))
add("nelement", C("scale", lambda m, h, x: h / h.nelement(), "free"))
add("get_device", C("scale", lambda m, h, x: h * (h.get_device() + 2), "free"))


def all_cases() -> list[tuple[Any, Case]]:
    return [(key, case) for key, cases in SETTINGS.items() for case in cases]


def case_id(key: Any, case: Case) -> str:
    return f"{key_name(key)}-{case.variant}"


# ops that read only metadata of their input: a constant output, nothing pinned; a DropPath-style mask
def _drop_path(m: Any, h: Tensor, x: Tensor) -> Tensor:
    mask = h.new_empty((h.shape[0], 1)).bernoulli_(0.7)  # timm's drop_path, train mode
    return h.div(0.7) * mask


add("new_empty", C("drop-path-mask", _drop_path, "free"))
add("new_zeros", C("plus-zeros", lambda m, h, x: h + h.new_zeros(h.shape), "pinned", reason="constant"))
add("new_ones", C("times-ones", lambda m, h, x: h * h.new_ones((1, h.shape[1])), "free"))
add("new_full", C("times-full", lambda m, h, x: h * h.new_full((1, h.shape[1]), 2.0), "free"))
add("new_tensor", C("times-constant", lambda m, h, x: h * h.new_tensor([2.0]), "free"))
add(torch.zeros_like, C("plus-zeros", lambda m, h, x: h + torch.zeros_like(h), "pinned", reason="constant"))
add(torch.ones_like, C("times-ones", lambda m, h, x: h * torch.ones_like(h), "free"))
add(torch.empty_like, C("filled", lambda m, h, x: h * torch.empty_like(h).fill_(3.0), "free"))
add(torch.full_like, C("times-full", lambda m, h, x: h * torch.full_like(h, 0.5), "free"))
add(torch.rand_like, C("random-mask", lambda m, h, x: h * (torch.rand_like(h) > 0.3), "free"))
add(torch.randn_like, C("noise-added", lambda m, h, x: h + torch.randn_like(h), "pinned", reason="constant"))
add(torch.randint_like, C("random-scale", lambda m, h, x: h * torch.randint_like(h, 1, 3), "free"))


# ------------------------------------------------------------------------------------ max / min / where (issue 13)
def _aux(m: Any, x: Tensor) -> Tensor:
    return m.aux(x)


for _f, _meth in ((torch.maximum, "maximum"), (torch.minimum, "minimum"), (torch.fmax, "fmax"), (torch.fmin, "fmin")):
    add(
        _f,
        C("two-hidden", lambda m, h, x, f=_f: f(h, _aux(m, x)), "free", aux=True, feeds=("pre", "aux"), positive=True),
        C("zero", lambda m, h, x, f=_f: f(h, torch.zeros_like(h)), "free", positive=True),
        C("constant", lambda m, h, x, f=_f: f(h, m.c), "pinned", const=True, reason="constant"),
    )
    add(_meth, C("two-hidden", lambda m, h, x, n=_meth: getattr(h, n)(_aux(m, x)), "free", aux=True,
                 feeds=("pre", "aux"), positive=True))  # fmt: skip
add(
    torch.where,
    C("zero-branch", lambda m, h, x: torch.where(x[:, :1] > 0, h, 0.0), "free"),
    C("zeros-like-branch", lambda m, h, x: torch.where(x[:, :1] > 0, torch.zeros_like(h), h), "free"),
    C("two-hidden", lambda m, h, x: torch.where(x[:, :1] > 0, h, _aux(m, x)), "free", aux=True, feeds=("pre", "aux")),
    C("number-branch", lambda m, h, x: torch.where(x[:, :1] > 0, h, 1.0), "pinned", reason="constant"),
)


# ---------------------------------------------------------------------------- matrix products, attention (issue 13)
def _rows(h: Tensor) -> Tensor:
    return h.unsqueeze(2)  # (N, 6, 1): the factor of row i is that of feature i


def _cols(x: Tensor) -> Tensor:
    return x.unsqueeze(1)  # (N, 1, 4): a constant


add(
    torch.matmul,
    C("rows-free", lambda m, h, x: torch.matmul(_rows(h), _cols(x)), "free"),
    C("columns-free", lambda m, h, x: torch.matmul(x.unsqueeze(2), h.unsqueeze(1)), "free"),
    C("contracted-pinned", lambda m, h, x: torch.matmul(h.unsqueeze(1), h.new_ones((6, 3))), "pinned"),
    C("two-hidden", lambda m, h, x: torch.matmul(_rows(h), _aux(m, x).unsqueeze(1)), "free", aux=True, pinned=("aux",)),
)
add(operator.matmul, C("rows-free", lambda m, h, x: _rows(h) @ _cols(x), "free"))
add(torch.bmm, C("rows-free", lambda m, h, x: torch.bmm(_rows(h), _cols(x)), "free"))
add("matmul", C("columns-free", lambda m, h, x: x.unsqueeze(2).matmul(h.unsqueeze(1)), "free"))
add("bmm", C("rows-free", lambda m, h, x: _rows(h).bmm(_cols(x)), "free"))


def _attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _sdpa(m: Any, h: Tensor, x: Tensor, **kw: Any) -> Tensor:
    """Queries and keys from the input (4 tokens of one feature), values: the hidden features on every token."""
    qk = x.view(x.shape[0], 1, 4, 1)
    v = h.view(h.shape[0], 1, 1, 6).expand(-1, -1, 4, -1)
    return F.scaled_dot_product_attention(qk, qk, v, **kw)


add(
    F.scaled_dot_product_attention,
    C("value-free", _sdpa, "free"),
    C("value-free-causal", partial(_sdpa, is_causal=True), "free"),
    C("value-free-dropout", partial(_sdpa, dropout_p=0.3), "free"),
    C("value-free-mask-scale", lambda m, h, x: _sdpa(m, h, x, attn_mask=x.view(-1, 1, 1, 4), scale=0.5), "free"),
    C(
        "query-pinned",
        lambda m, h, x: _attend(h.view(-1, 1, 1, 6), h.new_ones((h.shape[0], 1, 4, 6)), x.view(-1, 1, 4, 1)),
        "pinned",
    ),
    C(
        "value-varies-along-keys",
        lambda m, h, x: _attend(x.view(-1, 1, 4, 1)[:, :, :2], h.new_ones((h.shape[0], 1, 6, 1)), h.view(-1, 1, 6, 1)),
        "pinned",
    ),
)
