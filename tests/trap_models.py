"""Trap models for the engine (issue 12): hand-written model code of the kind found in research repositories that
an engine reading only the traced graph and the module types can get silently wrong, crash on, or mutate.

Grouped by the issue's classes (1-9). Every model's docstring says which trap it sets. Most models start with an
ordinary ``stem`` (Linear - ReLU - Linear, 5 hidden neurons) so that a correct engine still has free neurons when it
pins the trap itself: "pin everything" is caught as well as "wrong output". Widths are tiny on purpose (fast tests).
"""

from __future__ import annotations

import types
from typing import ClassVar

import torch
import torch.nn.functional as F
import torch.nn.utils.prune
from torch import nn

D_IN, WIDTH, D_OUT = 4, 6, 3


def stem(d_in: int = D_IN, d_out: int = D_IN) -> nn.Sequential:
    """An ordinary block whose 5 hidden neurons a correct engine can always teleport."""
    return nn.Sequential(nn.Linear(d_in, 5), nn.ReLU(), nn.Linear(5, d_out))


class PlainMLP(nn.Module):
    """No trap: the control model (and the victim of global hooks and of mutations after analysis)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc1 = nn.Linear(D_IN, WIDTH)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(WIDTH, WIDTH)
        self.act2 = nn.Tanh()
        self.fc3 = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = self.act1(self.fc1(self.stem(x)))
        return self.fc3(self.act2(self.fc2(h)))


# ============================================================================ 1. parameter read outside its module
class TiedLinearTranspose(nn.Module):
    """Tied decoder (autoencoder style): ``F.linear(h, self.inp.weight.t())`` reads ``inp.weight`` outside ``inp``'s
    call, so scaling ``inp``'s output neurons also rescales the decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.inp = nn.Linear(D_IN, WIDTH)
        self.fc = nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        h = F.relu(self.inp(self.stem(x)))
        h = F.relu(self.fc(h))
        return F.linear(h, self.inp.weight.t())


class TiedMatmul(nn.Module):
    """Tied head written as a matmul: ``h @ self.inp.weight``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.inp = nn.Linear(D_IN, WIDTH)
        self.act = nn.ReLU()
        self.fc = nn.Linear(WIDTH, WIDTH)
        self.act2 = nn.ReLU()

    def forward(self, x):
        h = self.act(self.inp(self.stem(x)))
        h = self.act2(self.fc(h))
        return h @ self.inp.weight


class TiedEinsum(nn.Module):
    """Tied head written as ``torch.einsum("nj,jk->nk", h, self.inp.weight)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.inp = nn.Linear(D_IN, WIDTH)
        self.fc = nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        h = F.relu(self.inp(self.stem(x)))
        h = F.relu(self.fc(h))
        return torch.einsum("nj,jk->nk", h, self.inp.weight)


class TiedEmbeddingLM(nn.Module):
    """Language model with a tied output head ``F.linear(h, self.emb.weight)`` (GPT-2 style); integer input."""

    def __init__(self, vocab: int = 7) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, WIDTH)
        self.fc1 = nn.Linear(WIDTH, 5)
        self.fc2 = nn.Linear(5, WIDTH)
        self.fc3 = nn.Linear(WIDTH, WIDTH)

    def forward(self, idx):
        h = self.fc2(F.relu(self.fc1(self.emb(idx))))
        h = F.relu(self.fc3(h))
        return F.linear(h, self.emb.weight)


class NormalisedByWeightNorm(nn.Module):
    """``self.fc(h) / self.fc.weight.norm()``: the norm of a teleported weight is not invariant."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.act = nn.ReLU()
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = self.fc(self.stem(x)) / self.fc.weight.norm()
        return self.out(self.act(h))


class HandWrittenWeightNorm(nn.Module):
    """A custom layer with its own parameters: ``F.linear(x, w / w.norm(dim=1, keepdim=True), b)``; row-normalised
    weights ignore a row's factor."""

    class Layer(nn.Module):
        def __init__(self, d_in: int, d_out: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(d_out, d_in))
            self.bias = nn.Parameter(torch.randn(d_out) * 0.1)

        def forward(self, x):
            return F.linear(x, self.weight / self.weight.norm(dim=1, keepdim=True), self.bias)

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = self.Layer(D_IN, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        return self.out(F.relu(self.fc(self.stem(x))))


class ForwardMethodCall(nn.Module):
    """``self.fc.forward(h)`` instead of ``self.fc(h)``: the tracer sees ``F.linear`` with the raw parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.act = nn.ReLU()
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        return self.out(self.act(self.fc.forward(self.stem(x))))


class SharedWithBlackBox(nn.Module):
    """``attn.out_proj`` called directly (teleportable Linear) next to ``nn.MultiheadAttention`` (a black box that
    reads the same ``out_proj`` parameters internally). Input ``(N, L, 4)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.inp = nn.Linear(D_IN, WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, 2, batch_first=True)
        self.pre = nn.Linear(WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, D_OUT)
        self.head2 = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = self.inp(self.stem(x))
        att, _ = self.attn(h, h, h, need_weights=False)
        z = F.relu(self.attn.out_proj(F.relu(self.pre(h))))
        return self.head(z) + self.head2(att)


class SharedWeightTwoLinears(nn.Module):
    """Two Linear modules sharing one weight (``b.weight = a.weight``) on two branches with separate factors."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.a = nn.Linear(D_IN, WIDTH)
        self.b = nn.Linear(D_IN, WIDTH)
        self.b.weight = self.a.weight
        self.act_a = nn.ReLU()
        self.act_b = nn.Tanh()
        self.out_a = nn.Linear(WIDTH, D_OUT)
        self.out_b = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = self.stem(x)
        return self.out_a(self.act_a(self.a(h))) + self.out_b(self.act_b(self.b(h)))


class SameModuleTwice(nn.Module):
    """ALBERT-style weight sharing: one Linear called twice in series (one weight, two call sites)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.inp = nn.Linear(D_IN, WIDTH)
        self.shared = nn.Linear(WIDTH, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = F.relu(self.inp(self.stem(x)))
        h = F.relu(self.shared(h))
        h = F.relu(self.shared(h))
        return self.out(h)


class LearnedOffset(nn.Module):
    """A learned offset added to a hidden layer (``h + self.pos``, ViT position-embedding style): a parameter used by
    ``add``, not by a module."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.pos = nn.Parameter(torch.randn(WIDTH))
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        return self.out(F.relu(self.fc(self.stem(x)) + self.pos))


class LayerScale(nn.Module):
    """A learned per-channel scale (``h * self.gamma``, CaiT/ConvNeXt style)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.gamma = nn.Parameter(torch.rand(WIDTH) + 0.5)
        self.act = nn.Tanh()
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        return self.out(self.act(F.relu(self.fc(self.stem(x))) * self.gamma))


class ParameterListMLP(nn.Module):
    """Raw parameters in ``nn.ParameterList`` used with ``@`` and ``+`` (no layer modules at all)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.ws = nn.ParameterList([nn.Parameter(torch.randn(D_IN, WIDTH) * 0.5), nn.Parameter(torch.randn(WIDTH, 3))])
        self.bs = nn.ParameterList([nn.Parameter(torch.randn(WIDTH) * 0.1), nn.Parameter(torch.randn(3) * 0.1)])

    def forward(self, x):
        h = F.relu(self.stem(x) @ self.ws[0] + self.bs[0])
        return h @ self.ws[1] + self.bs[1]


class WeightPenaltyInOutput(nn.Module):
    """An auxiliary weight penalty added to the output in forward (``out + 1e-2 * fc.weight.pow(2).sum()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        return self.out(F.relu(self.fc(self.stem(x)))) + 1e-2 * self.fc.weight.pow(2).sum()


# ============================================================================ 2. in-place semantics
_ACTS = {
    "SiLU": lambda: nn.SiLU(inplace=True),
    "Hardswish": lambda: nn.Hardswish(inplace=True),
    "ReLU6": lambda: nn.ReLU6(inplace=True),
    "ELU": lambda: nn.ELU(inplace=True),
    "Hardtanh": lambda: nn.Hardtanh(inplace=True),
    "CELU": lambda: nn.CELU(inplace=True),
    "SELU": lambda: nn.SELU(inplace=True),
    "Mish": lambda: nn.Mish(inplace=True),
    "Hardsigmoid": lambda: nn.Hardsigmoid(inplace=True),
    "ReLU": lambda: nn.ReLU(inplace=True),
    "LeakyReLU": lambda: nn.LeakyReLU(0.1, inplace=True),
    "Threshold": lambda: nn.Threshold(0.0, 0.0, inplace=True),
    "Dropout": lambda: nn.Dropout(0.3, inplace=True),
}


class InplaceActPlain(nn.Module):
    """An in-place activation in a plain chain (its overwritten input is never read again)."""

    def __init__(self, act: str = "SiLU") -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.act = _ACTS[act]()
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        return self.out(self.act(self.fc(self.stem(x))))


class InplaceActReread(nn.Module):
    """An in-place activation whose input is read again afterwards: ``y = self.act(h); out1(y) + out2(h)``; in the
    original ``h`` *is* ``y`` by then, a wrapper computing ``tau * f(h / tau)`` on a copy leaves ``h`` unchanged."""

    def __init__(self, act: str = "SiLU") -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.act = _ACTS[act]()
        self.out1 = nn.Linear(WIDTH, D_OUT)
        self.out2 = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = self.fc(self.stem(x)) * 3.0  # beyond the saturation points of Hardtanh & co.
        y = self.act(h)
        return self.out1(y) + self.out2(h)


class InplaceStatement(nn.Module):
    """An in-place op used as a statement whose result is not assigned (``h.clamp_(-1, 1)``): the traced graph has
    a node without users, and the later reads of ``h`` point at the value *before* the op."""

    KINDS = (
        "clamp_",
        "relu_",
        "torch.relu_",
        "tanh_",
        "sigmoid_",
        "F.relu(inplace)",
        "F.leaky_relu(inplace)",
        "mul_(branch)",
        "add_(branch)",
        "div_(branch)",
    )

    def __init__(self, kind: str = "clamp_") -> None:
        super().__init__()
        assert kind in self.KINDS
        self.kind = kind
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        if kind.endswith("(branch)"):
            self.g = nn.Linear(D_IN, WIDTH)
        self.act = nn.Tanh()  # a module: a wrapper site, so the engine wants to teleport fc
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        x0 = self.stem(x)
        h = self.fc(x0) * 2.0
        k = self.kind
        if k == "clamp_":
            h.clamp_(-1, 1)
        elif k == "relu_":
            h.relu_()
        elif k == "torch.relu_":
            torch.relu_(h)
        elif k == "tanh_":
            h.tanh_()
        elif k == "sigmoid_":
            h.sigmoid_()
        elif k == "F.relu(inplace)":
            F.relu(h, inplace=True)
        elif k == "F.leaky_relu(inplace)":
            F.leaky_relu(h, 0.1, inplace=True)
        elif k == "mul_(branch)":
            h.mul_(self.g(x0))
        elif k == "add_(branch)":
            h.add_(self.g(x0))
        elif k == "div_(branch)":
            h.div_(self.g(x0).abs() + 1.0)
        return self.out(self.act(h))


class AugmentedAssignment(nn.Module):
    """``h += other`` (``operator.iadd``), and an alias ``skip = h`` taken before it: ``skip`` changes too."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.g = nn.Linear(D_IN, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)
        self.act = nn.Tanh()
        self.out2 = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        x0 = self.stem(x)
        h = self.fc(x0)
        skip = h
        h += self.g(x0)
        h *= 0.5
        return self.out(F.relu(h)) + self.out2(self.act(skip))


class AliasInplaceMethod(nn.Module):
    """``skip = h; h = h.tanh_()``: the in-place method overwrites ``skip`` too; a functional wrapper
    ``tau * tanh_(h / tau)`` (functional="graph") would not."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)
        self.out2 = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = self.fc(self.stem(x))
        skip = h
        h = h.tanh_()
        return self.out(h) + self.out2(skip)


class RunningNormInForward(nn.Module):
    """A hand-written running normaliser: forward updates a buffer in place (train mode) and subtracts it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.register_buffer("mean", torch.zeros(WIDTH))
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = F.relu(self.fc(self.stem(x)))
        if self.training:
            self.mean.mul_(0.9).add_(0.1 * h.detach().mean(0))
        return self.out(h - self.mean)


# ============================================================================ 3. module hooks
class HookedMLP(nn.Module):
    """An MLP with a hook on the hidden layer ``fc2`` (or its block/activation), by ``kind``:

    fwd_add / fwd_clamp: forward hook changing fc2's output; pre_add / pre_kwargs: pre-hook changing its input;
    act_fwd: forward hook on an activation; bwd_normalize / bwd_pre_normalize: backward hooks normalising grad_input /
    grad_output elementwise (outputs unchanged, input gradients not); store / block_store: hooks storing outputs
    (on a leaf and on a non-leaf block; no tracing object may stay behind); block_fwd_add: forward hook on a non-leaf
    block; tap: a stored output read back by forward (feature-tap style).
    """

    KINDS = (
        "fwd_add",
        "fwd_clamp",
        "pre_add",
        "pre_kwargs",
        "act_fwd",
        "bwd_normalize",
        "bwd_pre_normalize",
        "store",
        "block_store",
        "block_fwd_add",
        "tap",
    )

    def __init__(self, kind: str = "fwd_add") -> None:
        super().__init__()
        assert kind in self.KINDS
        self.kind = kind
        self.stem = stem()
        self.fc1 = nn.Linear(D_IN, WIDTH)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(WIDTH, WIDTH)
        self.act2 = nn.Tanh()
        self.block = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh())
        self.fc3 = nn.Linear(WIDTH, D_OUT)
        if kind == "tap":
            self.tap_head = nn.Linear(WIDTH, D_OUT)
        self.feats: dict = {}
        self.feat_list: list = []
        self._install(kind)

    def _install(self, kind: str) -> None:
        # storing hooks are bound methods of the model, so that a deep copy stores into the copy's own dict
        if kind == "fwd_add":
            self.fc2.register_forward_hook(lambda m, i, o: o + 0.5)
        elif kind == "fwd_clamp":
            self.fc2.register_forward_hook(lambda m, i, o: o.clamp(-0.2, 0.2))
        elif kind == "pre_add":
            self.fc2.register_forward_pre_hook(lambda m, i: (i[0] + 0.5,))
        elif kind == "pre_kwargs":
            self.fc2.register_forward_pre_hook(lambda m, a, k: ((torch.tanh(a[0]),), k), with_kwargs=True)
        elif kind == "act_fwd":
            self.act1.register_forward_hook(lambda m, i, o: o + 0.1)
        elif kind == "bwd_normalize":
            self.fc2.register_full_backward_hook(lambda m, gi, go: (gi[0] / (0.01 + gi[0].abs()),))
        elif kind == "bwd_pre_normalize":
            self.fc2.register_full_backward_pre_hook(lambda m, go: (go[0] / (0.01 + go[0].abs()),))
        elif kind in ("store", "tap"):
            self.fc2.register_forward_hook(self._store_fc2)
        elif kind == "block_store":
            self.block.register_forward_hook(self._store_block)
        elif kind == "block_fwd_add":
            self.block.register_forward_hook(lambda m, i, o: o + 0.5)

    def _store_fc2(self, module, inputs, output):
        self.feats["fc2"] = output
        self.feat_list.append(output)

    def _store_block(self, module, inputs, output):
        self.feats["block"] = output
        self.feat_list.append(output)

    def forward(self, x):
        self.feat_list.clear()
        h = self.act1(self.fc1(self.stem(x)))
        h = self.act2(self.fc2(h))
        h = self.block(h)
        out = self.fc3(h)
        if self.kind == "tap":
            out = out + self.tap_head(torch.tanh(self.feats["fc2"]))
        return out


class TensorGradHook(nn.Module):
    """A gradient hook registered on a hidden tensor inside forward (only when grad is enabled) that normalises the
    gradient elementwise: the teleported hidden gradient is ``g / tau``, normalising it changes the input gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = F.relu(self.fc(self.stem(x)))
        if torch.is_grad_enabled():
            h.register_hook(lambda g: g / (0.01 + g.abs()))
        return self.out(h)


# ============================================================================ 4. a cached plan outliving its model
class SwitchSkip(nn.Module):
    """A Python attribute switches a residual on after the first analysis: the residual ties two groups."""

    def __init__(self, use_skip: bool = False) -> None:
        super().__init__()
        self.use_skip = use_skip
        self.stem = stem()
        self.fc1 = nn.Linear(D_IN, WIDTH)
        self.fc2 = nn.Linear(WIDTH, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h1 = F.relu(self.fc1(self.stem(x)))
        h2 = F.relu(self.fc2(h1))
        if self.use_skip:
            h2 = h2 + h1
        return self.out(h2)


class SwitchActivation(nn.Module):
    """A Python attribute selects the activation function (``"relu"`` -> ``"tanh"`` after the first analysis)."""

    def __init__(self, act: str = "relu") -> None:
        super().__init__()
        self.act = act
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = self.fc(self.stem(x))
        h = F.relu(h) if self.act == "relu" else torch.tanh(h)
        return self.out(h)


class SwitchOffset(nn.Module):
    """A Python float added to a hidden layer (``h + self.offset``), 0.0 at the first analysis."""

    def __init__(self, offset: float = 0.0) -> None:
        super().__init__()
        self.offset = offset
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        return self.out(F.relu(self.fc(self.stem(x)) + self.offset))


class GradEnabledBranch(nn.Module):
    """``if torch.is_grad_enabled():`` picks another activation: the analysis runs under ``no_grad``, training
    does not."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = F.relu(self.fc(self.stem(x)))
        if torch.is_grad_enabled():
            h = torch.tanh(h)
        return self.out(h)


class BatchMix(nn.Module):
    """Cat along the batch axis, then a fixed slice: at batch 2 the slice is branch ``b`` only, at batch 5 it mixes
    rows of branches ``a`` and ``b`` (whose neurons the analysis at batch 2 saw as independent)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.a = nn.Linear(D_IN, WIDTH)
        self.b = nn.Linear(D_IN, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = self.stem(x)
        z = torch.cat([F.relu(self.a(h)), F.relu(self.b(h))], 0)[2:]
        return self.out(z)


# ============================================================================ 5. one activation object, two parents
class SharedActTwoParents(nn.Module):
    """``self.act`` is also ``self.block[1]``: one module object registered under two parents, called at both."""

    def __init__(self, act: str = "Tanh") -> None:
        super().__init__()
        self.act = {"Tanh": nn.Tanh, "ELU": nn.ELU, "LeakyReLU": lambda: nn.LeakyReLU(0.1)}[act]()
        self.stem = stem()
        self.block = nn.Sequential(nn.Linear(D_IN, WIDTH), self.act)
        self.fc = nn.Linear(WIDTH, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = self.block(self.stem(x))
        return self.out(self.act(self.fc(h)))


class SharedActInSequential(nn.Module):
    """One activation object twice in one Sequential."""

    def __init__(self) -> None:
        super().__init__()
        act = nn.Tanh()
        self.stem = stem()
        self.body = nn.Sequential(nn.Linear(D_IN, WIDTH), act, nn.Linear(WIDTH, WIDTH), act, nn.Linear(WIDTH, D_OUT))

    def forward(self, x):
        return self.body(self.stem(x))


# ============================================================================ 6. subclasses changing behaviour
class WSConv2d(nn.Conv2d):
    """Weight-standardised convolution (BiT / NFNet style): overrides ``_conv_forward``, not ``forward``."""

    def _conv_forward(self, input, weight, bias):
        mean = weight.mean(dim=(1, 2, 3), keepdim=True)
        std = weight.std(dim=(1, 2, 3), keepdim=True) + 1e-5
        return super()._conv_forward(input, (weight - mean) / std, bias)


class WSConvNet(nn.Module):
    """A small conv net whose first convolution is a :class:`WSConv2d`. Input ``(N, 2, 6, 6)``."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(2, 3, 1)
        self.a0 = nn.ReLU()
        self.c1 = WSConv2d(3, 4, 3, padding=1)
        self.a1 = nn.ReLU()
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.a2 = nn.ReLU()
        self.fc = nn.Linear(4, D_OUT)

    def forward(self, x):
        h = self.a1(self.c1(self.a0(self.c0(x))))
        h = self.a2(self.c2(h))
        return self.fc(h.mean((2, 3)))


class NormedLinear(nn.Linear):
    """A cosine-classifier Linear whose ``weight`` is a property (rows L2-normalised); the raw parameter stays in
    ``_parameters['weight']``. Overrides neither ``forward`` nor any method."""

    @property
    def weight(self):
        params = self.__dict__.get("_parameters", {})
        if "weight" not in params:
            raise AttributeError("weight")
        w = params["weight"]
        if not self.__dict__.get("_normed", False):
            return w  # during __init__ / reset_parameters
        return F.normalize(w, dim=1)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__["_normed"] = True


class PropertyWeightNet(nn.Module):
    """A hidden :class:`NormedLinear` between ordinary layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = NormedLinear(D_IN, WIDTH)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(WIDTH, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = self.act(self.fc(self.stem(x)))
        return self.out(F.relu(self.fc2(h)))


class MonkeyPatchedForward(nn.Module):
    """An ``nn.Linear`` instance whose ``forward`` attribute is replaced (bound method adding a tanh)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.fc.forward = types.MethodType(lambda self, h: torch.tanh(F.linear(h, self.weight, self.bias)), self.fc)
        self.fc2 = nn.Linear(WIDTH, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = self.fc(self.stem(x))
        return self.out(F.relu(self.fc2(h)))


class ShiftedReLU(nn.ReLU):
    """A ReLU subclass overriding ``forward`` (``relu(x) + 0.1``): not positively homogeneous any more."""

    def forward(self, x):
        return super().forward(x) + 0.1


class TanhLinear(nn.Linear):
    """A Linear subclass overriding ``forward`` with a built-in tanh."""

    def forward(self, x):
        return torch.tanh(super().forward(x))


class SubclassForwardNet(nn.Module):
    """:class:`ShiftedReLU` and :class:`TanhLinear` between ordinary layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = TanhLinear(D_IN, WIDTH)
        self.fc2 = nn.Linear(WIDTH, WIDTH)
        self.act = ShiftedReLU()
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        return self.out(self.act(self.fc2(self.fc(self.stem(x)))))


class ResidualSequential(nn.Sequential):
    """An ``nn.Sequential`` subclass whose forward adds a residual (``x + super().forward(x)``)."""

    def forward(self, x):
        return x + super().forward(x)


class ResidualSequentialNet(nn.Module):
    """:class:`ResidualSequential` inside an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.res = ResidualSequential(nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH))
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        return self.out(F.relu(self.res(F.relu(self.fc(self.stem(x))))))


# ============================================================================ 7. rules that misread their op
class OpTrap(nn.Module):
    """One op with unusual arguments between two hidden layers, by ``kind`` (see :attr:`KINDS`); ``a`` and ``b`` are
    two independent hidden layers of width 6 (``b`` only for the ops that take two tensors), the result goes through
    an ``nn.Tanh`` module (a wrapper site: the engine wants to teleport what feeds it) into a Linear head sized for
    the op's output; ops without a derivative keep a differentiable path ``a + op(a)``."""

    KINDS = (
        "mul(input=,other=)",
        "add(input=,other=)",
        "add(alpha=)",
        "sub(other=)",
        "div(rounding_mode=floor)",
        "div(rounding_mode=trunc)",
        "floordiv",
        "to(int64)",
        "int()",
        "sum(dim=[])",
        "mean(dim=())",
        "chunk tuple concat",
        "max(dim=1)",
        "amax()",
        "normalize",
        "softmax",
        "roll(shifts=,dims=)",
        "flip",
        "index permutation",
        "index_select",
        "pad(2,0,value=0.5)",
        "repeat",
        "repeat_interleave",
        "view-sum groups",
        "outer product",
        "clamp(min=0.1)",
        "clamp(0.1)",
        "clamp(min=0)",
        "threshold",
        "where leaky",
        "center features",
        "minibatch std",
    )
    USES_B = frozenset(
        {
            "add(input=,other=)",
            "add(alpha=)",
            "sub(other=)",
            "chunk tuple concat",
            "roll(shifts=,dims=)",
            "flip",
            "index permutation",
            "index_select",
        }
    )

    def __init__(self, kind: str = "mul(input=,other=)") -> None:
        super().__init__()
        assert kind in self.KINDS
        self.kind = kind
        self.stem = stem()
        self.a = nn.Linear(D_IN, WIDTH)
        if kind in self.USES_B:
            self.b = nn.Linear(D_IN, WIDTH)
        width = {"pad(2,0,value=0.5)": 8, "repeat": 12, "repeat_interleave": 12, "view-sum groups": 3}.get(kind)
        width = {"outer product": 36, "minibatch std": 7, "max(dim=1)": 7, "amax()": 7}.get(kind, width or WIDTH)
        self.act = nn.Tanh()  # a module: a wrapper site, so the engine wants to teleport what feeds it
        self.out = nn.Linear(width, D_OUT)
        self.register_buffer("perm", torch.tensor([2, 0, 1, 5, 4, 3]))

    def forward(self, x):  # one branch per op, on purpose
        h0 = self.stem(x)
        a = self.a(h0)
        b = self.b(h0) if self.kind in self.USES_B else None
        k = self.kind
        if k == "mul(input=,other=)":
            z = torch.mul(input=a, other=2.0)
        elif k == "add(input=,other=)":
            z = torch.add(input=a, other=b)
        elif k == "add(alpha=)":
            z = torch.add(a, b, alpha=0.5)
        elif k == "sub(other=)":
            z = torch.sub(a, other=b)
        elif k == "div(rounding_mode=floor)":
            z = a + torch.div(a * 4.0, 3.0, rounding_mode="floor")  # `a +`: a differentiable path as well
        elif k == "div(rounding_mode=trunc)":
            z = a + torch.div(a * 4.0, 3.0, rounding_mode="trunc")
        elif k == "floordiv":
            z = a + (a.detach() * 4.0) // 3.0  # floor_divide has no derivative
        elif k == "to(int64)":
            z = a + (a * 4.0).to(torch.int64).to(a.dtype)
        elif k == "int()":
            z = a + (a * 4.0).int().to(a.dtype)
        elif k == "sum(dim=[])":
            z = a + a.sum(dim=[])  # dim=[] reduces over every axis
        elif k == "mean(dim=())":
            z = a + torch.mean(a, dim=())
        elif k == "chunk tuple concat":
            parts = a.chunk(2, 1) + b.chunk(2, 1)  # a tuple of 4 tensors, not a tensor sum
            z = torch.cat([parts[1], parts[2]], 1)
        elif k == "max(dim=1)":
            z = torch.cat([a, torch.max(a, dim=1)[0].unsqueeze(1)], 1)
        elif k == "amax()":
            z = torch.cat([a, a.amax().expand(a.shape[0], 1)], 1)
        elif k == "normalize":
            z = F.normalize(a, dim=1)
        elif k == "softmax":
            z = F.softmax(a, dim=-1)
        elif k == "roll(shifts=,dims=)":
            z = F.relu(torch.roll(F.relu(a), shifts=1, dims=1)) + b
        elif k == "flip":
            z = F.relu(a).flip(1) + b
        elif k == "index permutation":
            z = F.relu(a)[:, [2, 0, 1, 5, 4, 3]] + b
        elif k == "index_select":
            z = F.relu(a).index_select(1, self.perm) + b
        elif k == "pad(2,0,value=0.5)":
            z = F.pad(F.relu(a), (2, 0), value=0.5)
        elif k == "repeat":
            z = F.relu(a).repeat(1, 2)
        elif k == "repeat_interleave":
            z = F.relu(a).repeat_interleave(2, dim=1)
        elif k == "view-sum groups":
            z = F.relu(a).view(a.shape[0], 2, 3).sum(1)
        elif k == "outer product":
            z = (a.unsqueeze(2) * a.unsqueeze(1)).flatten(1)
        elif k == "clamp(min=0.1)":
            z = torch.clamp(a, min=0.1)
        elif k == "clamp(0.1)":
            z = torch.clamp(a, 0.1)
        elif k == "clamp(min=0)":
            z = a.clamp(min=0)
        elif k == "threshold":
            z = F.threshold(a, 0.5, 0.0)
        elif k == "where leaky":
            z = torch.where(a > 0, a, 0.2 * a)
        elif k == "center features":
            z = a - a.mean(1, keepdim=True)
        elif k == "minibatch std":
            z = torch.cat([a, a.std(0).mean().expand(a.shape[0], 1)], 1)
        else:  # pragma: no cover
            raise AssertionError(k)
        return self.out(self.act(z))


class ModuleOpTrap(nn.Module):
    """A module between two hidden layers whose semantics an engine can misread, by ``kind``: ``nn.Threshold(0.5)``,
    ``nn.AlphaDropout`` (affine in train mode), ``nn.LocalResponseNorm`` (mixes channels), ``nn.GroupNorm``,
    ``nn.PReLU(6)`` (per channel; negative factors under inter), ``nn.Bilinear``, ``nn.MaxPool1d(2)`` as maxout on
    ``(N, F)`` (pools the *feature* axis), ``nn.Softmax``."""

    KINDS = ("Threshold", "AlphaDropout", "LocalResponseNorm", "GroupNorm", "PReLU", "Bilinear", "Maxout", "Softmax")

    def __init__(self, kind: str = "Threshold") -> None:
        super().__init__()
        assert kind in self.KINDS
        self.kind = kind
        self.stem = stem()
        self.fc = nn.Linear(D_IN, 2 * WIDTH if kind == "Maxout" else WIDTH)
        self.mod = {
            "Threshold": lambda: nn.Threshold(0.5, 0.0),
            "AlphaDropout": lambda: nn.AlphaDropout(0.3),
            "LocalResponseNorm": lambda: nn.LocalResponseNorm(2),
            "GroupNorm": lambda: nn.GroupNorm(2, WIDTH),
            "PReLU": lambda: nn.PReLU(WIDTH),
            "Bilinear": lambda: nn.Bilinear(WIDTH, WIDTH, WIDTH),
            "Maxout": lambda: nn.MaxPool1d(2),
            "Softmax": lambda: nn.Softmax(dim=1),
        }[kind]()
        self.fc2 = nn.Linear(WIDTH, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = self.fc(self.stem(x))
        if self.kind == "LocalResponseNorm":
            z = self.mod(h.unsqueeze(2)).squeeze(2)
        elif self.kind == "Bilinear":
            z = self.mod(h, F.relu(h))
        else:
            z = self.mod(h)
        return self.out(F.relu(self.fc2(z)))


class MaxPool2dOnNCL(nn.Module):
    """``nn.MaxPool2d(2)`` applied to an ``(N, C, L)`` tensor: torch reads it as one unbatched ``(C, H, W)`` image,
    so the window spans the channel axis (and the length). Input ``(N, 2, 8)``."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv1d(2, 3, 1)
        self.c1 = nn.Conv1d(3, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.c2 = nn.Conv1d(3, 4, 1)
        self.fc = nn.Linear(4, D_OUT)

    def forward(self, x):
        h = F.relu(self.c1(F.relu(self.c0(x))))
        h = self.pool(h)  # (N, 6, 8) read as (C, H, W): -> (N, 3, 4), each window spans two channels
        return self.fc(F.relu(self.c2(h)).mean(2))


class UnbatchedConv1d(nn.Module):
    """A convolution on an unbatched ``(C, L)`` input: channels are axis 0, then a Linear reads them after a
    transpose. Input ``(2, L)``; the "second batch" has another length."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv1d(2, 4, 1)
        self.c1 = nn.Conv1d(4, WIDTH, 3)
        self.fc = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = F.relu(self.c1(F.relu(self.c0(x))))  # (6, L - 2)
        return self.fc(h.transpose(0, 1))


class UnbatchedConv2dFlatten(nn.Module):
    """A convolution on an unbatched ``(C, H, W)`` image, then ``flatten(1)``: the Linear reads the spatial axis as
    features and the channel axis as batch. Input ``(2, 5, 5)``."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(2, 3, 1)
        self.c1 = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(9, D_OUT)

    def forward(self, x):
        h = F.relu(self.c1(F.relu(self.c0(x))))  # (4, 3, 3)
        return self.fc(h.flatten(1))


class PixelShuffleNet(nn.Module):
    """Sub-pixel convolution (``nn.PixelShuffle(2)``) between convolutions: channels are re-indexed. Input
    ``(N, 2, 3, 3)``."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(2, 8, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3, D_OUT)

    def forward(self, x):
        h = self.shuffle(F.relu(self.c0(x)))
        return self.fc(F.relu(self.c1(h)).mean((2, 3)))


class GroupedConvTranspose(nn.Module):
    """``nn.ConvTranspose1d(4, 6, 3, groups=2)``: weight layout ``(in, out / groups, k)``. Input ``(N, 2, 5)``."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv1d(2, 4, 1)
        self.up = nn.ConvTranspose1d(4, WIDTH, 3, groups=2)
        self.c1 = nn.Conv1d(WIDTH, 3, 1)
        self.fc = nn.Linear(3, D_OUT)

    def forward(self, x):
        h = F.relu(self.up(F.relu(self.c0(x))))
        return self.fc(F.relu(self.c1(h)).mean(2))


# ============================================================================ 8. custom autograd functions
class RoundSTE(torch.autograd.Function):
    """Straight-through estimator: forward rounds, backward is the identity."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


class GradReverse(torch.autograd.Function):
    """Gradient reversal (DANN): forward identity, backward ``-0.5 * g``."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -0.5 * g


class GradClip(torch.autograd.Function):
    """Forward identity, backward clips the gradient elementwise (nonlinear in ``g``)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g.clamp(-0.02, 0.02)


class CustomFunctionNet(nn.Module):
    """A custom ``autograd.Function`` (``kind``: ``"ste"``, ``"reverse"``, ``"clip"``) on a hidden layer, next to a
    functional ``torch.tanh`` (so that functional="graph" rewrites the model)."""

    FUNCS: ClassVar[dict[str, type]] = {"ste": RoundSTE, "reverse": GradReverse, "clip": GradClip}

    def __init__(self, kind: str = "ste") -> None:
        super().__init__()
        self.kind = kind
        self.stem = stem()
        self.fc1 = nn.Linear(D_IN, WIDTH)
        self.fc2 = nn.Linear(WIDTH, WIDTH)
        self.act = nn.Tanh()
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = torch.tanh(self.fc1(self.stem(x)))
        h = self.FUNCS[self.kind].apply(self.fc2(h) * 3.0)
        return self.out(self.act(h))


# ============================================================================ 9. crashes and side effects
class ParametrizedHidden(nn.Module):
    """A hidden Linear under a parametrization or pruning (``kind``): ``weight_norm`` / ``spectral_norm``
    (``torch.nn.utils.parametrizations``), the deprecated hook-based ``nn.utils.weight_norm`` /
    ``nn.utils.spectral_norm``, or ``nn.utils.prune.l1_unstructured``."""

    KINDS = ("weight_norm", "spectral_norm", "old_weight_norm", "old_spectral_norm", "prune")

    def __init__(self, kind: str = "weight_norm") -> None:
        super().__init__()
        import warnings

        assert kind in self.KINDS
        self.stem = stem()
        fc = nn.Linear(D_IN, WIDTH)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "weight_norm":
                fc = nn.utils.parametrizations.weight_norm(fc)
            elif kind == "spectral_norm":
                fc = nn.utils.parametrizations.spectral_norm(fc)
            elif kind == "old_weight_norm":
                fc = nn.utils.weight_norm(fc)
            elif kind == "old_spectral_norm":
                fc = nn.utils.spectral_norm(fc)
            else:
                nn.utils.prune.l1_unstructured(fc, "weight", amount=0.5)
        self.fc = fc
        self.fc2 = nn.Linear(WIDTH, WIDTH)
        self.act = nn.Tanh()
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = F.relu(self.fc(self.stem(x)))
        return self.out(self.act(self.fc2(h)))


class KeywordModuleCall(nn.Module):
    """A module called with a keyword argument: ``self.fc(input=h)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        return self.out(F.relu(self.fc(input=self.stem(x))))


class OptionalMask(nn.Module):
    """``forward(self, x, mask=None)`` called with ``x`` only."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x, mask=None):
        h = F.relu(self.fc(self.stem(x)))
        if mask is not None:
            h = h * mask
        return self.out(h)


class KwargsForward(nn.Module):
    """``forward(self, x, **kwargs)`` called with ``x`` only (Hugging Face style)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x, **kwargs):
        h = F.relu(self.fc(self.stem(x)))
        if kwargs.get("return_hidden", False):
            return h
        return self.out(h)


class MaxNormEmbeddingLM(nn.Module):
    """``nn.Embedding(max_norm=1.0)`` renormalises the looked-up rows of its weight *in place* on every forward;
    integer input."""

    def __init__(self, vocab: int = 7) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, WIDTH, max_norm=1.0)
        with torch.no_grad():
            self.emb.weight.mul_(3.0)  # every row above max_norm
        self.fc1 = nn.Linear(WIDTH, 5)
        self.fc2 = nn.Linear(5, D_OUT)

    def forward(self, idx):
        return self.fc2(F.relu(self.fc1(self.emb(idx))))


class DictOutput(nn.Module):
    """Returns a dict of tensors (``{"logits": ..., "hidden": ...}``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.fc = nn.Linear(D_IN, WIDTH)
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        h = F.relu(self.fc(self.stem(x)))
        return {"logits": self.out(h), "pooled": h.sum(1)}


class Checkpointed(nn.Module):
    """A block run through ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = stem()
        self.block = nn.Sequential(nn.Linear(D_IN, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.Tanh())
        self.out = nn.Linear(WIDTH, D_OUT)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        return self.out(checkpoint(self.block, self.stem(x), use_reentrant=False))


class InputMutatedInPlace(nn.Module):
    """Normalises its input in place (``x.sub_(self.shift)``): analysis must not change the example input."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.full((D_IN,), 0.25))
        self.stem = stem()
        self.out = nn.Linear(D_IN, D_OUT)

    def forward(self, x):
        x = x.sub_(self.shift)
        return self.out(F.relu(self.stem(x)))
