"""The G-space chart: the positively scale-invariant coordinates (path values) of a ReLU-family network.

After Jestädt (2025, Ch. 2) and Meng et al. (G-SGD, ICLR 2019), generalised to unequal widths, biases and
convolutions (``DESIGN.md`` Sec. 2).

The network is a chain of layers ``0 .. L-1`` (``nn.Linear`` / ``nn.Conv1d/2d/3d``, ``groups=1``) with
positively homogeneous, channel-wise operations between them (ReLU, LeakyReLU, max / average pooling,
dropout, flatten).
Each layer's weight is viewed as a matrix ``M_i`` of shape ``(out_i, cols_i)``; column ``j`` reads the source
neuron ``j // rep_i`` of the previous layer (``rep_i`` = kernel size for a convolution, ``H * W`` for a linear
layer after flattening a feature map, 1 otherwise). A *neuron* is an output feature of a linear layer or an
output channel of a convolution; the outputs of layers ``0 .. L-2`` are the ``H`` hidden neurons, each of
which carries one positive rescaling symmetry.

Skeleton (Meng et al. Sec. 3.2, Jestädt Sec. 2.1.4, generalised)
-----------------------------------------------------------------
* every hidden neuron ``k`` of layer ``i`` has one *fixed* outgoing weight ``M_{i+1}[succ(k)]`` (the skeleton
  weight, never changed by the optimizer), giving the suffix factor
  ``S_i(k) = M_{i+1}[succ(k)] * S_{i+1}(row of succ(k))`` with ``S_{L-1} = 1``;
* every hidden neuron ``r`` of layer ``i`` has one incoming *pred* edge ``M_i[r, pred(r)]`` giving the prefix
  factor ``P_i(r) = P_{i-1}(src(pred(r))) * M_i[r, pred(r)]`` with ``P_{-1} = 1`` (the inputs).

The coordinate of every non-fixed weight ``w = M_i[o, j]`` is the value of the full input-to-output path
``v = P_{i-1}(j // rep_i) * w * S_i(o)``; the coordinate of a bias ``b_i[o]`` is ``b_i[o] * S_i(o)`` (a path
from a bias unit). There are ``m - H`` coordinates (``m`` weights and biases), each a product along a path
and hence invariant under positive rescaling (Jestädt Thm. 2.1.1). The fixed weights keep their values (the
thesis' constant path factor, Sec. 2.2.2), so building a G-space never changes the network function; the
weights are recovered layer by layer, ``w = v / (P S)`` (weight allocation, Sec. 2.1.4), since ``P_{i-1}``
only depends on layers before ``i``.

Gradients (inverse chain rule, Jestädt Sec. 6.2.2 / Table 2.3, in closed form)
----------------------------------------------------------------------------
With ``g_f = w_f dL/dw_f`` and ``root(a)`` the nearest non-fixed pred edge on the prefix path of neuron ``a``
(``P(a)`` is a constant times ``v_root(a) / S``),

    dL/dv_e = dL/dw_e / (P(src e) S(dst e))
              - [e is a pred edge] * (sum over non-fixed f with root(src f) = e of g_f) / v_e,

computed per layer with a handful of whole-matrix operations (no loop over weights, :mod:`._hotpath`). Autograd through
:meth:`GSpace.weights_from_values` is the test oracle.

Skeleton selection (both conditions of issue 4)
------------------------------------------------
``skeleton="greedy"`` (default): going backwards from the output, ``succ(k)`` is the outgoing entry
maximising ``|M_{i+1}[o, j]| * |S_{i+1}(o)|``; going forwards from the input, ``pred(r)`` is the incoming
entry maximising ``|M_i[r, j]| * |P_{i-1}(j // rep)|``. (a) Conditioning: this is dynamic programming for the
largest-magnitude skeleton paths, so ``|S|`` and ``|P|`` are as large as any choice of this form allows and no
coordinate's gradient is divided by a near-zero skeleton product. (b) Invariance: under a positive rescaling
every candidate score of one neuron is multiplied by the same factor (``alpha_o / alpha_k * 1 / alpha_o`` for
succ,
``alpha_r / alpha_c * alpha_c`` for pred), so two rescaled copies select the same skeleton and get identical
coordinates. ``skeleton="diagonal"`` is the thesis' index rule (``k -> k mod rows``, kernel centre), invariant
but blind to magnitudes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from nnteleport._choice import Choice
from nnteleport.errors import UnsupportedModelError
from nnteleport.gspace._hotpath import EagerPlan, HotPath, Layout
from nnteleport.gspace.chains import rescale_chain, trace_chain

__all__ = ["GSpace", "Skeleton"]


class Skeleton(Choice, what="skeleton"):
    """How skeleton weights are selected (see the module docstring)."""

    GREEDY = "greedy"
    DIAGONAL = "diagonal"


class GSpace:
    """Basis-path coordinates of a ReLU-family network (Jestädt 2025, Ch. 2; Meng et al. 2019).

    Parameters
    ----------
    model : nn.Module
        A chain of ``nn.Linear`` / ``nn.ConvNd`` layers with ReLU-family operations in between (see
        :func:`trace_chain`). Any widths; biases are paths from a bias unit; conv output channels are neurons.
    skeleton : {"greedy", "diagonal"}
        Skeleton selection, see the module docstring. ``"greedy"`` is well conditioned *and* invariant under
        positive rescaling; ``"diagonal"`` is the thesis' ``k mod rows`` rule.
    reparametrize : bool
        If true, rescale the network function-preservingly so that every fixed skeleton weight is ``±1``
        (Meng et al.'s convention; Jestädt Sec. 2.2.2, 6.3.1). Otherwise the model is not modified.

    Attributes
    ----------
    layers : list[ChainLayer]
    dim : int
        ``m - H``: number of weights and biases minus number of hidden neurons.
    num_params, num_hidden : int
        ``m`` and ``H``.

    Notes
    -----
    The flat coordinate vector lists, layer by layer, the non-fixed weight entries in row-major order of the
    ``(out, cols)`` weight matrix, then the biases. Fixed skeleton weights are constants of the chart; if the
    weights are changed from outside, call :meth:`refresh` (``GSpaceOptimizer`` does it automatically). The
    parameter objects must stay the same (``module.weight = nn.Parameter(...)`` needs a new GSpace).
    """

    def __init__(self, model: nn.Module, *, skeleton: str | Skeleton = "greedy", reparametrize: bool = False) -> None:
        self.model = model
        self.skeleton = Skeleton.parse(skeleton)
        self.layers = trace_chain(model)
        w0 = self.layers[0].weight
        self._device, self._dtype = w0.device, w0.dtype
        self._select()
        if reparametrize:
            self.reparametrize()
        self._build_indices()

    # -- sizes --------------------------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def num_hidden(self) -> int:
        return sum(lay.out for lay in self.layers[:-1])

    @property
    def dim(self) -> int:
        return self.num_params - self.num_hidden

    def parameters(self) -> list[Tensor]:
        """The model parameters the chart covers, in chain order (weight, then bias, per layer)."""
        out: list[Tensor] = []
        for lay in self.layers:
            out.append(lay.weight)
            if lay.bias is not None:
                out.append(lay.bias)
        return out

    def named_parameters(self) -> list[tuple[str, Tensor]]:
        """``(name, parameter)`` of :meth:`parameters`, names as in ``model.named_parameters()``."""
        out: list[tuple[str, Tensor]] = []
        for lay in self.layers:
            out.append((f"{lay.name}.weight", lay.weight))
            if lay.bias is not None:
                out.append((f"{lay.name}.bias", lay.bias))
        return out

    # -- skeleton selection -------------------------------------------------------------------------------
    def _long(self, x: Any) -> Tensor:
        return torch.as_tensor(x, dtype=torch.long, device=self._device)

    @torch.no_grad()
    def _select(self) -> None:
        L = len(self.layers)
        mats = [lay.matrix() for lay in self.layers]
        # succ, backwards from the output: succ_flat[i][k] = flat index into mats[i+1] of k's skeleton weight
        self._succ_flat: list[Tensor] = [self._long([])] * (L - 1)
        S: list[Tensor] = [torch.ones(0)] * L
        S[L - 1] = torch.ones(self.layers[-1].out, dtype=self._dtype, device=self._device)
        for i in range(L - 2, -1, -1):
            nxt = self.layers[i + 1]
            n, rep, cols = self.layers[i].out, nxt.rep, nxt.cols
            k = torch.arange(n, device=self._device)
            if self.skeleton is Skeleton.GREEDY:
                score = mats[i + 1].abs() * S[i + 1].abs()[:, None]  # (out, n*rep)
                score = score.view(nxt.out, n, rep).permute(1, 0, 2).reshape(n, nxt.out * rep)
                best = score.argmax(dim=1)
                row, pos = best // rep, best % rep
            else:
                row, pos = k % nxt.out, torch.full_like(k, rep // 2)
            flat = row * cols + k * rep + pos
            self._succ_flat[i] = flat
            w_skel = mats[i + 1].reshape(-1)[flat]
            S[i] = w_skel * S[i + 1][row]
            self._check_nonzero(S[i], i, "outgoing skeleton path (suffix product S)", w_skel, L - 1 - i)
        # pred: forwards from the input
        self._pred_flat: list[Tensor] = []
        P_prev = torch.ones(self.layers[0].sources, dtype=self._dtype, device=self._device)
        for i in range(L - 1):
            lay = self.layers[i]
            n, rep, cols = lay.out, lay.rep, lay.cols
            r = torch.arange(n, device=self._device)
            if self.skeleton is Skeleton.GREEDY:
                score = mats[i].abs() * P_prev.abs().repeat_interleave(rep)[None, :]
                col = score.argmax(dim=1)
            else:
                col = (r % lay.sources) * rep + rep // 2
            flat = r * cols + col
            self._pred_flat.append(flat)
            w_skel = mats[i].reshape(-1)[flat]
            P_prev = P_prev[col // rep] * w_skel
            self._check_nonzero(P_prev, i, "incoming prefix path (prefix product P)", w_skel, i + 1)

    def _check_nonzero(self, x: Tensor, i: int, what: str, factor: Tensor | None, depth: int) -> None:
        """Refuse zero / non-finite path products, saying whether a weight is zero or the product under- or
        overflowed the dtype (``depth`` skeleton weights multiplied; each one is non-zero)."""
        bad = (x == 0) | ~torch.isfinite(x)
        if not bool(bad.any()):
            return
        idx = bad.nonzero().flatten()[:5].tolist()
        name = self.layers[i].name
        dead = bad & (factor == 0) if factor is not None else torch.zeros_like(bad)
        if not bool(dead.any()):
            finfo = torch.finfo(x.dtype)
            kind = "overflows" if bool((~torch.isfinite(x[bad])).any()) else "underflows"
            raise UnsupportedModelError(
                f"GSpace: the {what} of neurons {idx} of layer {name!r} {kind} {str(x.dtype).removeprefix('torch.')} "
                f"(a product of {depth} non-zero skeleton weights, beyond the range {finfo.tiny:.1e} .. "
                f"{finfo.max:.1e}); no neuron is dead: use float64 (model.double()), which reaches much deeper, or "
                "a shallower network"
            )
        hint = (
            "use skeleton='greedy'"
            if self.skeleton is Skeleton.DIAGONAL
            else "the neuron is dead (all its weights on that side are zero); remove or re-initialise it"
        )
        idx = dead.nonzero().flatten()[:5].tolist()
        raise UnsupportedModelError(
            f"GSpace: neurons {idx} of layer {name!r} have a zero or non-finite {what}: their "
            f"G-space coordinates are undefined (a zero skeleton weight); {hint}"
        )

    @torch.no_grad()
    def _build_indices(self) -> None:
        L = len(self.layers)
        dev = self._device
        self._fixed_flat: list[Tensor] = [self._long([]), *self._succ_flat]  # per layer, local flat index
        self._fixed_vals = [lay.matrix().reshape(-1)[f].clone() for f, lay in zip(self._fixed_flat, self.layers)]
        self._free_flat = []
        for f, lay in zip(self._fixed_flat, self.layers):
            mask = torch.ones(lay.out * lay.cols, dtype=torch.bool, device=dev)
            mask[f] = False
            self._free_flat.append(mask.nonzero().flatten())
        # dense flat layout: every layer's (out, cols) weight matrix (row-major, chain order), then every bias
        # (the weights of layers 1..L-1 are then contiguous, so equal-shaped layers are one batched view)
        self._w_off: list[int] = []
        self._b_off: list[int | None] = []
        off = 0
        for lay in self.layers:
            self._w_off.append(off)
            off += lay.out * lay.cols
        for lay in self.layers:
            self._b_off.append(None if lay.bias is None else off)
            off += 0 if lay.bias is None else lay.out
        self.dense_numel = off
        self._fixed_global = torch.cat([f + o for f, o in zip(self._fixed_flat, self._w_off)])
        # flat coordinate order (values()): per layer its non-fixed weights, then its bias
        free: list[Tensor] = []
        for f, lay, wo, bo in zip(self._free_flat, self.layers, self._w_off, self._b_off):
            free.append(f + wo)
            if bo is not None:
                free.append(torch.arange(bo, bo + lay.out, device=dev))
        self._free_global = torch.cat(free)
        # pred edges. A neuron whose pred entry is itself a fixed skeleton weight inherits the root (nearest
        # non-fixed pred edge up the prefix tree) of its pred's source: P(a) = P(root(a)) * c(a), c(a) the
        # product of the fixed pred weights in between (constant); P(root) = v_pred(root) / S(root).
        self._pred_src = [pf % lay.cols // lay.rep for pf, lay in zip(self._pred_flat, self.layers)]
        self._hidden_sizes = [lay.out for lay in self.layers[:-1]]
        hid_off = [0]
        for n in self._hidden_sizes:
            hid_off.append(hid_off[-1] + n)
        roots: list[Tensor] = []
        coefs: list[Tensor] = []
        for i in range(L - 1):
            lay = self.layers[i]
            is_fixed = torch.zeros(lay.out * lay.cols, dtype=torch.bool, device=dev)
            is_fixed[self._fixed_flat[i]] = True
            pf_mask = is_fixed[self._pred_flat[i]]
            own = torch.arange(lay.out, device=dev) + hid_off[i]
            ones = torch.ones(lay.out, dtype=self._dtype, device=dev)
            if i == 0:
                roots.append(own)
                coefs.append(ones)
            else:
                w_pred = lay.matrix().reshape(-1)[self._pred_flat[i]]
                src = self._pred_src[i]
                roots.append(torch.where(pf_mask, roots[i - 1][src], own))
                coefs.append(torch.where(pf_mask, coefs[i - 1][src] * w_pred, ones))
        empty = self._long([])
        self._root = torch.cat(roots) if L > 1 else empty
        self._root_c = torch.cat(coefs) if L > 1 else torch.ones(0, dtype=self._dtype, device=dev)
        self._pred_global = torch.cat([pf + o for pf, o in zip(self._pred_flat, self._w_off)]) if L > 1 else empty
        self._root_pred_global = self._pred_global[self._root]
        self._hid_off = hid_off
        self._refresh_suffix()
        for i, (P, S) in enumerate(zip(*self.path_factors())):  # skeleton weights checked non-zero by _select
            self._check_nonzero(S, i, "outgoing skeleton path (suffix product S)", None, L - 1 - i)
            self._check_nonzero(P, i, "incoming prefix path (prefix product P)", None, i + 1)

        self._build_layout()

    @torch.no_grad()
    def _build_layout(self) -> None:
        """The explicit :class:`Layout` the hot path reads, and the eager plan built from it."""
        lay0, last = self.layers[0], self.layers[-1]
        self._n0 = lay0.out * lay0.cols
        self._ntw = self._w_off[-1] + last.out * last.cols - self._n0  # weights of layers 1..L-1
        self._layout = Layout(
            layers=list(self.layers),
            dense_numel=self.dense_numel,
            w_off=list(self._w_off),
            b_off=list(self._b_off),
            n0=self._n0,
            ntw=self._ntw,
            hid_off=list(self._hid_off),
            S=list(self._S),
            invS=list(self._invS),
            fixed_flat=list(self._fixed_flat),
            fixed_vals=list(self._fixed_vals),
            fixed_global=self._fixed_global,
            root_pred_global=self._root_pred_global,
            root_coef=self._root_coef,
        )
        self._eager = EagerPlan(self._layout)

    @property
    def layout(self) -> Layout:
        """The dense layout and chart constants the hot path reads (rebuilt by :meth:`refresh`)."""
        return self._layout

    def step_plan(self, V: Tensor, D: Tensor, *, direct: bool, native: bool | None) -> HotPath:
        """The per-step work on dense coordinates ``V`` and gradient buffer ``D`` (shape ``(m,)`` each)."""
        return HotPath(self._layout, self._eager, V, D, direct=direct, native=native)

    def direct_split(self) -> tuple[list[Tensor], slice]:
        """Direct chart: the parameters that are their own coordinates (first layer's weight, biases) and the
        slice of the dense layout holding the remaining coordinates (the weights of layers ``1..L-1``)."""
        own = [self.layers[0].weight, *(lay.bias for lay in self.layers if lay.bias is not None)]
        return own, slice(self._n0, self._n0 + self._ntw)

    def refresh(self) -> None:
        """Re-read the chart's constants (fixed skeleton weights, path factors) from the model's current
        weights, keeping the skeleton positions. Needed after the weights were changed from outside."""
        self._build_indices()

    @torch.no_grad()
    def _refresh_suffix(self) -> None:
        """Suffix products S (constant: they only involve fixed weights) and their inverses."""
        S = self._suffix_from_current()
        self._S = S
        self._invS = [1.0 / s for s in S]
        self._invS_hidden = torch.cat(self._invS[:-1]) if len(S) > 1 else self._invS[0][:0]
        self._root_coef = self._invS_hidden[self._root] * self._root_c  # P(a) = V[root_pred(a)] * root_coef(a)

    # -- function-preserving rescaling ---------------------------------------------------------------------
    @torch.no_grad()
    def reparametrize(self) -> None:
        """Rescale the model in place so that every fixed skeleton weight becomes ``±1``.

        Neuron ``k`` of layer ``i`` is rescaled by ``alpha = |S_i(k)|`` (incoming weights and bias times
        ``alpha``, outgoing divided): afterwards every suffix product and every skeleton weight is ``±1``.
        Coordinates (path values) and the network function are unchanged. Optimizers built on this GSpace
        before the call must be rebuilt.
        """
        S = self._suffix_from_current()
        rescale_chain(self.layers, [s.abs() for s in S[:-1]])
        # the rescaled skeleton weights are ±1 up to an ulp; make them exact, so that every suffix product is
        # exactly ±1 (the optimizer's direct chart relies on it; the function changes by round-off only)
        for i, succ in enumerate(self._succ_flat):
            flat = self.layers[i + 1].matrix().reshape(-1)
            flat.index_copy_(0, succ, torch.sign(flat[succ]))
        if hasattr(self, "_fixed_flat"):
            self._build_indices()

    @property
    def unit_skeleton(self) -> bool:
        """Whether every suffix product ``S`` is exactly ``±1`` (after :meth:`reparametrize`): the coordinates of
        the first layer's weights and of all biases are then the weights themselves, up to a constant sign."""
        return all(bool((s.abs() == 1).all()) for s in self._S)

    def _suffix_from_current(self) -> list[Tensor]:
        L = len(self.layers)
        S = [torch.ones(0)] * L
        S[L - 1] = torch.ones(self.layers[-1].out, dtype=self._dtype, device=self._device)
        for i in range(L - 2, -1, -1):
            nxt = self.layers[i + 1]
            row = self._succ_flat[i] // nxt.cols
            S[i] = nxt.matrix().reshape(-1)[self._succ_flat[i]] * S[i + 1][row]
        return S

    # -- the chart's choices, for checkpoints ---------------------------------------------------------------
    def chart_state(self) -> dict[str, Any]:
        """The choices that define the chart: skeleton rule, positions and the fixed skeleton weights' values.

        ``succ[i]`` (shape ``(out_i,)``) are the flat indices into layer ``i+1``'s ``(out, cols)`` weight
        matrix of the skeleton weights of layer ``i``'s neurons, ``pred[i]`` the flat indices into layer
        ``i``'s matrix of their pred edges, ``fixed[i]`` the skeleton weights' values (the chart's constants).
        The greedy selection depends on the weights, so a chart rebuilt from later weights differs: save this
        with the coordinates to resume exactly (:meth:`load_chart_state`).
        """
        return {
            "skeleton": self.skeleton.value,
            "succ": [t.detach().clone() for t in self._succ_flat],
            "pred": [t.detach().clone() for t in self._pred_flat],
            "fixed": [t.detach().clone() for t in self._fixed_vals[1:]],
        }

    @torch.no_grad()
    def load_chart_state(self, state: dict[str, Any], *, fixed_values: bool = True) -> bool:
        """Adopt the skeleton of :meth:`chart_state` (instead of selecting one from the current weights).

        With ``fixed_values=True`` the saved skeleton weights are written into the model where they differ
        (e.g. after ``reparametrize=True`` rescaled a freshly built model); the chart constants are then
        re-read from the model. Returns whether a weight of the model was changed (then the non-fixed weights
        must be written from the coordinates as well, :meth:`write_dense`).

        Raises
        ------
        ValueError
            If the saved positions do not fit this chain (other layer count, widths, or an index that is not
            an outgoing / incoming weight of its neuron).
        """
        L = len(self.layers)
        succ, pred = list(state["succ"]), list(state["pred"])
        if len(succ) != L - 1 or len(pred) != L - 1:
            raise ValueError(
                f"saved G-space chart has {len(succ)} hidden layers, this chain {L - 1}; load it into the model it "
                "was saved from"
            )
        new_succ, new_pred = [], []
        for i in range(L - 1):
            lay, nxt = self.layers[i], self.layers[i + 1]
            s = torch.as_tensor(succ[i]).to(device=self._device, dtype=torch.long)
            p = torch.as_tensor(pred[i]).to(device=self._device, dtype=torch.long)
            k = torch.arange(lay.out, device=self._device)
            ok = (
                s.shape == (lay.out,)
                and p.shape == (lay.out,)
                and bool(((s >= 0) & (s < nxt.out * nxt.cols) & (s % nxt.cols // nxt.rep == k)).all())
                and bool(((p >= 0) & (p < lay.out * lay.cols) & (p // lay.cols == k)).all())
            )
            if not ok:
                raise ValueError(
                    f"saved G-space skeleton does not fit layers {lay.name!r} -> {nxt.name!r} (out={lay.out}, next "
                    f"layer {nxt.out}x{nxt.cols}); load it into the model it was saved from"
                )
            new_succ.append(s)
            new_pred.append(p)
        self.skeleton = Skeleton.parse(state.get("skeleton", self.skeleton))
        self._succ_flat, self._pred_flat = new_succ, new_pred
        changed = False
        if fixed_values and state.get("fixed") is not None:
            for i, vals in enumerate(state["fixed"]):
                flat = self.layers[i + 1].matrix().view(-1)
                vals = torch.as_tensor(vals).to(device=self._device, dtype=self._dtype)
                if not torch.equal(flat[new_succ[i]], vals):
                    flat.index_copy_(0, new_succ[i], vals)
                    changed = True
        self._build_indices()
        return changed

    # -- masks and diagnostics ------------------------------------------------------------------------------
    @property
    def skeleton_masks(self) -> dict[str, Tensor]:
        """Parameter name -> bool mask (shape of the weight) of the fixed skeleton weights."""
        out = {}
        for lay, f in zip(self.layers, self._fixed_flat):
            m = torch.zeros(lay.weight.numel(), dtype=torch.bool, device=self._device)
            m[f] = True
            out[f"{lay.name}.weight"] = m.view_as(lay.weight)
        return out

    @torch.no_grad()
    def path_factors(self) -> tuple[list[Tensor], list[Tensor]]:
        """Current prefix products ``P_i`` and suffix products ``S_i`` per hidden layer (conditioning)."""
        return self._prefix([lay.matrix() for lay in self.layers]), self._S[:-1]

    # -- core maps on the dense flat layout -----------------------------------------------------------------
    def layout_views(self, flat: Tensor) -> list[tuple[Tensor, Tensor | None]]:
        """Per layer ``(weight (out, cols) view, bias view or None)`` of a dense flat tensor of shape ``(m,)``.

        The dense layout lists every layer's weight matrix (row-major, chain order), then every layer's bias; at
        the ``H`` fixed skeleton positions coordinates and their gradients are zero.
        """
        out = []
        for lay, wo, bo in zip(self.layers, self._w_off, self._b_off):
            w = flat[wo : wo + lay.out * lay.cols].view(lay.out, lay.cols)
            out.append((w, None if bo is None else flat[bo : bo + lay.out]))
        return out

    def _prefix(self, mats: list[Tensor]) -> list[Tensor]:
        """Prefix products from weight matrices (recursion along the pred edges)."""
        P: list[Tensor] = []
        prev: Tensor | None = None
        for i in range(len(self.layers) - 1):
            w = mats[i].reshape(-1)[self._pred_flat[i]]
            P.append(w if prev is None else prev[self._pred_src[i]] * w)
            prev = P[-1]
        return P

    def _pcols(self, P: Any, i: int) -> Tensor | None:
        """Prefix factors of layer ``i``'s columns (None for the first layer: all ones)."""
        if i == 0:
            return None
        rep = self.layers[i].rep
        return P[i - 1] if rep == 1 else P[i - 1].repeat_interleave(rep)

    @torch.no_grad()
    def dense_values(self, out: Tensor | None = None) -> Tensor:
        """Coordinates in the dense flat layout (:meth:`layout_views`), shape ``(m,)``, zeros at fixed entries."""
        mats = [lay.matrix() for lay in self.layers]
        P = self._prefix(mats)
        if out is None:
            out = torch.empty(self.dense_numel, dtype=self._dtype, device=self._device)
        for i, (lay, (Vw, Vb)) in enumerate(zip(self.layers, self.layout_views(out))):
            torch.mul(mats[i], self._S[i][:, None], out=Vw)
            pc = self._pcols(P, i)
            if pc is not None:
                Vw.mul_(pc)
            if Vb is not None:
                torch.mul(lay.bias, self._S[i], out=Vb)
        out.index_fill_(0, self._fixed_global, 0)
        return out

    def values(self) -> Tensor:
        """The flat coordinate vector, shape ``(dim,)``: path values of all basis paths."""
        return self.dense_values().index_select(0, self._free_global)

    def weights_from_values(self, v: Tensor) -> dict[str, Tensor]:
        """Weight allocation ``w(v)`` (differentiable): parameter name -> tensor for flat coordinates ``v``.

        ``w = v / (P_{i-1}(src) S_i(dst))`` layer by layer, fixed skeleton weights at their constant values,
        biases ``b = v_b / S_i`` (Jestädt Table 2.3). The prefix products are recomputed from the allocated
        weights (recursion), independently of the closed-form path; this is the autograd oracle of
        :meth:`gradient`.
        """
        if v.shape != (self.dim,):
            raise ValueError(f"expected a coordinate vector of shape ({self.dim},), got {tuple(v.shape)}")
        out: dict[str, Tensor] = {}
        offset = 0
        P_prev: Tensor | None = None
        for i, lay in enumerate(self.layers):
            nfree = len(self._free_flat[i])
            vw = v[offset : offset + nfree]
            offset += nfree
            dense = torch.zeros(lay.out * lay.cols, dtype=v.dtype, device=v.device).index_copy(
                0, self._free_flat[i], vw
            )
            W = dense.view(lay.out, lay.cols) / self._S[i][:, None]
            if P_prev is not None:
                W = W / (P_prev if lay.rep == 1 else P_prev.repeat_interleave(lay.rep))[None, :]
            W = W.reshape(-1).index_copy(0, self._fixed_flat[i], self._fixed_vals[i].to(v.dtype))
            out[f"{lay.name}.weight"] = W.view_as(lay.weight)
            if lay.bias is not None:
                out[f"{lay.name}.bias"] = v[offset : offset + lay.out] / self._S[i]
                offset += lay.out
            if i < len(self.layers) - 1:
                w = W[self._pred_flat[i]]
                P_prev = w if P_prev is None else P_prev[self._pred_src[i]] * w
        return out

    @torch.no_grad()
    def load_values(self, v: Tensor) -> None:
        """Write the weights of coordinates ``v`` (shape ``(dim,)``) into the model, in place."""
        for name, w in self.weights_from_values(v.to(self._dtype)).items():
            self.model.get_parameter(name).copy_(w)

    @torch.no_grad()
    def write_dense(self, V: Tensor) -> None:
        """Weight allocation from dense coordinates ``V`` (shape ``(m,)``), in place:
        ``M_i = V_i / (S_i P_{i-1}(src))`` at non-fixed entries, fixed entries at their constants."""
        self._eager.write(V, self._eager.flat_views(V))

    @torch.no_grad()
    def dense_gradient(self, V: Tensor, out: Tensor) -> bool:
        """``dL/dv`` in the dense layout from the model's ``.grad`` (after ``loss.backward()``), into ``out``.

        ``V`` are the current dense coordinates. Closed-form inverse chain rule (module docstring):
        ``D = G / (S P)`` on every non-fixed entry, zero at fixed entries; then on the pred edge of every root
        ``r`` the correction ``- sum_a T(a) / v_pred(r)`` over the hidden neurons ``a`` with ``root(a) = r``,
        ``T(a)`` the sum of ``g_f = w_f G_f = v_f D_f`` over the non-fixed weights leaving ``a``. About a dozen
        whole-tensor operations whatever the depth (:class:`~nnteleport.gspace._hotpath.EagerPlan`). Returns
        False (``out`` untouched) when no chain parameter has a gradient.
        """
        ep = self._eager
        ep.factors_of = None
        return ep.dense_gradient(V, out, ep.flat_views(out), ep.flat_views(V))

    def gradient(self) -> Tensor:
        """Flat ``dL/dv`` (shape ``(dim,)``) from the model's ``.grad`` after ``loss.backward()``."""
        V = self.dense_values()
        D = torch.empty_like(V)
        if not self.dense_gradient(V, D):
            raise ValueError("no parameter of the chain has a gradient; call loss.backward() first")
        return D.index_select(0, self._free_global)

    def __repr__(self) -> str:
        names = ", ".join(lay.name for lay in self.layers)
        return (
            f"GSpace(layers=[{names}], dim={self.dim}, m={self.num_params}, H={self.num_hidden}, "
            f"skeleton={self.skeleton.value!r})"
        )
