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
decay or stale momentum move them. Here the fixed entries are *restored* after every step of every
``torch.optim`` optimizer (a global optimizer step post-hook: ``H`` indexed writes per step, no full-size
operation), and their gradients are zeroed in place after accumulation (so momentum buffers, Adam moments and
gradient norms ignore them). Code that changes weights without an optimizer step can call
:meth:`FixedWeights.restore`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
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

    def __init__(self, model: nn.Module, layers: list[ChainLayer], fixed_flat: list[Tensor]) -> None:
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
        self._handles.append(register_optimizer_step_post_hook(self._after_step))

    @property
    def num_fixed(self) -> int:
        """Number of fixed weights (= number of hidden neurons ``H``)."""
        return sum(len(e[2]) for e in self._entries)

    @torch.no_grad()
    def restore(self) -> None:
        """Write the fixed values back (done automatically after every optimizer step)."""
        for _, p, flat, vals in self._entries:
            p.view(-1).index_copy_(0, flat, vals)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        self.restore()

    def remove(self) -> None:
        """Release the weights: remove the hooks (current values stay)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __repr__(self) -> str:
        return f"FixedWeights(num_fixed={self.num_fixed}, params={list(self.masks)})"


def _zero_grad_hook(flat: Tensor):
    def hook(p: Tensor) -> None:
        if p.grad is not None:
            p.grad.view(-1).index_fill_(0, flat, 0.0)

    return hook


def _candidates(nxt: ChainLayer, M: Tensor, n: int) -> Tensor:
    """``(n, out, rep)`` view of the outgoing weights of the ``n`` source neurons of layer ``nxt``."""
    return M.view(nxt.out, n, nxt.rep).permute(1, 0, 2)


@torch.no_grad()
def fix_weights(model: nn.Module, value: float | None = None, select: str | Selection = "diagonal") -> FixedWeights:
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

    Returns
    -------
    FixedWeights
        ``.masks`` (parameter name -> bool mask), ``.values``, ``.restore()``, ``.remove()``. While the handle
        is active the fixed entries never change under any ``torch.optim`` optimizer; the global hook keeps a
        reference to the model until ``.remove()`` is called.

    Raises
    ------
    ValueError
        Unsupported model (see ``trace_chain``), ``value <= 0`` or non-finite, a zero selected weight when a
        ``value`` is requested (it cannot be rescaled to ``±value``), bad ``select``.
    """
    sel = Selection.parse(select)
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
            cost = best_cost.numpy()
            row_np = np.empty(n, dtype=np.int64)
            todo = np.arange(n)
            while len(todo):
                r_idx, c_idx = linear_sum_assignment(cost[todo])
                row_np[todo[r_idx]] = c_idx
                todo = np.delete(todo, r_idx)
            row = torch.as_tensor(row_np, device=dev)
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
    return FixedWeights(model, layers, fixed_flat)
