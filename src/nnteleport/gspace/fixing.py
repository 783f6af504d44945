"""Weight fixing: remove the positive-rescaling symmetries by freezing one outgoing weight per hidden neuron.

Jestädt (2025, Ch. 3): fixing one outgoing weight ``w_k`` of a hidden neuron forbids its rescaling
``w_in -> alpha w_in, w_out -> w_out / alpha``, so a network with ``H`` hidden neurons keeps ``m - H`` free
parameters, the dimension of the G-space (:mod:`nnteleport.gspace`).

Which weights (``select``)
--------------------------
* ``"diagonal"`` (thesis Sec. 3.0.3): hidden neuron ``k`` of layer ``i`` fixes the entry of layer ``i+1`` in
  row ``k mod rows`` (for a convolution: the kernel centre of input channel ``k``; after a flatten: the centre
  feature of channel ``k``).
* ``"hungarian"`` (thesis Sec. 6.3.1): going backwards from the output, each layer's neurons are matched to
  rows of the next layer by :func:`scipy.optimize.linear_sum_assignment` minimising
  ``|log(|w| / value)|`` over the candidate entries (the best kernel position per pair), i.e. choosing the
  weights that are already closest to ``±value`` in ratio, so the reparametrisation below rescales as little
  as possible (well conditioned). With more neurons than rows, the assignment is repeated on the unmatched
  neurons. With ``value=None`` the target is ``±1``. (The thesis scores ``|w - 1|``; the ratio is what
  measures the size of the rescaling, so we use it.)

Which values (``value``)
------------------------
``None`` keeps the current values. A float ``c > 0`` rescales the network function-preservingly so that
every fixed weight is ``±c`` (sign kept; thesis Sec. 3.0.4 / 6.3.1): backwards from the output, neuron ``k``
of layer ``i`` gets ``alpha_k = |w_k| / c`` (``w_k`` its fixed weight after the later layers were rescaled),
incoming weights and bias times ``alpha_k``, outgoing divided by ``alpha_k``.

The guarantee (beyond the thesis)
---------------------------------
The thesis zeroes the gradients of the fixed entries with hooks, which lets weight decay, AdamW's decoupled
decay or stale momentum move them. Here the fixed entries are *restored* after every step of the optimizers
that train them (``H`` indexed writes per step, no full-size operation), and their gradients are zeroed in place
after accumulation (so momentum buffers, Adam moments and gradient norms ignore them). Code that changes
weights without an optimizer step can call :meth:`FixedWeights.restore`.

Which optimizers restore them
-----------------------------
* ``fix_weights(model, optimizer=opt)`` or ``handle.attach(opt)``: exactly those optimizers (a step post-hook
  registered on each, ``Optimizer.register_step_post_hook``); nothing else in the process is touched.
* Without an optimizer (``handle = fix_weights(model)``, then ``opt = SGD(model.parameters())``): every
  optimizer *whose parameter groups hold one of the fixed parameters* restores them (one process-wide step
  post-hook per handle, which checks membership once per optimizer and caches it); an unrelated optimizer
  never restores them. The first :meth:`~FixedWeights.attach` switches the handle to per-optimizer hooks.
* ``with fix_weights(model, optimizer=opt) as handle: ...`` releases the hooks on exit (:meth:`remove`).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.hooks import RemovableHandle

from nnteleport._choice import Choice
from nnteleport.gspace.chains import ChainLayer, rescale_chain, trace_chain

__all__ = ["FixedWeights", "Selection", "fix_weights"]


class Selection(Choice, what="select"):
    """How the fixed weights are selected (see the module docstring)."""

    DIAGONAL = "diagonal"
    HUNGARIAN = "hungarian"


class FixedWeights:
    """Handle returned by :func:`fix_weights`.

    Attributes
    ----------
    masks : dict[str, Tensor]
        Parameter name -> bool mask (the parameter's shape) of the fixed entries.
    values : dict[str, Tensor]
        Parameter name -> the fixed values, in the order of ``mask.flatten().nonzero()``.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[ChainLayer],
        fixed_flat: list[Tensor],
        optimizers: Iterable[Optimizer] = (),
    ) -> None:
        self.model = model
        self._entries: list[tuple[str, Tensor, Tensor, Tensor]] = []  # name, param, flat idx, values
        self.masks: dict[str, Tensor] = {}
        self.values: dict[str, Tensor] = {}
        for lay, flat in zip(layers[1:], fixed_flat):
            p = lay.weight
            flat, _ = torch.sort(flat)
            vals = p.detach().reshape(-1)[flat].clone()
            name = f"{lay.name}.weight"
            mask = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
            mask[flat] = True
            self.masks[name] = mask.view_as(p)
            self.values[name] = vals
            self._entries.append((name, p, flat, vals))
        self._handles: list[RemovableHandle] = []
        for _, p, flat, _ in self._entries:
            self._handles.append(p.register_post_accumulate_grad_hook(_zero_grad_hook(flat)))
        self._param_ids = {id(p) for _, p, _, _ in self._entries}
        # optimizer -> (number of parameters it held when checked, whether one of them is fixed here)
        self._holds: weakref.WeakKeyDictionary[Optimizer, tuple[int, bool]] = weakref.WeakKeyDictionary()
        self._global: RemovableHandle | None = None
        optimizers = list(optimizers)
        if optimizers:
            for opt in optimizers:
                self.attach(opt)
        else:
            self._global = register_optimizer_step_post_hook(self._after_any_step)

    @property
    def num_fixed(self) -> int:
        """Number of fixed weights (= number of hidden neurons ``H``)."""
        return sum(len(e[2]) for e in self._entries)

    @torch.no_grad()
    def restore(self) -> None:
        """Write the fixed values back (done automatically after every optimizer step)."""
        for _, p, flat, vals in self._entries:
            p.view(-1).index_copy_(0, flat, vals)

    def attach(self, optimizer: Optimizer) -> FixedWeights:
        """Restore the fixed values after every step of ``optimizer`` (a step post-hook on it). The first call
        ends the automatic mode (restoring after any optimizer that holds a fixed parameter). Returns ``self``."""
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"attach() needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if self._global is not None:
            self._global.remove()
            self._global = None
        self._handles.append(optimizer.register_step_post_hook(self._after_step))
        return self

    def _after_step(self, optimizer: Optimizer, args: object, kwargs: object) -> None:
        self.restore()

    def _after_any_step(self, optimizer: Optimizer, args: object, kwargs: object) -> None:
        """Automatic mode: restore after a step of an optimizer that trains one of the fixed parameters."""
        n = sum(len(g["params"]) for g in optimizer.param_groups)
        known = self._holds.get(optimizer)
        if known is None or known[0] != n:
            held = any(id(p) in self._param_ids for g in optimizer.param_groups for p in g["params"])
            known = (n, held)
            self._holds[optimizer] = known
        if known[1]:
            self.restore()

    def remove(self) -> None:
        """Release the weights: remove the hooks (current values stay)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._global is not None:
            self._global.remove()
            self._global = None

    def __enter__(self) -> FixedWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"FixedWeights(num_fixed={self.num_fixed}, params={list(self.masks)})"


def _zero_grad_hook(flat: Tensor) -> Callable[[Tensor], None]:
    def hook(p: Tensor) -> None:
        if p.grad is not None:
            p.grad.view(-1).index_fill_(0, flat, 0.0)

    return hook


def _assign(cost: np.ndarray) -> np.ndarray:
    """Rows for the ``n`` neurons of a ``(n, rows)`` cost matrix: optimal assignments
    (:func:`scipy.optimize.linear_sum_assignment`), repeated on the unmatched neurons when ``n > rows``."""
    from scipy.optimize import linear_sum_assignment  # only select="hungarian" needs scipy

    n = cost.shape[0]
    row = np.empty(n, dtype=np.int64)
    todo = np.arange(n)
    while len(todo):
        r_idx, c_idx = linear_sum_assignment(cost[todo])
        row[todo[r_idx]] = c_idx
        todo = np.delete(todo, r_idx)
    return row


def _candidates(nxt: ChainLayer, M: Tensor, n: int) -> Tensor:
    """``(n, out, rep)`` view of the outgoing weights of the ``n`` source neurons of layer ``nxt``."""
    return M.view(nxt.out, n, nxt.rep).permute(1, 0, 2)


@torch.no_grad()
def fix_weights(
    model: nn.Module,
    value: float | None = None,
    select: str | Selection = "diagonal",
    *,
    optimizer: Optimizer | Iterable[Optimizer] | None = None,
) -> FixedWeights:
    """Fix one outgoing weight per hidden neuron of a ReLU-family chain (Jestädt 2025, Ch. 3).

    Parameters
    ----------
    model : nn.Module
        A chain of ``nn.Linear`` / ``nn.ConvNd`` layers with ReLU-family operations in between (see
        :func:`nnteleport.gspace.trace_chain`).
    value : float or None
        ``None``: keep the current values. ``c > 0``: first rescale the network function-preservingly so that
        every fixed weight is ``±c``.
    select : {"diagonal", "hungarian"}
        Selection rule (module docstring).
    optimizer : torch.optim.Optimizer or several, optional
        The optimizers after whose steps the fixed values are restored (per-optimizer hooks). ``None``: every
        optimizer that holds one of the fixed parameters (module docstring); :meth:`FixedWeights.attach` adds
        one later.

    Returns
    -------
    FixedWeights
        ``.masks`` (parameter name -> bool mask), ``.values``, ``.restore()``, ``.attach(opt)``, ``.remove()``
        (also a context manager). While the handle is active the fixed entries never change under the
        optimizers that restore them; its hooks keep a reference to the model until ``.remove()``.

    Raises
    ------
    ValueError
        Unsupported model (see ``trace_chain``), ``value <= 0`` or non-finite, a zero selected weight when a
        ``value`` is requested (it cannot be rescaled to ``±value``), bad ``select``.
    """
    sel = Selection.parse(select)
    optimizers = [] if optimizer is None else [optimizer] if isinstance(optimizer, Optimizer) else list(optimizer)
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise ValueError(f"value={value!r} must be a positive finite float (or None to keep current values)")
    layers = trace_chain(model)
    L = len(layers)
    target = 1.0 if value is None else float(value)
    fixed_flat: list[Tensor] = [torch.empty(0, dtype=torch.long)] * (L - 1)  # entries in layer i+1
    for i in range(L - 2, -1, -1):
        nxt = layers[i + 1]
        n = layers[i].out
        M = nxt.matrix()
        dev = M.device
        k = torch.arange(n, device=dev)
        if sel is Selection.DIAGONAL:
            row = k % nxt.out
            pos = torch.full_like(k, nxt.rep // 2)
        else:
            cand = _candidates(nxt, M, n).abs().double().cpu()  # (n, out, rep)
            cost_all = (torch.log(cand) - math.log(target)).abs()
            cost_all = torch.where(torch.isfinite(cost_all), cost_all, torch.full_like(cost_all, 1e12))
            best_cost, best_pos = cost_all.min(dim=2)  # (n, out)
            row = torch.as_tensor(_assign(best_cost.numpy()), device=dev)
            pos = best_pos.to(dev)[k, row]
        flat = row * nxt.cols + k * nxt.rep + pos
        fixed_flat[i] = flat
        if value is not None:
            w = M.reshape(-1)[flat]
            if bool((w == 0).any()):
                bad = (w == 0).nonzero().flatten()[:5].tolist()
                raise ValueError(
                    f"the selected fixed weights of neurons {bad} of layer {layers[i].name!r} are zero and "
                    f"cannot be rescaled to ±{value}; try select='hungarian' or value=None"
                )
            alphas: list[Tensor] = [torch.ones(lay.out, dtype=w.dtype, device=dev) for lay in layers[:-1]]
            alphas[i] = w.abs() / target
            rescale_chain(layers, alphas)
    return FixedWeights(model, layers, fixed_flat, optimizers)
