"""Many seeds in one process: :func:`train_stacked` trains ``k`` models of one architecture side by side with
``torch.func`` (:func:`~torch.func.functional_call` + :func:`~torch.func.vmap`) and a vectorised optimizer.

Member ``i`` of the stack is trained exactly as ``train(models[i], data, seed=seeds[i], teleport_at=...)``
would train it (:func:`nnteleport.lab.training.train`): the same preamble (``model.to(device, dtype)``,
``seed_all(seeds[i])``, the optional ``init``), its own data order (a ``torch.Generator`` seeded from
``(seeds[i], 0xDA7A)``, batches drawn exactly as :class:`~.loop.Trainer` draws them, including the extra draw
that ends an epoch cut by ``max_iters_per_epoch``; the global generators are swapped per member around each
batch, so datasets that augment with them see each member's own stream), its own teleports (same generators
``(seeds[i], epoch, 0x7E1E)``, same records in ``history.teleports``), the same learning-rate schedule and the
same optimizer update. A teleported arm is just another member: its parameters after the move are stacked like
the others (``V = tau . W`` has the shapes of ``W``).

The stack. Every parameter and buffer ``p`` of shape ``S`` becomes one tensor ``P`` of shape ``(k, *S)``
(``P[i]`` is member ``i``'s). One step computes, for all members at once,

    out[i] = f(P[i], x[i]),  L[i] = loss_fn(out[i], y[i]),  dP = d(sum_i L[i]) / dP   (so dP[i] = dL[i]/dP[i])

with ``x`` of shape ``(k, B, *input_shape)`` (member ``i``'s own mini-batch) and one backward pass, then the
optimizer update on the stacked tensors. The update is torch's single-tensor formula, element-wise on the
stack: SGD ``g = dP + wd P; P -= lr g``; momentum ``b = m b + g`` (``b = g`` at the first step after a reset);
Adam ``m1 = lerp(m1, g, 1 - b1)``, ``m2 = b2 m2 + (1 - b2) g^2``,
``P -= lr / (1 - b1^t) * m1 / (sqrt(m2) / sqrt(1 - b2^t) + eps)`` (L2 via ``wd``, not AdamW) -- the same
operations in the same order as ``torch.optim.SGD`` / ``torch.optim.Adam`` on the CPU (their single-tensor
path), so the update adds no round-off of its own.

Equivalence with sequential runs (measured, tests/test_vectorized.py): *not* bit-identical, equal to round-off.
The batching rules of ``vmap`` call other kernels than the unbatched model: ``F.linear`` becomes
``matmul`` + ``add`` (MKL's ``addmm`` adds the bias inside the GEMM, which rounds differently), a batched
convolution is one grouped convolution, and the weight gradients and the mean of the cross-entropy are reduced
in another order. One step differs by about one ulp (float64: ~1e-17 on gradients of size ~1e-2); the
differences then grow like any round-off perturbation of gradient descent (float64: ~1e-12 relative after a few
hundred steps of the tests' MLP and CNN; float32: ~1e-5). The element-wise optimizer update itself is
bit-identical (checked on this machine for every op it uses). On CUDA torch's optimizers take their multi-tensor
path by default, which rounds differently again: same conclusion, round-off only.

Supported: any model whose forward ``vmap`` can batch -- Linear, convolutions, pooling, activations, reshapes,
residual additions, BatchNorm in train and eval mode (running statistics are stacked buffers updated in place
under ``vmap``; ``num_batches_tracked`` too). Refused with a clear error (:class:`~nnteleport.errors.
UnsupportedModelError`): members of different architectures (module types, parameter or buffer names, shapes,
dtypes or devices), random operations in the forward pass (dropout in train mode: ``train`` draws its masks from
each seed's global generator, ``vmap`` from one generator for the whole stack, so the runs could not match --
``vmap(..., randomness="error")`` detects every random op), forwards ``vmap`` cannot batch (``.item()``,
data-dependent control flow), and teleports that change a member's structure (the activation wrappers of
non-homogeneous activations: those arms no longer stack with their baseline). Not supported (train them with
:func:`~nnteleport.lab.training.train`): callable optimizers (G-space), ``optimizer_state_on_teleport=
"transform"``, penalties, callbacks, checkpoints, TensorBoard and progress bars. ``history.seconds`` is the wall
time of the whole stacked epoch, the same for every member.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.utils.data import Dataset

from nnteleport.engine.activation import TeleportedActivation
from nnteleport.errors import InvalidValueError, UnsupportedModelError
from nnteleport.lab.data import DataBundle, ImageDataset, TensorPairDataset
from nnteleport.lab.training.batches import batches, model_device_dtype, to_device
from nnteleport.lab.training.checkpoint import data_fingerprint
from nnteleport.lab.training.history import History
from nnteleport.lab.training.optim import OptimizerName, StepDecay
from nnteleport.lab.training.rng import derived_seed, seed_all
from nnteleport.lab.training.standard import _example_pair, _Settings, _splits
from nnteleport.lab.training.teleport import (
    OptimizerStateOnTeleport,
    PseudoTeleport,
    Teleport,
    _loss_and_grad_norm,
)

__all__ = ["check_stackable", "train_stacked"]

# Adam's defaults in torch.optim.Adam (train() uses them)
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


# --------------------------------------------------------------------------------------------------
# the stack of parameters and buffers


def _signature(model: nn.Module) -> list[tuple[Any, ...]]:
    """What must agree between stacked members: module names and types, parameter and buffer names, shapes,
    dtypes, devices (and whether a parameter is trained)."""
    sig: list[tuple[Any, ...]] = [("module", n, type(m).__qualname__) for n, m in model.named_modules()]
    sig += [("parameter", n, tuple(p.shape), p.dtype, p.device, p.requires_grad) for n, p in model.named_parameters()]
    sig += [("buffer", n, tuple(b.shape), b.dtype, b.device) for n, b in model.named_buffers()]
    return sig


def _first_difference(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> str:
    for u, v in zip(a, b):
        if u != v:
            return f"{u} vs {v}"
    longer, extra = ("member 0", a[len(b)]) if len(a) > len(b) else ("this member", b[len(a)])
    return f"{longer} also has {extra}"


class _Stack:
    """Parameters and buffers of ``k`` members of one architecture, stacked along a new leading axis.

    ``params[name]`` has shape ``(k, *p.shape)`` (a leaf; ``requires_grad`` as the members' parameter),
    ``buffers[name]`` likewise. ``base`` (member 0's module) is the function evaluated by
    :func:`~torch.func.functional_call`.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        self.build(models)

    def build(self, models: Sequence[nn.Module]) -> None:
        """(Re-)stack the members' current parameters and buffers (new tensors)."""
        self.base = models[0]
        self.signature = _signature(self.base)
        for i, m in enumerate(models[1:], 1):
            self.check(m, f"member {i}")
        with torch.no_grad():
            self.params = {
                n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_(p.requires_grad)
                for n, p in self.base.named_parameters()
            }
            self.buffers = {
                n: torch.stack([dict(m.named_buffers())[n].detach() for m in models])
                for n, _ in self.base.named_buffers()
            }
        self.trainable = [n for n, p in self.params.items() if p.requires_grad]

    def check(self, model: nn.Module, who: str) -> None:
        """Raise :class:`UnsupportedModelError` unless ``model`` has the stack's architecture."""
        sig = _signature(model)
        if sig != self.signature:
            raise UnsupportedModelError(
                f"train_stacked: {who} has another architecture than member 0 (first difference: "
                f"{_first_difference(self.signature, sig)}); only models of one architecture can be stacked"
            )

    @torch.no_grad()
    def write_to(self, i: int, model: nn.Module) -> None:
        """Copy member ``i`` of the stack into ``model`` (in place)."""
        for n, p in model.named_parameters():
            p.copy_(self.params[n][i])
        for n, b in model.named_buffers():
            b.copy_(self.buffers[n][i])

    @torch.no_grad()
    def read_from(self, i: int, model: nn.Module) -> None:
        """Copy ``model``'s parameters and buffers into member ``i`` of the stack."""
        for n, p in model.named_parameters():
            self.params[n][i].copy_(p)
        for n, b in model.named_buffers():
            self.buffers[n][i].copy_(b)

    def forward(self, x: torch.Tensor, *, x_batched: bool = True) -> torch.Tensor:
        """``out[i] = f(P[i], x[i])`` (``x``: ``(k, B, ...)``) or ``f(P[i], x)`` (``x_batched=False``)."""

        def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (params, buffers), (xb,))

        try:
            return vmap(one, in_dims=(0, 0, 0 if x_batched else None), randomness="error")(self.params, self.buffers, x)
        except RuntimeError as e:
            if "random" in str(e):
                raise UnsupportedModelError(
                    f"train_stacked: {type(self.base).__name__} calls a random operation in its forward pass "
                    "(dropout in train mode?); train() draws it from each seed's global generator, vmap from one "
                    "generator for the whole stack, so the runs could not match; use train() for this model"
                ) from e
            raise UnsupportedModelError(
                f"train_stacked: torch.func.vmap cannot batch the forward pass of {type(self.base).__name__} "
                f"({type(e).__name__}: {str(e).splitlines()[0]}); use train() for this model"
            ) from e


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` in every place of ``model`` that holds the module object ``old``."""
    for parent in list(model.modules()):
        for attr, child in list(parent._modules.items()):
            if child is old:
                setattr(parent, attr, new)


class _Wrappers:
    """Gives every member the activation wrappers ``tau * f(x / tau)`` that any member has (a teleport adds them
    for non-homogeneous activations, and for ReLU where ``tau < 0``, inter-landscape sampling): the members
    without one get ``tau = 1``, which computes ``1 * f(x / 1) = f(x)`` exactly, so teleported arms and their
    baselines stack. :meth:`unpad` takes them out again (before a member's own teleport, and at the end)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        self.models = models
        self.padded: list[list[str]] = [[] for _ in models]

    def pad(self) -> None:
        sites: dict[str, torch.Tensor] = {}
        for m in self.models:
            for path, mod in m.named_modules():
                if isinstance(mod, TeleportedActivation):
                    sites.setdefault(path, mod.tau)
        for i, m in enumerate(self.models):
            for path, tau in sites.items():
                try:
                    mod = m.get_submodule(path)
                except AttributeError:
                    raise UnsupportedModelError(
                        f"train_stacked: member {i} has no module {path!r} (member 0 has one); only models of one "
                        "architecture can be stacked"
                    ) from None
                if isinstance(mod, TeleportedActivation):
                    continue
                if any(True for _ in mod.parameters()):
                    raise UnsupportedModelError(
                        f"train_stacked: a teleport wrapped {path!r} ({type(mod).__name__}, which has parameters) in "
                        f"one member but not in member {i}: their parameters no longer stack; use train()"
                    )
                _replace(m, mod, TeleportedActivation(mod, torch.ones_like(tau)))
                self.padded[i].append(path)

    def unpad(self, i: int) -> None:
        m = self.models[i]
        for path in self.padded[i]:
            wrapper = m.get_submodule(path)
            assert isinstance(wrapper, TeleportedActivation) and bool((wrapper.tau == 1).all()), path
            _replace(m, wrapper, wrapper.fn)
        self.padded[i] = []


# --------------------------------------------------------------------------------------------------
# the vectorised optimizer


class _StackedOptimizer:
    """SGD, SGD with momentum or Adam on the stacked parameters, member by member the update of
    ``torch.optim.SGD`` / ``torch.optim.Adam`` (single-tensor path, ``weight_decay`` as L2 in the gradient).

    ``reset(members)`` clears those members' state as a fresh torch optimizer would have it (no momentum buffer,
    zero Adam moments, step count 0). Members whose Adam step counts differ are updated one slice at a time
    (same operations on ``P[i]``), all others in one operation per parameter.
    """

    def __init__(self, stack: _Stack, name: OptimizerName, *, momentum: float, weight_decay: float) -> None:
        self.stack, self.name, self.weight_decay = stack, name, weight_decay
        self.momentum = momentum if name is OptimizerName.MOMENTUM else 0.0
        self.k = next(iter(stack.params.values())).shape[0] if stack.params else 0
        self.fresh = [True] * self.k  # momentum: no buffer yet
        self.steps = [0] * self.k  # adam: step counts
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        for n in stack.trainable:
            p = stack.params[n]
            if name is OptimizerName.MOMENTUM:
                self.state[n] = {"momentum_buffer": torch.zeros_like(p, memory_format=torch.preserve_format)}
            elif name is OptimizerName.ADAM:
                self.state[n] = {
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }

    def reset(self, members: Sequence[int]) -> None:
        with torch.no_grad():
            for i in members:
                self.fresh[i], self.steps[i] = True, 0
                for st in self.state.values():
                    for t in st.values():
                        t[i].zero_()

    def zero_grad(self) -> None:
        for n in self.stack.trainable:
            self.stack.params[n].grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        if self.name is OptimizerName.ADAM:
            for i in range(self.k):
                self.steps[i] += 1
        for n in self.stack.trainable:
            p = self.stack.params[n]
            if p.grad is None:
                continue
            grad = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            if self.name is OptimizerName.ADAM:
                self._adam(p, grad, self.state[n], lr)
            else:
                self._sgd(p, grad, self.state.get(n), lr)
        self.fresh = [False] * self.k

    def _sgd(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor] | None, lr: float) -> None:
        if self.momentum != 0:
            assert state is not None
            buf = state["momentum_buffer"]
            if all(self.fresh):
                buf.copy_(grad)
            elif not any(self.fresh):
                buf.mul_(self.momentum).add_(grad, alpha=1)
            else:
                for i in range(self.k):
                    if self.fresh[i]:
                        buf[i].copy_(grad[i])
                    else:
                        buf[i].mul_(self.momentum).add_(grad[i], alpha=1)
            grad = buf
        p.add_(grad, alpha=-lr)

    def _adam(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], lr: float) -> None:
        if len(set(self.steps)) == 1:
            groups: list[tuple[Any, int]] = [(slice(None), self.steps[0])]
        else:
            groups = [(i, s) for i, s in enumerate(self.steps)]
        for idx, step in groups:
            exp_avg, exp_avg_sq, g, q = state["exp_avg"][idx], state["exp_avg_sq"][idx], grad[idx], p[idx]
            exp_avg.lerp_(g, 1 - _BETA1)
            exp_avg_sq.mul_(_BETA2).addcmul_(g, g, value=1 - _BETA2)
            t = float(step)  # torch: the step count is a tensor read back as a float
            bias_correction1 = 1 - _BETA1**t
            bias_correction2 = 1 - _BETA2**t
            step_size = lr / bias_correction1
            denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(_EPS)
            q.addcdiv_(exp_avg, denom, value=-step_size)


# --------------------------------------------------------------------------------------------------
# per-member data and generators


class _MemberRNG:
    """Each member's own state of the global generators (python, numpy, torch), swapped in around the work
    that draws from them in ``train`` (the augmentation of a batch)."""

    def __init__(self) -> None:
        self.states: list[tuple[Any, Any, torch.Tensor]] = []

    def capture(self) -> None:
        self.states.append((random.getstate(), np.random.get_state(), torch.get_rng_state()))

    def run(self, i: int, fn: Callable[[], Any]) -> Any:
        py, nump, tor = self.states[i]
        random.setstate(py)
        np.random.set_state(nump)
        torch.set_rng_state(tor)
        try:
            return fn()
        finally:
            self.states[i] = (random.getstate(), np.random.get_state(), torch.get_rng_state())


def _epoch_batches(ds: Dataset, batch_size: int, gen: torch.Generator, limit: int) -> Iterator[Any]:
    """The batches one epoch of :class:`~.loop.Trainer` trains on, drawn as it draws them (it takes the batch
    after the last one before it stops: with ``max_iters_per_epoch`` that draw happens too)."""
    n = 0
    for x, y in batches(ds, batch_size, gen, shuffle=True):
        if n >= limit:
            break
        yield x, y
        n += 1


@torch.no_grad()
def _evaluate(
    stack: _Stack, ds: Dataset, batch_size: int, loss_fn: Callable[..., torch.Tensor], device: Any, dtype: Any
) -> list[tuple[float, float]]:
    """:func:`~nnteleport.lab.training.batches.evaluate` of every member (eval mode, one vmapped forward per
    batch): ``[(mean loss, accuracy)]``."""
    was_training = stack.base.training
    stack.base.eval()
    k = len(next(iter(stack.params.values()))) if stack.params else 0
    total, loss_sum, correct = 0, [0.0] * k, [0.0] * k
    try:
        for x, y in batches(ds, batch_size, None, shuffle=False, augment=False):
            x, y = to_device(x, device, dtype), to_device(y, device, dtype)
            out = stack.forward(x, x_batched=False)
            losses = vmap(loss_fn, in_dims=(0, None))(out, y).tolist()
            classify = out.ndim == 3 and not y.is_floating_point() and y.ndim == 1
            hits = (out.argmax(-1) == y).sum(-1).tolist() if classify else [float("nan")] * k
            for i in range(k):
                loss_sum[i] += losses[i] * len(x)
                correct[i] += float(hits[i])
            total += len(x)
    finally:
        stack.base.train(was_training)
    if total == 0:
        return [(float("nan"), float("nan"))] * k
    return [(loss_sum[i] / total, correct[i] / total) for i in range(k)]


# --------------------------------------------------------------------------------------------------
# the entry point


def _per_member(value: Any, k: int, name: str, scalar: Callable[[Any], bool]) -> list[Any]:
    """``value`` for every member: one value for all, or a sequence of ``k`` values."""
    if scalar(value):
        return [value] * k
    values = list(value)
    if len(values) != k:
        raise InvalidValueError(f"train_stacked: {name} has {len(values)} entries for {k} models; give one per model")
    return values


def _check_optimizer(optimizer: Any) -> OptimizerName:
    if not isinstance(optimizer, str):
        raise InvalidValueError(
            f"train_stacked: optimizer must be one of sgd, momentum, adam (a callable optimizer such as G-space "
            f"cannot be vectorised; use train()), got {optimizer!r}"
        )
    return OptimizerName.parse(optimizer)


def check_stackable(model: nn.Module, x: torch.Tensor, *, optimizer: Any = "sgd") -> None:
    """Raise now what :func:`train_stacked` would raise about ``model``'s forward pass (:class:`UnsupportedModelError`:
    random operations such as dropout, forwards vmap cannot batch) and ``optimizer`` (:class:`InvalidValueError`:
    not sgd / momentum / adam), from one vmapped forward pass of two copies of ``model`` (train mode, no gradients;
    ``model`` unchanged) on the input batch ``x`` ``(B, *input_shape)``. Teleport-time refusals are not probed."""
    _check_optimizer(optimizer)
    copies = [copy.deepcopy(model) for _ in range(2)]
    stack = _Stack(copies)
    stack.base.train()
    with torch.no_grad():
        stack.forward(to_device(x, *model_device_dtype(stack.base)), x_batched=False)


def train_stacked(
    models: Sequence[nn.Module],
    data: DataBundle | tuple[Dataset, Dataset | None],
    *,
    epochs: int,
    seeds: Sequence[int],
    batch_size: int = 64,
    optimizer: str = "sgd",
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    lr_decay_epochs: Sequence[int] = (80,),
    lr_decay_gamma: float = 0.1,
    init: str | None = None,
    teleport_at: int | Sequence[int | Sequence[int] | None] | None = None,
    cob_range: float = 0.9,
    sampling: str = "inter",
    pseudo_teleport: bool | Sequence[bool] = False,
    optimizer_state_on_teleport: str = "reset",
    reset_optimizer_at: Sequence[int] = (),
    teleport_batch_size: int | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    eval_every: int = 1,
    eval_batch_size: int = 512,
    max_iters_per_epoch: int | None = None,
) -> list[History]:
    """Train ``models`` side by side in one process, member ``i`` as ``train(models[i], data, seed=seeds[i],
    teleport_at=teleport_at[i], pseudo_teleport=pseudo_teleport[i], **shared options)`` would (see the module
    docstring for the maths and how close the results are), and return their histories.

    Parameters
    ----------
    models : sequence of nn.Module
        ``k >= 1`` distinct models of one architecture (e.g. ``build_model`` after ``torch.manual_seed(s)`` for
        each seed; the same construction twice for a teleported arm and its baseline). Trained in place (moved to
        ``device``/``dtype`` first when given); their final parameters and buffers are written back.
    data : DataBundle or (train, val)
        As for :func:`~nnteleport.lab.training.train`.
    seeds : sequence of int
        One seed per model: the global generators before ``init``, the data order and the teleports.
    teleport_at : int, or one entry per model (None, int or sequence of int)
        Epoch boundaries of each member's teleports (one value: the same for all members).
    pseudo_teleport : bool or one per model
        Replace that member's teleports by the pseudo-teleportation control.
    optimizer : {"sgd", "momentum", "adam"}
        Built-in optimizers only (a callable optimizer cannot be vectorised).
    optimizer_state_on_teleport : {"reset", "keep"}
        ``"transform"`` is not supported here.
    loss_fn : callable, optional
        ``loss_fn(out, y) -> mean loss`` (default cross-entropy); evaluated under ``vmap``.
    epochs, batch_size, lr, momentum, weight_decay, lr_decay_epochs, lr_decay_gamma, init, cob_range, sampling,
    reset_optimizer_at, teleport_batch_size, device, dtype, eval_every, eval_batch_size, max_iters_per_epoch
        As for :func:`~nnteleport.lab.training.train`, shared by all members.

    Returns
    -------
    list of History
        One per model, with the fields ``train`` fills (``penalty`` NaN; ``seconds`` the stacked epoch's time).

    Raises
    ------
    InvalidValueError
        Invalid option (as :func:`~nnteleport.lab.training.train`), or per-member lists of the wrong length.
    UnsupportedModelError
        Models that cannot be stacked or vectorised (see the module docstring).
    """
    k = len(models)
    if k == 0:
        raise InvalidValueError("train_stacked: models is empty; give at least one model")
    if len({id(m) for m in models}) != k:
        raise InvalidValueError("train_stacked: the same model object appears twice; give each member its own model")
    opt_name = _check_optimizer(optimizer)
    policy = OptimizerStateOnTeleport.parse(optimizer_state_on_teleport)
    if policy is OptimizerStateOnTeleport.TRANSFORM:
        raise InvalidValueError(
            "train_stacked: optimizer_state_on_teleport='transform' is not supported; use 'reset' or 'keep', or train()"
        )
    seeds = _per_member(seeds, k, "seeds", lambda v: False)
    tp_at = _per_member(teleport_at, k, "teleport_at", lambda v: v is None or isinstance(v, int))
    pseudo = _per_member(pseudo_teleport, k, "pseudo_teleport", lambda v: isinstance(v, bool))
    settings = [
        _Settings(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                  weight_decay=weight_decay, lr_decay_epochs=lr_decay_epochs, lr_decay_gamma=lr_decay_gamma,
                  init=init, teleport_at=tp_at[i], cob_range=cob_range, sampling=sampling,
                  pseudo_teleport=pseudo[i], optimizer_state_on_teleport=optimizer_state_on_teleport,
                  teleport_cob="random", teleport_every=None, teleport_options=None, reset_optimizer_every=None,
                  reset_optimizer_at=reset_optimizer_at, teleport_batch_size=teleport_batch_size, penalty=None,
                  loss_fn=loss_fn, callbacks=(), seed=int(seeds[i]), device=device, dtype=dtype,
                  checkpoint_dir=None, tensorboard_dir=None, progress=False, desc=None, eval_every=eval_every,
                  eval_batch_size=eval_batch_size, max_iters_per_epoch=max_iters_per_epoch)
        for i in range(k)
    ]  # fmt: skip
    train_ds, val_ds = _splits(data)
    rngs = _MemberRNG()
    generic = not isinstance(train_ds, (TensorPairDataset, ImageDataset))  # may draw from the global generators
    movers: list[Teleport | None] = [None] * k
    for i, (m, s) in enumerate(zip(models, settings)):  # train()'s preamble, member by member, in its order
        if device is not None or dtype is not None:
            m.to(device=device, dtype=dtype)
        seed_all(s.seed)
        if init is not None:
            from nnteleport.lab.init import initialize

            initialize(m, init)
        if s.teleport_epochs:
            x_tp, y_tp = (to_device(t, *model_device_dtype(m)) for t in
                          _example_pair(train_ds, teleport_batch_size or batch_size))  # fmt: skip
            kind = PseudoTeleport if s.pseudo_teleport else Teleport
            movers[i] = kind(x_tp, s.teleport_epochs, seed=s.seed, cob_range=cob_range, sampling=sampling, y=y_tp)
        if generic:  # train() reads the first examples for its checkpoint fingerprint: the same draws
            data_fingerprint(train_ds, val_ds)
        rngs.capture()
    wrappers = _Wrappers(models)
    wrappers.pad()  # members given already teleported
    stack = _Stack(models)
    return _fit(stack, wrappers, models, settings, movers, rngs, train_ds, val_ds, opt_name,
                reset=policy is OptimizerStateOnTeleport.RESET, loss_fn=loss_fn or F.cross_entropy)  # fmt: skip


def _fit(
    stack: _Stack,
    wrappers: _Wrappers,
    models: Sequence[nn.Module],
    settings: list[_Settings],
    movers: list[Teleport | None],
    rngs: _MemberRNG,
    train_ds: Dataset,
    val_ds: Dataset | None,
    opt_name: OptimizerName,
    *,
    reset: bool,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> list[History]:
    """The epochs of :class:`~.loop.Trainer` with the standard callbacks of ``train`` (record, teleport, reset,
    evaluation, schedule, timer), for the whole stack."""
    s0, k = settings[0], len(models)
    device, dtype = model_device_dtype(stack.base)
    opt = _StackedOptimizer(stack, opt_name, momentum=s0.momentum, weight_decay=s0.weight_decay)
    decay = StepDecay(s0.lr_decay_epochs, s0.lr_decay_gamma)
    histories = [History() for _ in range(k)]
    loaders = [torch.Generator().manual_seed(derived_seed(s.seed, 0xDA7A)) for s in settings]
    n_batches = -(-len(train_ds) // s0.batch_size)  # type: ignore[arg-type]
    limit = n_batches if s0.max_iters_per_epoch is None else min(n_batches, s0.max_iters_per_epoch)
    swap = not isinstance(train_ds, TensorPairDataset)  # other datasets may draw from the global generators
    resets = set(s0.reset_optimizer_at)
    stack.base.train()
    for epoch in range(s0.epochs):
        started = time.perf_counter()
        for i, mover in enumerate(movers):
            if mover is not None and epoch in mover.epochs:
                _teleport_member(stack, wrappers, models, mover, i, epoch, histories[i], loss_fn)
                if reset:
                    opt.reset([i])
        if epoch in resets:
            opt.reset(range(k))
        if epoch == 0 and val_ds is not None:
            for h, (vl, va) in zip(histories, _evaluate(stack, val_ds, s0.eval_batch_size, loss_fn, device, dtype)):
                h.initial = {"val_loss": vl, "val_acc": va}
        lr = s0.lr * decay.factor(epoch)  # StepDecay: base * factor
        its = [_epoch_batches(train_ds, s0.batch_size, g, limit) for g in loaders]
        losses, corrects, sizes = [], [], []
        for _ in range(limit):
            pairs = [rngs.run(i, lambda it=it: next(it)) if swap else next(it) for i, it in enumerate(its)]
            x = to_device(torch.stack([p[0] for p in pairs]), device, dtype)
            y = to_device(torch.stack([p[1] for p in pairs]), device, dtype)
            opt.zero_grad()
            out = stack.forward(x)
            loss = vmap(loss_fn)(out, y)
            loss.sum().backward()
            opt.step(lr)
            losses.append(loss.detach())
            if out.ndim == 3 and not y.is_floating_point() and y.ndim == 2:
                corrects.append((out.detach().argmax(-1) == y).sum(-1))
            sizes.append(x.shape[1])
        for i, it in enumerate(its):  # the draw that ends the epoch (see _epoch_batches)
            rngs.run(i, lambda it=it: next(it, None)) if swap else next(it, None)
        _record_epoch(histories, epoch, losses, corrects, sizes, lr)
        last = epoch == s0.epochs - 1
        if val_ds is not None and ((epoch + 1) % s0.eval_every == 0 or last):
            vals = _evaluate(stack, val_ds, s0.eval_batch_size, loss_fn, device, dtype)
        else:
            vals = [(float("nan"), float("nan"))] * k
        seconds = time.perf_counter() - started
        for h, (vl, va) in zip(histories, vals):
            h.val_loss.append(vl)
            h.val_acc.append(va)
            h.penalty.append(float("nan"))
            h.seconds.append(seconds)
    for i, m in enumerate(models):
        stack.write_to(i, m)
        wrappers.unpad(i)
    for h, mover in ((h, m) for h, m in zip(histories, movers) if m is not None):  # Teleport.on_train_end
        total, wall = float(sum(h.timing.get(f"{mover.kind}_seconds", []))), sum(h.seconds)
        h.timing.update(
            {
                f"{mover.kind}_seconds_total": total,
                f"{mover.kind}_time_share": total / wall if wall > 0 else float("nan"),
            }
        )
    return histories


def _teleport_member(
    stack: _Stack,
    wrappers: _Wrappers,
    models: Sequence[nn.Module],
    mover: Teleport,
    i: int,
    epoch: int,
    history: History,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """Teleport member ``i`` as :class:`~.teleport.Teleport` does in ``train`` (on its own module, with the
    structure ``train`` would have, then back into the stack; re-stacked if it gained activation wrappers) and
    record it as ``train`` does (the loss and squared gradient norm on the teleport batch before and after, in
    eval mode; the wall times in ``history.timing``)."""
    model = models[i]
    stack.write_to(i, model)
    wrappers.unpad(i)
    measured = time.perf_counter()
    loss0, g0 = _loss_and_grad_norm(model, mover.x, mover.y, loss_fn)
    started = time.perf_counter()
    distance, weight_norm = mover.move(model, epoch)
    seconds = time.perf_counter() - started  # train() also counts its optimizer reset (microseconds)
    loss1, g1 = _loss_and_grad_norm(model, mover.x, mover.y, loss_fn)
    history.timing.setdefault(f"{mover.kind}_seconds", []).append(seconds)
    history.timing.setdefault("measure_seconds", []).append(time.perf_counter() - measured - seconds)
    new_sites = any(
        isinstance(mod, TeleportedActivation) and ("buffer", f"{path}.tau") not in {s[:2] for s in stack.signature}
        for path, mod in model.named_modules()
    )
    if new_sites:  # every member gets the new wrappers: re-stack (the optimizer state is kept, keyed by name)
        for j, m in enumerate(models):
            if j != i:
                stack.write_to(j, m)
        wrappers.pad()
        stack.build(models)
    else:
        wrappers.pad()
        stack.check(model, f"member {i} after its teleport at epoch {epoch}")
        stack.read_from(i, model)
    history.teleports.append({  # Teleport's record (step: the steps done before it)
        "epoch": epoch, "step": int(sum(history.iters_per_epoch)), "at": "epoch", "kind": mover.kind,
        "cob": str(mover.cob), "cob_range": float(mover.cob_range), "sampling": str(mover.sampling),
        "distance": distance, "weight_norm": weight_norm, "loss_before": loss0, "loss_after": loss1,
        "grad_norm_sq_before": g0, "grad_norm_sq_after": g1,
    })  # fmt: skip


def _record_epoch(
    histories: list[History],
    epoch: int,
    losses: list[torch.Tensor],
    corrects: list[torch.Tensor],
    sizes: list[int],
    lr: float,
) -> None:
    """:class:`~.callbacks.RecordHistory` for every member (one transfer of the epoch's losses)."""
    seen, n_it = sum(sizes), len(sizes)
    per_step = torch.stack(losses).double().cpu().tolist()  # (steps, k)
    hits = torch.stack(corrects).sum(0).tolist() if len(corrects) == n_it and corrects else None
    for i, h in enumerate(histories):
        iter_losses = [row[i] for row in per_step]
        h.iter_loss.extend(iter_losses)
        h.epoch.append(epoch)
        h.train_loss.append(sum(li * n for li, n in zip(iter_losses, sizes)) / seen)
        h.train_acc.append(float(hits[i]) / seen if hits is not None else float("nan"))
        h.lr.append(float(lr))
        h.iters_per_epoch.append(n_it)
