"""Any ``torch.optim`` optimizer on the coordinates of a chart (G-space: Jestädt 2025, Sec. 2.2.4; Meng et al.).

:class:`GSpaceOptimizer` is a change of coordinates wrapped around an inner optimizer: after an ordinary
``loss.backward()`` on the model it asks the chart's step plan for ``dL/dv`` (inverse chain rule), lets the
inner optimizer update the coordinates ``v`` and has the plan write the weights back. It only talks to the chart
through the small :class:`Chart` protocol (implemented by :class:`~nnteleport.gspace.GSpace`), so a new
parameter space reuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from nnteleport.errors import UnsupportedModelError
from nnteleport.gspace.chart import GSpace, Skeleton

__all__ = ["Chart", "GSpaceOptimizer", "StepPlan"]


class StepPlan(Protocol):
    """The per-step work of a chart on dense coordinates ``V`` and their gradient buffer ``D``."""

    @property
    def native(self) -> bool:
        """Whether compiled kernels run it (else whole-tensor PyTorch operations)."""
        ...

    def pull(self) -> bool:
        """``D = dL/dv`` from the model's ``.grad``; False (nothing written) when no parameter has a gradient."""
        ...

    def push(self) -> None:
        """Weights from ``V`` (weight allocation)."""
        ...

    def restore(self) -> None:
        """Give the model back the gradients ``backward`` computed (undo what ``pull`` changed)."""
        ...

    def invalidate(self) -> None:
        """``V`` was changed from outside: recompute derived quantities before the next use."""
        ...

    def mirror_direct(self) -> None:
        """Direct chart: copy the in-place coordinates into the dense buffer ``V`` (for checkpoints)."""
        ...


class Chart(Protocol):
    """What :class:`GSpaceOptimizer` needs from a coordinate map ``v <-> w`` of a model's parameters.

    Coordinates live in one dense flat buffer of ``dense_numel`` entries. A chart may offer a *direct* mode
    (``unit_skeleton``): some parameters are their own coordinates (``direct_split``) and are optimised in place.
    """

    dense_numel: int

    @property
    def unit_skeleton(self) -> bool: ...

    def named_parameters(self) -> list[tuple[str, Tensor]]: ...

    def parameters(self) -> list[Tensor]: ...

    def dense_values(self, out: Tensor | None = None) -> Tensor: ...

    def write_dense(self, V: Tensor) -> None: ...

    def refresh(self) -> None: ...

    def reparametrize(self) -> None: ...

    def chart_state(self) -> dict[str, Any]: ...

    def load_chart_state(self, state: dict[str, Any], *, fixed_values: bool = True) -> bool: ...

    def step_plan(self, V: Tensor, D: Tensor, *, direct: bool, native: bool | None) -> StepPlan: ...

    def direct_split(self) -> tuple[list[Tensor], slice]: ...


def _versions(params: list[Tensor]) -> list[int]:
    """The in-place version counters of ``params`` (``Tensor._version``: no public equivalent exists)."""
    try:
        return [p._version for p in params]
    except AttributeError as err:  # a private attribute: fail loudly if torch drops it
        raise RuntimeError(
            f"GSpaceOptimizer reads Tensor._version to notice weights changed from outside; this torch "
            f"{torch.__version__} has no such attribute (please report it to nnteleport)"
        ) from err


def _unhooked_step(inner: torch.optim.Optimizer) -> Callable[..., Any]:
    """The inner optimizer's ``step`` without torch's hook wrapper, bound to it.

    ``torch.optim.Optimizer`` wraps every optimizer class's ``step`` (``functools.wraps``, marked ``hooked``) to
    run the step hooks inside a profiler label. The G-space optimizer's own ``step`` carries that wrapper, so the
    hooks run once per step, for the optimizer the user holds; wrapping the inner step as well would cost a
    second profiler label (~2-7 us, a quarter of an SGD step on the thesis MLP) and run global hooks twice.
    Hooks registered on ``.inner`` itself therefore do not run. If torch's wrapper ever looks different, the
    wrapped step is used (correct, only slower).
    """
    step = type(inner).step
    raw = getattr(step, "__wrapped__", None) if getattr(step, "hooked", False) else None
    if raw is None:
        return inner.step
    return raw.__get__(inner, type(inner))


def _check_trainable(chart: Chart) -> None:
    """Refuse frozen parameters: G-space coordinates mix every layer's weights, so a step on them would move a
    ``requires_grad=False`` weight (which plain optimizers leave alone)."""
    frozen = [name for name, p in chart.named_parameters() if not p.requires_grad]
    if frozen:
        raise UnsupportedModelError(
            f"GSpaceOptimizer: parameters {frozen[:5]} have requires_grad=False, but a G-space step moves every "
            "weight of the chain (a path value mixes the weights of all layers); unfreeze them, or optimise the "
            "trainable layers with a plain torch.optim optimizer"
        )


class GSpaceOptimizer(torch.optim.Optimizer):
    """Run any ``torch.optim`` optimizer on the G-space coordinates of ``model``.

    After an ordinary ``loss.backward()`` on the model, :meth:`step` computes ``dL/dv`` by the inverse chain
    rule (:meth:`GSpace.dense_gradient`), lets the inner optimizer update the coordinates ``v`` and writes the
    weights back (weight allocation). The inner optimizer keeps its state (momentum, Adam moments) across
    steps; ``reset_state_each_step=True`` reproduces the thesis' published wrapper, which builds a fresh inner
    optimizer every step (Jestädt Sec. 2.2.4).

    Learning rates: G-SGD moves a weight by ``lr * dL/dw / (P S)^2``, and at a standard initialisation the path
    products are small (``1 / (P S)^2`` is ``1e4 .. 1e8``), so SGD's usual rates explode, with either chart (zoo
    MLP on digits, 5 steps: loss 2.31 -> 3880 at ``lr=0.1``, 3.6 at ``1e-4``, descending at ``1e-5``). Start
    near ``lr=1e-5`` and search by decades (the ``gspace-lr-grid`` experiment); ``GSpace.path_factors()`` gives
    ``P`` and ``S``.

    Parameters
    ----------
    model : nn.Module or Chart
        The network (a :class:`GSpace` is built with ``skeleton`` / ``reparametrize``) or a prepared chart (a
        :class:`GSpace`, or any object implementing :class:`Chart`). Every chain parameter must have
        ``requires_grad=True`` (else :class:`~nnteleport.errors.UnsupportedModelError`: a G-space step would
        move frozen weights).
    optimizer_cls : type[torch.optim.Optimizer]
        E.g. ``torch.optim.SGD``, ``torch.optim.Adam``.
    skeleton, reparametrize
        Passed to :class:`GSpace`. ``reparametrize=True`` (Meng et al.'s unit skeleton) also enables the direct
        chart, the fastest one (see ``direct``); the network function is unchanged either way, and both charts
        train the same functions.
    reset_state_each_step : bool
        Clear the inner optimizer's state after every step (thesis behaviour; Adam then takes
        ``lr * g / (|g| + eps)`` steps, momentum is lost).
    direct : bool or None
        Optimise the first layer's weight and the biases in place (their coordinates are these parameters up to a
        constant sign when every skeleton path product is ``±1``, :class:`~nnteleport.gspace._hotpath.HotPath`).
        ``None``: whenever the skeleton is unit (after ``reparametrize=True``); ``True`` raises if it is not.
    native : bool or None
        Run the per-step chart work in the fused C kernels of :mod:`nnteleport.gspace._native` (CPU, float32 /
        float64). ``None``: when they can be built and the chart has at most 4M coordinates (any size with one
        torch thread); ``False``: whole-tensor PyTorch operations; ``True``: raise if unavailable.
    **optimizer_kwargs
        All arguments of ``optimizer_cls`` (``lr``, ``momentum``, ``betas``, ``weight_decay``, ...). Weight
        decay then acts on the path values.

    Notes
    -----
    Thesis chart: the inner optimizer holds one tensor, the dense coordinates (shape ``(m,)``,
    :meth:`GSpace.layout_views`); the ``H`` entries at the fixed skeleton positions are zero with zero gradient,
    so they stay zero under every element-wise optimizer and add nothing to norms. Direct chart: it holds the
    first layer's weight, the biases and the coordinates of layers ``1..L-1`` (a view of the dense buffer); the
    model's gradients are left as ``backward`` computed them. ``param_groups``, ``state``, ``state_dict`` and
    ``load_state_dict`` are the inner optimizer's, so learning-rate schedulers work. If the model's weights are
    changed from outside (e.g. ``model.load_state_dict``), the coordinates are re-read at the next step
    (tracked through the parameters' version counters); :meth:`sync` does it explicitly. :meth:`state_dict`
    also holds the skeleton and the coordinates, so a run resumed from a checkpoint continues bit-identically.

    Per step (after ``loss.backward()``) the wrapper adds two calls of the fused kernels (gradient ``G K`` with
    the pred-edge corrections; path factors and weight allocation), or, eagerly, a fixed number of whole-tensor
    operations whatever the depth (one product, copy and product for the gradient, one product, one column sum
    per group of equal-shaped layers, one division and one ``index_add_`` for the corrections; one gather and
    one division per group for the factors, one ``addcmul`` and one ``foreach`` copy for the weights).
    """

    def __init__(
        self,
        model: nn.Module | Chart,
        optimizer_cls: Callable[..., torch.optim.Optimizer] = torch.optim.SGD,
        *,
        skeleton: str | Skeleton = "greedy",
        reparametrize: bool = False,
        reset_state_each_step: bool = False,
        direct: bool | None = None,
        native: bool | None = None,
        **optimizer_kwargs: Any,
    ) -> None:
        if isinstance(model, nn.Module):
            if not all(p.requires_grad for p in model.parameters()):
                _check_trainable(GSpace(model, skeleton=skeleton))  # before reparametrize rescales anything
            gs: Chart = GSpace(model, skeleton=skeleton, reparametrize=reparametrize)
        else:
            gs = model
        _check_trainable(gs)
        self.gspace = gs
        self.reset_state_each_step = bool(reset_state_each_step)
        if direct is None:
            direct = gs.unit_skeleton
        elif direct and not gs.unit_skeleton:
            raise ValueError(
                "direct=True needs every skeleton path product to be exactly ±1; build the optimizer with "
                "reparametrize=True"
            )
        self._direct = bool(direct)
        self._native = native
        self._coords = gs.dense_values().clone().requires_grad_(True)
        self._cdet = self._coords.detach()  # same storage and version counter
        self._grad_buf = torch.zeros_like(self._coords)
        self._hot = gs.step_plan(self._cdet, self._grad_buf, direct=self._direct, native=native)
        if self._direct:
            # the first layer's weight and the biases are coordinates themselves (sign-normalised, see HotPath);
            # the weights of layers 1..L-1 are a leaf view of the dense coordinates
            inner_params, tail = gs.direct_split()
            has_tail = tail.stop > tail.start
            self._tail_coords = self._cdet[tail].detach().requires_grad_(True) if has_tail else None
            self._tail_grad = self._grad_buf[tail]
            if self._tail_coords is not None:
                inner_params.append(self._tail_coords)
        else:
            inner_params = [self._coords]
        self.inner = optimizer_cls(inner_params, **optimizer_kwargs)
        self._inner_step = _unhooked_step(self.inner)
        # torch.optim.Optimizer wraps step() with its public hook machinery (global and per-optimizer step
        # pre / post hooks, profiler label), as for any optimizer
        super().__init__(inner_params, {})
        self._alias()
        self._params = gs.parameters()
        self._versions = _versions(self._params)

    @property
    def direct(self) -> bool:
        """Whether the first layer's weight and the biases are optimised in place (unit skeleton, see
        :class:`~nnteleport.gspace._hotpath.HotPath`)."""
        return self._direct

    @property
    def native(self) -> bool:
        """Whether the fused C kernels run the per-step work (else whole-tensor PyTorch operations)."""
        return self._hot.native

    def _alias(self) -> None:
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        self.defaults = self.inner.defaults

    @torch.no_grad()
    def sync(self) -> None:
        """Re-read the chart constants and the coordinates from the model's current weights (same skeleton
        positions; the inner optimizer's state is kept). With the direct chart, the weights are reparametrised
        again (function-preserving) if their skeleton weights are no longer ``±1``."""
        gs = self.gspace
        gs.refresh()
        if self._direct and not gs.unit_skeleton:
            gs.reparametrize()
        self._rebuild()

    def _rebuild(self) -> None:
        """Coordinates from the weights and a fresh hot path (after the chart's constants changed)."""
        self.gspace.dense_values(out=self._cdet)
        self._hot = self.gspace.step_plan(self._cdet, self._grad_buf, direct=self._direct, native=self._native)
        self._versions = _versions(self._params)

    def _pull_grads(self) -> None:
        if not all(p.requires_grad for p in self._params):
            _check_trainable(self.gspace)
        if _versions(self._params) != self._versions:
            self.sync()
        ok = self._hot.pull()
        if self._direct:
            if self._tail_coords is not None:
                self._tail_coords.grad = self._tail_grad if ok else None
        else:
            self._coords.grad = self._grad_buf if ok else None

    def _push_weights(self) -> None:
        self._hot.restore()
        self._hot.push()
        self._versions = _versions(self._params)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One optimizer step in G-space; ``closure`` (optional) re-evaluates the model and calls backward.

        Optimizer step pre/post hooks (global and registered on this optimizer) run as for any ``torch.optim``
        optimizer (``torch.optim.Optimizer`` wraps this method); the inner optimizer's step runs without that
        wrapper (:func:`_unhooked_step`), so each hook runs once per step.
        """
        if closure is None:
            self._pull_grads()
            loss = self._inner_step()
        else:

            def inner_closure() -> Any:
                self._push_weights()
                with torch.enable_grad():
                    value = closure()
                self._pull_grads()
                return value

            loss = self._inner_step(inner_closure)
        self._push_weights()
        if self.reset_state_each_step:
            self.inner.state.clear()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the model's gradients (the ones ``loss.backward()`` fills); the coordinates' gradient is
        recomputed from them at every step."""
        for p in self._params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict plus, under ``"gspace"``, everything the chart needs to resume
        exactly: the skeleton (:meth:`GSpace.chart_state`) and the master coordinates ``coords`` (dense
        layout). ``stale`` records that the model's weights were changed from outside since the last step (the
        coordinates are then re-read from the weights after loading, as the next step would do)."""
        sd = self.inner.state_dict()
        stale = _versions(self._params) != self._versions
        if self._direct and not stale:
            self._hot.mirror_direct()  # the dense first-layer and bias regions, so that coords are complete
        sd["gspace"] = {
            **self.gspace.chart_state(),
            "coords": self._coords.detach().clone(),
            "stale": stale,
            "direct": self._direct,
        }
        return sd

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load :meth:`state_dict`: inner optimizer state, skeleton and coordinates.

        Load the model's weights first (``model.load_state_dict``), then this: the chart adopts the saved
        skeleton (not one selected from the loaded weights) and the saved coordinates, so training continues
        bit-identically. If the model's skeleton weights differ from the saved ones (e.g. the optimizer was
        built with ``reparametrize=True``, which rescaled the model), the chain's weights are written from the
        saved skeleton weights and coordinates, i.e. restored to those of the checkpoint. A state dict without
        ``"gspace"`` (older versions) keeps the current skeleton and re-reads the coordinates from the weights.
        """
        state_dict = dict(state_dict)
        chart = state_dict.pop("gspace", None)
        if chart is not None and bool(chart.get("direct", False)) != self._direct:
            saved = "direct (unit skeleton)" if chart.get("direct") else "dense"
            raise ValueError(
                f"the state dict was saved by a G-space optimizer with the {saved} chart, this one uses the "
                f"{'direct' if self._direct else 'dense'} chart; build it with the same reparametrize / direct "
                "arguments as the saved one"
            )
        self.inner.load_state_dict(state_dict)
        self._alias()
        if chart is None:
            self.sync()
            return
        coords = torch.as_tensor(chart["coords"])
        if coords.shape != self._coords.shape:
            raise ValueError(
                f"saved G-space coordinates have shape {tuple(coords.shape)}, this chain's dense layout "
                f"({self.gspace.dense_numel},); load it into the model it was saved from"
            )
        stale = bool(chart.get("stale", False))
        changed = self.gspace.load_chart_state(chart, fixed_values=not stale)
        if stale:
            self.sync()
            return
        self._hot = self.gspace.step_plan(self._cdet, self._grad_buf, direct=self._direct, native=self._native)
        self._cdet.copy_(coords)
        self._hot.invalidate()
        if changed:
            self.gspace.write_dense(self._cdet)  # all weights, the direct ones included
            self._hot.invalidate()
        self._versions = _versions(self._params)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "_params"):
            raise ValueError("GSpaceOptimizer covers the whole chain; parameter groups cannot be added")
        super().add_param_group(param_group)

    def __repr__(self) -> str:
        return f"GSpaceOptimizer({self.gspace!r}, inner={type(self.inner).__name__})"
