"""The G-space optimizer's per-step work: gradient ``dL/dv`` from the model's gradients, weights from ``v``.

The chart (:class:`nnteleport.gspace.GSpace`) hands over everything this module reads in one explicit object,
:class:`Layout` (offsets of the dense layout, skeleton constants, root pred edges). From it :class:`EagerPlan`
prepares the whole-tensor PyTorch operations (any device and dtype) and :class:`HotPath` runs one optimizer
step's work, with the fused C kernels of :mod:`nnteleport.gspace._native` (CPU float32 / float64) or the eager
plan.

Dense layout: every layer's ``(out, cols)`` weight matrix (row-major, chain order), then every bias; ``m``
entries, zero at the ``H`` fixed skeleton positions. With the dense factor ``K = 1 / (P(src) S(dst))`` (zero at
fixed entries) the gradient is ``D = G K`` plus the pred-edge corrections and the weights are ``W = F + V K``
(``F``: fixed values at fixed entries, zero elsewhere); see :mod:`nnteleport.gspace`.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch
from torch import Tensor

import nnteleport.gspace._native as _native
from nnteleport.gspace.chains import ChainLayer

__all__ = ["EagerPlan", "HotPath", "Layout"]

if not hasattr(torch, "_foreach_copy_"):  # a private ATen op: fail loudly at import if torch drops it
    raise ImportError(
        f"nnteleport.gspace needs torch._foreach_copy_ (torch >= 2.1); this torch {torch.__version__} lacks it"
    )

#: ``native=None`` uses the (single-threaded) C kernels for charts up to this many dense entries, or for any size
#: when torch runs one thread
NATIVE_AUTO_MAX_NUMEL = 1 << 22

#: the five views of a dense flat tensor the hot path works on (:meth:`EagerPlan.flat_views`)
FlatViews = tuple[Tensor, Tensor, Tensor, list[Tensor], list[Tensor]]


@dataclass(frozen=True)
class Layout:
    """What the hot path needs to know about a chart (built by the chart, read-only here).

    Attributes
    ----------
    layers : list[ChainLayer]
        The chain, ``L`` layers.
    w_off, b_off : list[int], list[int | None]
        Offsets of each layer's weight matrix and bias (``None``: no bias) in the dense layout of ``m`` entries.
    n0, ntw : int
        ``out_0 * cols_0`` (the first layer's weights) and the number of weights of layers ``1..L-1``.
    hid_off : list[int]
        Offset of each hidden layer's neurons among the ``H`` hidden neurons (length ``L``).
    S, invS : list[Tensor]
        Suffix products ``S_i`` (shape ``(out_i,)``, constant: fixed weights only) and ``1 / S_i``.
    fixed_flat, fixed_vals : list[Tensor]
        Per layer, the local flat indices into ``(out, cols)`` of the fixed skeleton weights and their values.
    fixed_global : Tensor
        The same positions in the dense layout, shape ``(H,)``.
    root_pred_global, root_coef : Tensor
        Per hidden neuron ``a`` (shape ``(H,)``), the dense position of the pred edge of ``root(a)`` and the
        constant ``c(a)`` with ``P(a) = V[root_pred(a)] * c(a)``.
    """

    layers: list[ChainLayer]
    dense_numel: int
    w_off: list[int]
    b_off: list[int | None]
    n0: int
    ntw: int
    hid_off: list[int]
    S: list[Tensor]
    invS: list[Tensor]
    fixed_flat: list[Tensor]
    fixed_vals: list[Tensor]
    fixed_global: Tensor
    root_pred_global: Tensor
    root_coef: Tensor

    @property
    def weights(self) -> list[Tensor]:
        return [lay.weight for lay in self.layers]

    @property
    def biases(self) -> list[Tensor | None]:
        return [lay.bias for lay in self.layers]

    @property
    def num_hidden(self) -> int:
        return self.hid_off[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].weight.device

    def long(self, x: object) -> Tensor:
        return torch.as_tensor(x, dtype=torch.long, device=self.device)


def _param_views(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
    """Consecutive views of ``flat`` shaped like ``params``."""
    views, off = [], 0
    for p in params:
        views.append(flat[off : off + p.numel()].view(p.shape))
        off += p.numel()
    return views


class EagerPlan:
    """Constants and buffers of the whole-tensor PyTorch hot path (:meth:`dense_gradient`, :meth:`write`).

    For layer 0 (``P = 1``, no fixed entries) ``K`` is the constant column ``1 / S_0``; for the biases it is the
    constant ``1 / S``; only the weights of layers ``1..L-1`` depend on ``P``, i.e. on the ``H`` root pred-edge
    coordinates ``V_r``: ``1 / P = (1 / c_root) / V_r``. Consecutive layers with equal ``(out, cols, rep)`` form
    one group, a batched ``(n, out, sources, rep)`` view, so the per-step work is a fixed handful of operations
    whatever the depth.
    """

    @torch.no_grad()
    def __init__(self, layout: Layout) -> None:
        lo = self.layout = layout
        dev, dt, layers = lo.device, lo.dtype, lo.layers
        L, m, n0 = len(layers), lo.dense_numel, lo.n0
        Kc = torch.empty(m, dtype=dt, device=dev)
        for lay, wo, bo, inv in zip(layers, lo.w_off, lo.b_off, lo.invS):
            Kc[wo : wo + lay.out * lay.cols].view(lay.out, lay.cols).copy_(inv[:, None].expand(lay.out, lay.cols))
            if bo is not None:
                Kc[bo : bo + lay.out].copy_(inv)
        Kc[lo.fixed_global] = 0
        Fd = torch.zeros(m, dtype=dt, device=dev)
        Fd[lo.fixed_global] = torch.cat(lo.fixed_vals)
        self.invS_col = [s[:, None] for s in lo.invS]
        self.Kc_tail, self.F_tail = Kc[n0:], Fd[n0:]
        self.K_tail = self.Kc_tail.clone()
        self.wbuf = torch.empty(m - n0, dtype=dt, device=dev)
        self.work = torch.empty(lo.ntw, dtype=dt, device=dev)
        H = lo.num_hidden
        self.Vr = torch.empty(H, dtype=dt, device=dev)
        self.T = torch.empty(H, dtype=dt, device=dev)
        self.corr = torch.empty(H, dtype=dt, device=dev)
        inv_root_coef = 1.0 / lo.root_coef  # 1 / P(a) = inv_root_coef(a) / V_r(a)
        # tail parameters in dense order: weights of layers 1..L-1, then all biases
        self.tail_params: list[Tensor] = [lay.weight for lay in layers[1:]]
        self.tail_params += [b for b in lo.biases if b is not None]
        self.dense_params: list[Tensor] = [layers[0].weight, *self.tail_params]
        self.groups = self._groups(layers)
        self.K_groups = self._group_views(self.K_tail)
        self.work_groups = self._group_views(self.work)
        # K = Kc * (1 / P(src)) = (Kc * inv_root_coef(src)) / V_r(src): one division per group
        self.KcR_groups: list[Tensor] = []
        self.Vr_groups: list[Tensor] = []
        self.T_groups: list[Tensor] = []
        self.sum_dims: list[tuple[int, ...]] = []
        for (i0, i1), Kcg in zip(self.groups, self._group_views(self.Kc_tail)):
            lay = layers[i0]
            h0, h1 = lo.hid_off[i0 - 1], lo.hid_off[i1 - 1]
            src_shape = (i1 - i0, 1, lay.cols) if lay.rep == 1 else (i1 - i0, 1, lay.sources, 1)
            self.KcR_groups.append(Kcg * inv_root_coef[h0:h1].view(src_shape))
            self.Vr_groups.append(self.Vr[h0:h1].view(src_shape))
            self.T_groups.append(self.T[h0:h1].view(i1 - i0, lay.sources))
            self.sum_dims.append((1,) if lay.rep == 1 else (1, 3))
        self.wbuf_views = _param_views(self.wbuf, self.tail_params)
        # the same for the weights of layers 1..L-1 alone (the optimizer's direct chart)
        ntw = lo.ntw
        self.F_w, self.K_w, self.wbuf_w = self.F_tail[:ntw], self.K_tail[:ntw], self.wbuf[:ntw]
        self.tail_weights = self.tail_params[: L - 1]
        self.wbuf_views_w = self.wbuf_views[: L - 1]
        self.factors_of: Tensor | None = None  # the coordinate tensor the factors were computed from

    @staticmethod
    def _groups(layers: list[ChainLayer]) -> list[tuple[int, int]]:
        """Ranges ``[i0, i1)`` of consecutive layers ``1..L-1`` with equal ``(out, cols, rep)``."""
        groups: list[tuple[int, int]] = []
        i, L = 1, len(layers)
        while i < L:
            j = i + 1
            key = (layers[i].out, layers[i].cols, layers[i].rep)
            while j < L and (layers[j].out, layers[j].cols, layers[j].rep) == key:
                j += 1
            groups.append((i, j))
            i = j
        return groups

    def _group_views(self, tail: Tensor) -> list[Tensor]:
        """Per group, the ``(n, out, sources, rep)`` view (``(n, out, cols)`` if ``rep == 1``) of the weights of
        a flat tensor starting at ``n0`` (the dense layout without the first layer)."""
        out = []
        lo = self.layout
        for i0, i1 in self.groups:
            lay = lo.layers[i0]
            a = lo.w_off[i0] - lo.n0
            b = a + (i1 - i0) * lay.out * lay.cols
            shape = (i1 - i0, lay.out, lay.cols) if lay.rep == 1 else (i1 - i0, lay.out, lay.sources, lay.rep)
            out.append(tail[a:b].view(shape))
        return out

    def flat_views(self, X: Tensor) -> FlatViews:
        """Views of a dense flat tensor ``X`` (shape ``(m,)``): layer 0's ``(out, cols)`` matrix, the tail
        (everything after it), the weights of layers ``1..L-1``, their group views, the tail split like the
        parameters."""
        lo = self.layout
        lay0 = lo.layers[0]
        tail = X[lo.n0 :]
        return (
            X[: lo.n0].view(lay0.out, lay0.cols),
            tail,
            tail[: lo.ntw],
            self._group_views(tail),
            _param_views(tail, self.tail_params),
        )

    @torch.no_grad()
    def compute_factors(self, V: Tensor) -> None:
        """Path factors of dense coordinates ``V``: root pred-edge values ``V_r`` and ``K`` of layers
        ``1..L-1`` (one gather, one broadcast division per group)."""
        if self.Vr.numel():
            torch.index_select(V, 0, self.layout.root_pred_global, out=self.Vr)
            for Kg, KcR, Vrg in zip(self.K_groups, self.KcR_groups, self.Vr_groups):
                torch.div(KcR, Vrg, out=Kg)
        self.factors_of = V

    @torch.no_grad()
    def write(self, V: Tensor, vviews: FlatViews, direct: bool = False) -> None:
        """Weight allocation ``W = F + V K`` from dense coordinates ``V`` (``vviews = flat_views(V)``):
        4 + (number of groups) ops. With ``direct=True`` only the weights of layers ``1..L-1`` are written (not
        the first layer, not the biases)."""
        self.compute_factors(V)
        w0 = self.layout.layers[0].weight
        if not direct:
            torch.mul(vviews[0], self.invS_col[0], out=w0 if w0.dim() == 2 else w0.view(vviews[0].shape))
        if not self.tail_params:
            return
        if direct:  # the weights of layers 1..L-1 only
            if self.tail_weights:
                torch.addcmul(self.F_w, vviews[2], self.K_w, out=self.wbuf_w)
                torch._foreach_copy_(self.tail_weights, self.wbuf_views_w)
        else:
            torch.addcmul(self.F_tail, vviews[1], self.K_tail, out=self.wbuf)
            torch._foreach_copy_(self.tail_params, self.wbuf_views)

    @torch.no_grad()
    def dense_gradient(self, V: Tensor, out: Tensor, oviews: FlatViews, vviews: FlatViews, first: bool = True) -> bool:
        """``D = dL/dv`` into ``out`` (views from :meth:`flat_views`); reuses the factors if they were computed
        from this very tensor ``V`` (the caller guarantees ``V`` did not change since). With ``first=False``
        the first layer's region of ``out`` only receives the pred-edge corrections. Returns False (``out``
        untouched) when no chain parameter has a gradient."""
        grads = [p.grad for p in self.dense_params]
        if any(g is None for g in grads):
            if all(g is None for g in grads):
                return False
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.dense_params, grads)]
        if self.factors_of is not V:
            self.compute_factors(V)
        g0 = grads[0]
        if first:
            torch.mul(g0 if g0.dim() == 2 else g0.reshape(oviews[0].shape), self.invS_col[0], out=oviews[0])
        if not self.tail_params:
            return True
        torch._foreach_copy_(oviews[4], grads[1:])
        oviews[1].mul_(self.K_tail)  # dL/dw / (P S), zero at fixed entries
        if self.Vr.numel():
            # pred-edge corrections: T(a) = sum of v_f dL/dv_f over the weights leaving hidden neuron a, sent to
            # the pred edge of root(a) as -T(a) / v_root
            torch.mul(vviews[2], oviews[2], out=self.work)
            for wg, Tg, dims in zip(self.work_groups, self.T_groups, self.sum_dims):
                torch.sum(wg, dim=dims, out=Tg)
            torch.div(self.T, self.Vr, out=self.corr)
            out.index_add_(0, self.layout.root_pred_global, self.corr, alpha=-1)
        return True


class HotPath:
    """Per-step work of the G-space optimizer on the dense coordinates ``V`` and their gradient ``D``.

    ``pull`` turns the model's gradients into ``dL/dv`` (:meth:`EagerPlan.dense_gradient`), ``push`` computes
    the path factors and writes the weights (:meth:`EagerPlan.write`), ``restore`` undoes what ``pull`` did to
    the model's own gradients (direct chart only).

    Direct chart (``direct=True``, needs a unit skeleton): every suffix product ``S`` is ``±1``, so the
    coordinate of a first-layer weight is ``v = w S`` and of a bias ``v = b S``. The optimizer then runs on
    ``u = v S`` (a constant sign flip per coordinate, under which every element-wise optimizer and every
    inner-product based one, L-BFGS included, takes the same steps), i.e. on these parameters themselves: no
    copy and no pass over them. Their gradient ``dL/du`` is the model's gradient, except at the first-layer
    pred edges that are roots, which take the correction ``- T / u`` (written into the model's gradient by
    ``pull`` and undone by ``restore``). The path factors read the roots' coordinates from the first layer's
    weight (``P = u * c / S``, the sign folded into the constant). The dense buffers keep their layout; their
    first-layer and bias regions are then unused (kept in sync only by the eager path).

    Two implementations, same plan: the fused C kernels of :mod:`nnteleport.gspace._native` (CPU, float32 /
    float64, contiguous parameters; one call per direction) or the eager plan (any device and dtype).
    """

    def __init__(
        self, layout: Layout, eager: EagerPlan, V: Tensor, D: Tensor, *, direct: bool, native: bool | None
    ) -> None:
        self.layout, self.eager, self.V, self.D, self.direct = layout, eager, V, D, direct
        self.vviews, self.dviews = eager.flat_views(V), eager.flat_views(D)
        self.w0 = layout.layers[0].weight
        self._bias_views = [
            (lay.bias, V[bo : bo + lay.out], S)
            for lay, bo, S in zip(layout.layers, layout.b_off, layout.S)
            if lay.bias is not None and bo is not None
        ]
        self._swapped = False  # the model's first-layer gradient holds dL/du (eager pull, direct chart)
        self._g0_created = False
        self._g0_saved: Tensor | None = None
        self._pulled_native = False  # the model's first-layer gradient holds dL/du (native pull, direct chart)
        self.fresh = False  # path factors computed from the current coordinates
        self._tail = [lay.weight for lay in layout.layers[1:]]
        biases = [b for b in layout.biases if b is not None]
        self._seg_params = self._tail if direct else [self.w0, *self._tail, *biases]
        usable = (
            V.device.type == "cpu"
            and V.dtype in (torch.float32, torch.float64)
            and all(
                p.is_contiguous() and p.dtype == V.dtype and p.device == V.device for p in [self.w0, *self._seg_params]
            )
        )
        if direct:  # eager direct chart: the first-layer root pred edges (unique dense = flat positions)
            root = layout.root_pred_global
            self._r0 = torch.unique(root[root < layout.n0]) if root.numel() else layout.long([])
            self._r0_sign = layout.S[0][self._r0 // layout.layers[0].cols] if self._r0.numel() else V[:0]
        # the C loops are single-threaded: with several torch threads, large charts go to the parallel eager ops
        small = V.numel() <= NATIVE_AUTO_MAX_NUMEL or torch.get_num_threads() == 1
        lib = _native.load() if native is True or (native is None and usable and small) else None
        if lib is not None and not usable:
            lib = None
        if native is True and lib is None:
            why = _native.status() if usable else "needs CPU float32/float64 contiguous parameters"
            raise RuntimeError(f"native G-space kernels requested but unavailable: {why}")
        self.lib = lib
        if lib is not None:
            self._build_plan()

    @property
    def native(self) -> bool:
        """Whether the fused C kernels run the per-step work."""
        return self.lib is not None

    # -- native plan ----------------------------------------------------------------------------------------
    def _segments(self) -> tuple[list[tuple[int, int, int, int, int, Tensor, Tensor]], dict[int, int]]:
        """The plan's dense segments ``(rows, cols, rep, hid_base, dense_off, rowf, param)`` and the segment
        index of each layer ``1..L-1``."""
        lo = self.layout
        segs = []
        idx_of: dict[int, int] = {}
        if not self.direct:
            lay0 = lo.layers[0]
            segs.append((lay0.out, lay0.cols, 1, -1, 0, lo.invS[0], self.w0))
        for i in range(1, len(lo.layers)):
            lay = lo.layers[i]
            idx_of[i] = len(segs)
            segs.append((lay.out, lay.cols, lay.rep, lo.hid_off[i - 1], lo.w_off[i], lo.invS[i], lay.weight))
        if not self.direct:
            for lay, bo, inv in zip(lo.layers, lo.b_off, lo.invS):
                if bo is not None:
                    segs.append((lay.out, 1, 1, -1, bo, inv, lay.bias))
        return segs, idx_of

    def _build_plan(self) -> None:
        lo, dev, dt = self.layout, self.V.device, self.V.dtype
        n0 = lo.n0
        keep: list[object] = []  # the plan points into these tensors: keep them alive

        def ptr(t: Tensor) -> int:
            t = t.contiguous()
            keep.append(t)
            return t.data_ptr()

        segs, idx_of = self._segments()
        arr = (_native.NtSeg * len(segs))()
        for k, (rows, cols, rep, hb, off, rowf, param) in enumerate(segs):
            arr[k] = _native.NtSeg(rows, cols, rep, hb, off, ptr(rowf.to(dt)), param.data_ptr())
        keep.append(arr)
        root = lo.root_pred_global.clone()
        cinv = 1.0 / lo.root_coef
        if self.direct and root.numel():
            first = root < n0
            s0 = lo.S[0][root.clamp(max=max(n0 - 1, 0)) // lo.layers[0].cols]
            cinv = torch.where(first, cinv / s0, cinv)
            root = torch.where(first, -1 - root, root)
        H = root.numel()
        scratch = torch.zeros(4, max(H, 1), dtype=dt, device=dev)
        fixed_seg = torch.cat(
            [torch.full_like(f, idx_of[i]) for i, f in enumerate(lo.fixed_flat) if i > 0 and f.numel()] or [lo.long([])]
        )
        fixed_local = torch.cat([f for i, f in enumerate(lo.fixed_flat) if i > 0] or [lo.long([])])
        fixed_val = torch.cat([v for i, v in enumerate(lo.fixed_vals) if i > 0] or [lo.long([])]).to(dt)
        plan = _native.NtPlan()
        plan.nseg, plan.segs, plan.H = len(segs), arr, H
        plan.root_loc, plan.cinv = ptr(root.to(torch.int64)), ptr(cinv.to(dt))
        plan.Ur, plan.colf, plan.Tsum, plan.gsave = (ptr(scratch[j]) for j in range(4))
        plan.nfixed = fixed_local.numel()
        plan.fixed_dense = ptr(lo.fixed_global.to(torch.int64))
        plan.fixed_seg, plan.fixed_local = ptr(fixed_seg.to(torch.int64)), ptr(fixed_local.to(torch.int64))
        plan.fixed_val = ptr(fixed_val)
        plan.V, plan.D = self.V.data_ptr(), self.D.data_ptr()
        plan.direct_w = self.w0.data_ptr() if self.direct else None
        # gradient addresses, refreshed before every pull: the segments' parameters, then the direct weight
        self._grad_params = [*self._seg_params, self.w0] if self.direct else list(self._seg_params)
        self._grad_ptrs = (ctypes.c_int64 * (len(segs) + 1))()
        plan.grads = self._grad_ptrs
        self._keep, self._arr, self.plan = keep, arr, plan
        self._plan_ref = ctypes.byref(plan)
        suffix = "f32" if dt == torch.float32 else "f64"
        lib = self.lib
        self._c_factors = getattr(lib, f"nt_factors_{suffix}")
        self._c_push = getattr(lib, f"nt_push_{suffix}")
        self._c_pull = getattr(lib, f"nt_pull_{suffix}")
        self._c_restore = getattr(lib, f"nt_restore_{suffix}")
        self._storage_params = [self.w0, *self._seg_params]
        self._param_ptrs = [p.data_ptr() for p in self._storage_params]

    def _check_storage(self) -> None:
        """Rebuild the plan if a parameter's storage was replaced (``param.data = ...``, ``module.to()``)."""
        if [p.data_ptr() for p in self._storage_params] != self._param_ptrs:
            usable = all(
                p.is_contiguous() and p.device == self.V.device and p.dtype == self.V.dtype
                for p in self._storage_params
            )
            if not usable:
                raise RuntimeError(
                    "the chain's parameters were moved or made non-contiguous after the G-space optimizer was "
                    "built; build the optimizer after moving the model"
                )
            self._build_plan()

    # -- the three steps -------------------------------------------------------------------------------------
    def pull(self) -> bool:
        """``D = dL/dv`` from the model's gradients (direct chart: also the first layer's gradient becomes
        ``dL/du``). Returns False (nothing written) when no chain parameter has a gradient."""
        if self.lib is not None:
            grads = [p.grad for p in self._grad_params]
            try:
                if all(map(Tensor.is_contiguous, grads)):  # TypeError for a None gradient: eager path
                    self._check_storage()
                    self._grad_ptrs[: len(grads)] = [g.data_ptr() for g in grads]
                    if not self.fresh:
                        self._c_factors(self._plan_ref)
                        self.fresh = True
                    self._c_pull(self._plan_ref)
                    self._pulled_native = self.direct
                    return True
            except TypeError:
                pass
        with torch.no_grad():
            return self._pull_eager()

    def _pull_eager(self) -> bool:
        ep = self.eager
        if all(p.grad is None for p in ep.dense_params):
            return False
        if not self.direct:
            if not self.fresh:
                ep.factors_of = None
            ep.dense_gradient(self.V, self.D, self.dviews, self.vviews)
            self.fresh = True
            return True
        # direct chart: the first layer's roots into V, corrections into the first layer's region of D, from
        # there into the model's first-layer gradient (its entries at the roots are saved for restore)
        if not self.fresh or ep.factors_of is not self.V:  # (the native push leaves the dense roots stale)
            self._roots_from_w0()
        r0 = self._r0
        self.D.index_fill_(0, r0, 0)
        ep.dense_gradient(self.V, self.D, self.dviews, self.vviews, first=False)
        self.fresh = True
        if self.w0.grad is None:
            self.w0.grad, self._g0_created = torch.zeros_like(self.w0), True
        g0 = self.w0.grad.view(-1)
        self._g0_saved = g0.index_select(0, r0)
        g0.index_add_(0, r0, self.D.index_select(0, r0) * self._r0_sign)
        self._swapped = True
        return True

    def _roots_from_w0(self) -> None:
        """Eager direct chart: the coordinates ``v = u S`` of the first-layer root pred edges from the weight."""
        r0 = self._r0
        if r0.numel():
            self.V.index_copy_(0, r0, self.w0.view(-1).index_select(0, r0) * self._r0_sign)
        self.eager.factors_of = None

    def restore(self) -> None:
        """Give the model back the gradients ``backward`` computed (direct chart)."""
        if not self.direct:
            return
        if self._swapped:
            self._swapped = False
            if self._g0_created:
                self.w0.grad, self._g0_created = None, False
            elif self.w0.grad is not None:
                with torch.no_grad():
                    self.w0.grad.view(-1).index_copy_(0, self._r0, self._g0_saved)
        elif self._pulled_native:
            self._pulled_native = False
            if self.w0.grad is not None and self.w0.grad.data_ptr() == self._grad_ptrs[len(self._seg_params)]:
                self._c_restore(self._plan_ref)

    def push(self) -> None:
        """Path factors from the coordinates, then the weights (direct chart: the first layer's weight and the
        biases are coordinates themselves and are not written)."""
        if self.lib is not None:
            self._check_storage()
            self._c_push(self._plan_ref)
            self.eager.factors_of = None  # the eager path's cached factors are stale now
        else:
            with torch.no_grad():
                if self.direct:
                    self._roots_from_w0()
                self.eager.write(self.V, self.vviews, direct=self.direct)
        self.fresh = True

    def invalidate(self) -> None:
        """The coordinates were changed from outside: recompute the path factors before the next use."""
        self.fresh = False
        self.eager.factors_of = None

    @torch.no_grad()
    def mirror_direct(self) -> None:
        """Eager direct chart: the dense first-layer region from the first layer's weight (``v = u S``)."""
        w0 = self.w0.detach()
        torch.mul(w0.reshape(self.vviews[0].shape), self.layout.S[0][:, None], out=self.vviews[0])
        for b, vb, S in self._bias_views:
            torch.mul(b.detach(), S, out=vb)
        self.eager.factors_of = None
