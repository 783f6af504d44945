"""G-space: the positively scale-invariant coordinates of a ReLU-family network, and any optimizer on them.

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

computed per layer with a handful of whole-matrix operations (no loop over weights). Autograd through
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

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.autograd import profiler as _profiler_state
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.optim import optimizer as _optim_mod

from nnteleport._choice import Choice
from nnteleport.errors import UnsupportedModelError
from nnteleport.gspace import _native

# the global optimizer step hooks (``register_optimizer_step_pre/post_hook``), run by GSpaceOptimizer.step itself
_GLOBAL_PRE_HOOKS: dict[int, Any] = getattr(_optim_mod, "_global_optimizer_pre_hooks", {})
_GLOBAL_POST_HOOKS: dict[int, Any] = getattr(_optim_mod, "_global_optimizer_post_hooks", {})

__all__ = ["ChainLayer", "GSpace", "GSpaceOptimizer", "Skeleton", "trace_chain"]


class Skeleton(Choice, what="skeleton"):
    """How skeleton weights are selected (see the module docstring)."""

    GREEDY = "greedy"
    DIAGONAL = "diagonal"


# ----------------------------------------------------------------------------------------------------------
# Chain discovery (torch.fx)
# ----------------------------------------------------------------------------------------------------------

_HOMOGENEOUS_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
)
# functions / methods that are positively homogeneous per channel (by name, robust to torch's wrappers)
_HOMOGENEOUS_NAMES = {
    "relu",
    "relu_",
    "leaky_relu",
    "leaky_relu_",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "flatten",
    "view",
    "reshape",
    "contiguous",
    "clone",
    "identity",
    *(f"{p}{k}_pool{d}d" for p in ("", "_") for k in ("max", "avg") for d in (1, 2, 3)),
    *(f"adaptive_{k}_pool{d}d" for k in ("max", "avg") for d in (1, 2, 3)),
}
_SHAPE_QUERIES = {"size", "dim", "shape", "ndim", "numel"}


@dataclass(frozen=True)
class ChainLayer:
    """One parametrised layer of a ReLU-family chain.

    Attributes
    ----------
    name : str
        Module path in the model (``"fc1"``, ``"features.0"``).
    module : nn.Module
        The ``nn.Linear`` or ``nn.ConvNd``.
    rep : int
        Columns of the weight matrix per source neuron (kernel size, or ``H*W`` after a flatten).
    out, cols : int
        Shape of the weight viewed as a matrix (output neurons, ``in * kernel size`` columns).
    """

    name: str
    module: nn.Module
    rep: int
    out: int
    cols: int

    @property
    def weight(self) -> Tensor:
        return self.module.weight

    @property
    def bias(self) -> Tensor | None:
        return self.module.bias

    @property
    def sources(self) -> int:
        return self.cols // self.rep

    def matrix(self) -> Tensor:
        """The weight as an ``(out, cols)`` view (shares storage with the parameter)."""
        return self.module.weight.view(self.out, self.cols)


def _describe(node: fx.Node, model: nn.Module) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(model.get_submodule(str(node.target))).__name__})"
    if node.op == "call_method":
        return f"method '.{node.target}()' at node {node.name!r}"
    name = getattr(node.target, "__name__", str(node.target))
    return f"function {name!r} at node {node.name!r}"


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        if node.target is getattr:
            return str(node.args[1]) if len(node.args) > 1 else "getattr"
        return getattr(node.target, "__name__", str(node.target)).lower()
    return ""


def trace_chain(model: nn.Module) -> list[ChainLayer]:
    """Discover the chain of ``Linear`` / ``ConvNd`` layers of ``model`` with ``torch.fx``.

    Before the first and after the last layer anything parameter-free is allowed (the inputs and outputs are
    pinned, so they carry no symmetry); between two layers only channel-wise positively homogeneous
    operations (:data:`_HOMOGENEOUS_MODULES`, ``relu``, ``leaky_relu``, pooling, dropout, flatten / view).

    Raises
    ------
    ValueError
        Naming the offending module or node: residual connections or any other branching, BatchNorm or other
        parametrised modules, non-homogeneous activations between layers, grouped or transposed convolutions,
        modules called twice, models that ``torch.fx`` cannot trace.
    """
    if isinstance(model, (nn.Linear, _ConvNd)):
        raise UnsupportedModelError(
            f"GSpace: the model is a bare {type(model).__name__} layer; one layer has no hidden neurons, so its "
            "G-space is its weight space (no rescaling symmetry to remove): use a plain torch.optim optimizer, or "
            "wrap it as nn.Sequential(layer) to use the G-space machinery anyway"
        )
    try:
        graph = fx.Tracer().trace(model)
    except Exception as exc:  # fx raises many exception types
        raise ValueError(
            f"could not trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
            "G-space needs a model without data-dependent control flow, e.g. an nn.Sequential of "
            "Linear/Conv and ReLU"
        ) from exc

    current: fx.Node | None = None
    chain_nodes: set[fx.Node] = set()
    attr_nodes: set[fx.Node] = set()
    found: list[tuple[str, nn.Module]] = []
    pending: list[str] = []  # non-homogeneous ops seen since the last layer
    for node in graph.nodes:
        if node.op == "placeholder":
            if current is None:
                current = node
                chain_nodes.add(node)
            elif node.users:
                raise ValueError(f"model input {node.name!r}: G-space supports a single input tensor")
            continue
        if node.op == "get_attr":
            attr_nodes.add(node)
            continue
        inputs = node.all_input_nodes
        chain_in = [a for a in inputs if a in chain_nodes]
        if node.op == "output":
            if any(a is not current for a in chain_in):
                raise ValueError(
                    "the model returns an intermediate tensor besides its output; G-space needs a plain chain"
                )
            continue
        if not chain_in:
            continue  # constants and shape arithmetic
        desc = _describe(node, model)
        if len(chain_in) > 1 or chain_in[0] is not current:
            raise ValueError(
                f"{desc} combines or reuses intermediate tensors (a residual / skip connection or a branch); "
                "G-space and weight fixing support plain chains of Linear/Conv layers only"
            )
        if any(a in attr_nodes for a in inputs):
            raise ValueError(
                f"{desc} uses a parameter or buffer directly (functional layer); use nn.Linear / nn.Conv modules"
            )
        name = _op_name(node)
        if name in _SHAPE_QUERIES:
            continue  # output is not a tensor of the chain
        if node.op == "call_module":
            mod = model.get_submodule(str(node.target))
            if isinstance(mod, (nn.Linear, _ConvNd)) and not isinstance(mod, _ConvTransposeNd):
                if isinstance(mod, _ConvNd) and mod.groups != 1:
                    raise ValueError(f"{desc} has groups={mod.groups}; only groups=1 convolutions are supported")
                if any(m is mod for _, m in found):
                    raise ValueError(f"{desc} is called twice (shared weights); this is not supported")
                if found and pending:
                    raise ValueError(
                        f"between layer {found[-1][0]!r} and {node.target!r}: {pending[0]} is not positively "
                        "homogeneous per channel; supported in between are ReLU, LeakyReLU, max/avg pooling, "
                        "dropout and flatten"
                    )
                found.append((str(node.target), mod))
                pending = []
            elif isinstance(mod, _HOMOGENEOUS_MODULES):
                pass
            elif isinstance(mod, nn.modules.batchnorm._NormBase):
                raise ValueError(
                    f"{desc}: batch normalisation is not supported by G-space / weight fixing (its output is "
                    "invariant to the scale of its input); fold it into the preceding layer or remove it"
                )
            elif any(True for _ in mod.parameters()):
                raise ValueError(
                    f"{desc} has parameters but is not nn.Linear / nn.ConvNd; G-space and weight fixing "
                    "support chains of Linear/Conv layers with ReLU-family activations in between"
                )
            else:
                pending.append(desc)
        elif name not in _HOMOGENEOUS_NAMES:
            pending.append(desc)
        current = node
        chain_nodes.add(node)

    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear / nn.ConvNd layer")
    chain_params = {id(p) for _, m in found for p in m.parameters()}
    stray = [n for n, p in model.named_parameters() if id(p) not in chain_params and p.requires_grad]
    if stray:
        raise ValueError(f"parameters {stray[:5]} are not in the Linear/Conv chain; G-space cannot represent them")

    layers: list[ChainLayer] = []
    for i, (name, mod) in enumerate(found):
        if not mod.weight.is_contiguous():
            raise ValueError(f"weight of {name!r} is not contiguous; call .contiguous() on it first")
        cols = mod.weight[0].numel()
        if i == 0:
            rep = cols // (mod.weight.shape[1])
        else:
            prev_name, prev = found[i - 1]
            prev_out = prev.weight.shape[0]
            if isinstance(mod, _ConvNd):
                if not isinstance(prev, _ConvNd) or mod.in_channels != prev_out:
                    raise ValueError(
                        f"layer {name!r} ({mod.in_channels} input channels) does not read the {prev_out} "
                        f"output channels of {prev_name!r} directly"
                    )
                rep = cols // mod.in_channels
            else:
                if cols % prev_out != 0 or (isinstance(prev, nn.Linear) and cols != prev_out):
                    raise ValueError(
                        f"layer {name!r} has {cols} input features, not a flatten of the {prev_out} outputs "
                        f"of {prev_name!r}"
                    )
                rep = cols // prev_out
        layers.append(ChainLayer(name, mod, rep, mod.weight.shape[0], cols))
    return layers


# ----------------------------------------------------------------------------------------------------------
# G-space
# ----------------------------------------------------------------------------------------------------------


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
        # the parameter objects (assumed stable; their storage may be replaced: they are used directly)
        self._weights = [lay.weight for lay in self.layers]
        self._biases = [lay.bias for lay in self.layers]
        self._params_list = self.parameters()
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
        self._build_kernels()

    @torch.no_grad()
    def _build_kernels(self) -> None:
        """Constants and buffers of the hot path (:meth:`_dense_gradient`, :meth:`_write`).

        Dense factor ``K = 1 / (P(src) S(dst))`` (zero at fixed entries): the gradient is ``G * K`` plus the
        pred-edge corrections, the weights are ``F + V * K`` (``F``: fixed values at fixed entries, zero
        elsewhere). For layer 0 (``P = 1``, no fixed entries) ``K`` is the constant column ``1 / S_0``; for the
        biases it is the constant ``1 / S``; only the weights of layers ``1..L-1`` depend on ``P``, i.e. on the
        ``H`` root pred-edge coordinates ``V_r``: ``1 / P = (1 / c_root) / V_r``. Consecutive layers with equal
        ``(out, cols, rep)`` form one group, a batched ``(n, out, sources, rep)`` view, so the per-step work is a
        fixed handful of operations whatever the depth.
        """
        dev, dt = self._device, self._dtype
        L, m = len(self.layers), self.dense_numel
        lay0 = self.layers[0]
        n0 = lay0.out * lay0.cols
        self._n0 = n0
        Kc = torch.empty(m, dtype=dt, device=dev)
        for lay, wo, bo, inv in zip(self.layers, self._w_off, self._b_off, self._invS):
            Kc[wo : wo + lay.out * lay.cols].view(lay.out, lay.cols).copy_(inv[:, None].expand(lay.out, lay.cols))
            if bo is not None:
                Kc[bo : bo + lay.out].copy_(inv)
        Kc[self._fixed_global] = 0
        Fd = torch.zeros(m, dtype=dt, device=dev)
        Fd[self._fixed_global] = torch.cat(self._fixed_vals)
        self._Kc_tail, self._F_tail = Kc[n0:], Fd[n0:]
        self._K_tail = self._Kc_tail.clone()
        self._ntw = self._w_off[-1] + self.layers[-1].out * self.layers[-1].cols - n0  # weights of layers 1..L-1
        self._wbuf = torch.empty(m - n0, dtype=dt, device=dev)
        self._work = torch.empty(self._ntw, dtype=dt, device=dev)
        H = self.num_hidden
        self._Vr = torch.empty(H, dtype=dt, device=dev)
        self._T = torch.empty(H, dtype=dt, device=dev)
        self._corr = torch.empty(H, dtype=dt, device=dev)
        inv_root_coef = 1.0 / self._root_coef  # 1 / P(a) = inv_root_coef(a) / V_r(a)
        # tail parameters in dense order: weights of layers 1..L-1, then all biases
        self._tail_params: list[Tensor] = [lay.weight for lay in self.layers[1:]]
        self._tail_params += [b for b in self._biases if b is not None]
        self._dense_params: list[Tensor] = [self._weights[0], *self._tail_params]
        # groups of consecutive layers 1..L-1 with equal (out, cols, rep)
        groups: list[tuple[int, int]] = []
        i = 1
        while i < L:
            j = i + 1
            key = (self.layers[i].out, self.layers[i].cols, self.layers[i].rep)
            while j < L and (self.layers[j].out, self.layers[j].cols, self.layers[j].rep) == key:
                j += 1
            groups.append((i, j))
            i = j
        self._groups = groups
        self._K_groups = self._group_views(self._K_tail, n0)
        self._work_groups = self._group_views(self._work, n0)
        # K = Kc * (1 / P(src)) = (Kc * inv_root_coef(src)) / V_r(src): one division per group
        self._KcR_groups, self._Vr_groups, self._T_groups, self._sum_dims = [], [], [], []
        for (i0, i1), Kcg in zip(groups, self._group_views(self._Kc_tail, n0)):
            lay = self.layers[i0]
            h0, h1 = self._hid_off[i0 - 1], self._hid_off[i1 - 1]
            src_shape = (i1 - i0, 1, lay.cols) if lay.rep == 1 else (i1 - i0, 1, lay.sources, 1)
            self._KcR_groups.append(Kcg * inv_root_coef[h0:h1].view(src_shape))
            self._Vr_groups.append(self._Vr[h0:h1].view(src_shape))
            self._T_groups.append(self._T[h0:h1].view(i1 - i0, lay.sources))
            self._sum_dims.append((1,) if lay.rep == 1 else (1, 3))
        self._wbuf_views = self._param_views(self._wbuf, self._tail_params)
        # the same for the weights of layers 1..L-1 alone (the optimizer's direct chart)
        ntw = self._ntw
        self._F_w, self._K_w, self._wbuf_w = self._F_tail[:ntw], self._K_tail[:ntw], self._wbuf[:ntw]
        self._tail_weights = self._tail_params[: L - 1]
        self._wbuf_views_w = self._wbuf_views[: L - 1]
        self._factors_of: Tensor | None = None  # the coordinate tensor the factors were computed from

    def _group_views(self, tail: Tensor, base: int) -> list[Tensor]:
        """Per group, the ``(n, out, sources, rep)`` view (``(n, out, cols)`` if ``rep == 1``) of the weights of
        a flat tensor starting at ``base``."""
        out = []
        for i0, i1 in self._groups:
            lay = self.layers[i0]
            a = self._w_off[i0] - base
            b = a + (i1 - i0) * lay.out * lay.cols
            shape = (i1 - i0, lay.out, lay.cols) if lay.rep == 1 else (i1 - i0, lay.out, lay.sources, lay.rep)
            out.append(tail[a:b].view(shape))
        return out

    @staticmethod
    def _param_views(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
        """Consecutive views of ``flat`` shaped like ``params``."""
        views, off = [], 0
        for p in params:
            views.append(flat[off : off + p.numel()].view(p.shape))
            off += p.numel()
        return views

    def _flat_views(self, X: Tensor) -> tuple[Tensor, Tensor, Tensor, list[Tensor], list[Tensor]]:
        """Views of a dense flat tensor for the hot path: layer 0's ``(out, cols)`` matrix, the tail (everything
        after it), the weights of layers ``1..L-1``, their group views, the tail split like the parameters."""
        lay0 = self.layers[0]
        n0 = self._n0
        tail = X[n0:]
        return (
            X[:n0].view(lay0.out, lay0.cols),
            tail,
            tail[: self._ntw],
            self._group_views(tail, n0),
            self._param_views(tail, self._tail_params),
        )

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
        self._invS_col = [s[:, None] for s in self._invS]
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
    def _compute_factors(self, V: Tensor) -> None:
        """Path factors of dense coordinates ``V``: root pred-edge values ``V_r`` and ``K`` of layers
        ``1..L-1`` (one gather, one broadcast division per group)."""
        if self._Vr.numel():
            torch.index_select(V, 0, self._root_pred_global, out=self._Vr)
            for Kg, KcR, Vrg in zip(self._K_groups, self._KcR_groups, self._Vr_groups):
                torch.div(KcR, Vrg, out=Kg)
        self._factors_of = V

    @torch.no_grad()
    def _write(
        self, V: Tensor, vviews: tuple[Tensor, Tensor, Tensor, list[Tensor], list[Tensor]], direct: bool = False
    ) -> None:
        """Hot path of :meth:`write_dense` (``vviews = _flat_views(V)``): 4 + (number of groups) ops. With
        ``direct=True`` only the weights of layers ``1..L-1`` are written (not the first layer, not the biases)."""
        self._compute_factors(V)
        w0 = self._weights[0]
        if not direct:
            torch.mul(vviews[0], self._invS_col[0], out=w0 if w0.dim() == 2 else w0.view(vviews[0].shape))
        if not self._tail_params:
            return
        if direct:  # the weights of layers 1..L-1 only (views prepared in _build_kernels)
            if self._tail_weights:
                torch.addcmul(self._F_w, vviews[2], self._K_w, out=self._wbuf_w)
                torch._foreach_copy_(self._tail_weights, self._wbuf_views_w)
        else:
            torch.addcmul(self._F_tail, vviews[1], self._K_tail, out=self._wbuf)
            torch._foreach_copy_(self._tail_params, self._wbuf_views)

    @torch.no_grad()
    def write_dense(self, V: Tensor) -> None:
        """Weight allocation from dense coordinates ``V`` (shape ``(m,)``), in place:
        ``M_i = V_i / (S_i P_{i-1}(src))`` at non-fixed entries, fixed entries at their constants."""
        self._write(V, self._flat_views(V))

    @torch.no_grad()
    def _dense_gradient(
        self,
        V: Tensor,
        out: Tensor,
        oviews: tuple[Tensor, Tensor, Tensor, list[Tensor], list[Tensor]],
        vviews: tuple[Tensor, Tensor, Tensor, list[Tensor], list[Tensor]],
        first: bool = True,
    ) -> bool:
        """Hot path of :meth:`dense_gradient` (views from :meth:`_flat_views`); reuses the factors if they were
        computed from this very tensor ``V`` (the caller guarantees ``V`` did not change since). With
        ``first=False`` the first layer's region of ``out`` only receives the pred-edge corrections."""
        grads = [p.grad for p in self._dense_params]
        if any(g is None for g in grads):
            if all(g is None for g in grads):
                return False
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self._dense_params, grads)]
        if self._factors_of is not V:
            self._compute_factors(V)
        g0 = grads[0]
        if first:
            torch.mul(g0 if g0.dim() == 2 else g0.reshape(oviews[0].shape), self._invS_col[0], out=oviews[0])
        if not self._tail_params:
            return True
        torch._foreach_copy_(oviews[4], grads[1:])
        oviews[1].mul_(self._K_tail)  # dL/dw / (P S), zero at fixed entries
        if self._Vr.numel():
            # pred-edge corrections: T(a) = sum of v_f dL/dv_f over the weights leaving hidden neuron a, sent to
            # the pred edge of root(a) as -T(a) / v_root
            torch.mul(vviews[2], oviews[2], out=self._work)
            for wg, Tg, dims in zip(self._work_groups, self._T_groups, self._sum_dims):
                torch.sum(wg, dim=dims, out=Tg)
            torch.div(self._T, self._Vr, out=self._corr)
            out.index_add_(0, self._root_pred_global, self._corr, alpha=-1)
        return True

    @torch.no_grad()
    def dense_gradient(self, V: Tensor, out: Tensor) -> bool:
        """``dL/dv`` in the dense layout from the model's ``.grad`` (after ``loss.backward()``), into ``out``.

        ``V`` are the current dense coordinates. Closed-form inverse chain rule (module docstring):
        ``D = G / (S P)`` on every non-fixed entry, zero at fixed entries; then on the pred edge of every root
        ``r`` the correction ``- sum_a T(a) / v_pred(r)`` over the hidden neurons ``a`` with ``root(a) = r``,
        ``T(a)`` the sum of ``g_f = w_f G_f = v_f D_f`` over the non-fixed weights leaving ``a``. About a dozen
        whole-tensor operations whatever the depth (:meth:`_build_kernels`). Returns False (``out``
        untouched) when no chain parameter has a gradient.
        """
        self._factors_of = None
        return self._dense_gradient(V, out, self._flat_views(out), self._flat_views(V))

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


@torch.no_grad()
def rescale_chain(layers: list[ChainLayer], alphas: list[Tensor]) -> None:
    """Positive rescaling of the hidden neurons of a chain, in place (function-preserving).

    ``alphas[i]`` (shape ``(out_i,)``, ``> 0``) multiplies the incoming weights and bias of layer ``i``'s
    neurons and divides their outgoing weights (Jestädt Eq. 1.13): ``M_i <- diag(alpha_i) M_i``,
    ``M_{i+1} <- M_{i+1} diag(1 / alpha_i[src])``.
    """
    for i, a in enumerate(alphas):
        if bool((a <= 0).any()) or not bool(torch.isfinite(a).all()):
            raise ValueError(f"rescaling factors of layer {layers[i].name!r} must be positive and finite")
        lay, nxt = layers[i], layers[i + 1]
        lay.matrix().mul_(a[:, None].to(lay.weight.dtype))
        if lay.bias is not None:
            lay.bias.mul_(a.to(lay.bias.dtype))
        nxt.matrix().div_(a.repeat_interleave(nxt.rep)[None, :].to(nxt.weight.dtype))


# ----------------------------------------------------------------------------------------------------------
# The optimizer's per-step work
# ----------------------------------------------------------------------------------------------------------

#: ``native=None`` uses the (single-threaded) C kernels for charts up to this many dense entries, or for any size
#: when torch runs one thread
_NATIVE_AUTO_MAX_NUMEL = 1 << 22


class _HotPath:
    """Per-step work of :class:`GSpaceOptimizer` on the dense coordinates ``V`` and their gradient ``D``.

    ``pull`` turns the model's gradients into ``dL/dv`` (:meth:`GSpace.dense_gradient`), ``push`` computes the
    path factors and writes the weights (:meth:`GSpace.write_dense`), ``restore`` undoes what ``pull`` did to
    the model's own gradients (direct chart only).

    Direct chart (``direct=True``, needs :attr:`GSpace.unit_skeleton`): every suffix product ``S`` is ``±1``,
    so the coordinate of a first-layer weight is ``v = w S`` and of a bias ``v = b S``. The optimizer then runs
    on ``u = v S`` (a constant sign flip per coordinate, under which every element-wise optimizer and every
    inner-product based one, L-BFGS included, takes the same steps), i.e. on these parameters themselves: no
    copy and no pass over them. Their gradient ``dL/du`` is the model's gradient, except at the first-layer
    pred edges that are roots, which take the correction ``- T / u`` (written into the model's gradient by
    ``pull`` and undone by ``restore``). The path factors read the roots' coordinates from the first layer's
    weight (``P = u * c / S``, the sign folded into the constant). The dense buffers keep their layout; their
    first-layer and bias regions are then unused (kept in sync only by the eager path).

    Two implementations, same plan: the fused C kernels of :mod:`nnteleport.gspace._native` (CPU, float32 / float64,
    contiguous parameters; one call per direction) or whole-tensor PyTorch operations (any device and dtype).
    """

    def __init__(self, gs: GSpace, V: Tensor, D: Tensor, *, direct: bool, native: bool | None) -> None:
        self.gs, self.V, self.D, self.direct = gs, V, D, direct
        self.vviews, self.dviews = gs._flat_views(V), gs._flat_views(D)
        self.w0 = gs._weights[0]
        self._bias_views = [(b, vb, S) for (_, vb), b, S in zip(gs.layout_views(V), gs._biases, gs._S) if b is not None]
        self._swapped = False  # the model's first-layer gradient holds dL/du (eager pull, direct chart)
        self._g0_created = False
        self._g0_saved: Tensor | None = None
        self._pulled_native = False  # the model's first-layer gradient holds dL/du (native pull, direct chart)
        self.fresh = False  # path factors computed from the current coordinates
        self._tail = [lay.weight for lay in gs.layers[1:]]
        self._seg_params = self._tail if direct else [self.w0, *self._tail, *(b for b in gs._biases if b is not None)]
        usable = (
            V.device.type == "cpu"
            and V.dtype in (torch.float32, torch.float64)
            and all(
                p.is_contiguous() and p.dtype == V.dtype and p.device == V.device for p in [self.w0, *self._seg_params]
            )
        )
        if direct:  # eager direct chart: the first-layer root pred edges (unique dense = flat positions)
            root = gs._root_pred_global
            self._r0 = torch.unique(root[root < gs._n0]) if root.numel() else gs._long([])
            self._r0_sign = gs._S[0][self._r0 // gs.layers[0].cols] if self._r0.numel() else V[:0]
        # the C loops are single-threaded: with several torch threads, large charts go to the parallel eager ops
        small = V.numel() <= _NATIVE_AUTO_MAX_NUMEL or torch.get_num_threads() == 1
        lib = _native.load() if native is True or (native is None and usable and small) else None
        if lib is not None and not usable:
            lib = None
        if native is True and lib is None:
            why = _native.status() if usable else "needs CPU float32/float64 contiguous parameters"
            raise RuntimeError(f"native G-space kernels requested but unavailable: {why}")
        self.lib = lib
        if lib is not None:
            self._build_plan()

    # -- native plan ----------------------------------------------------------------------------------------
    def _build_plan(self) -> None:
        gs, dev, dt = self.gs, self.V.device, self.V.dtype
        n0 = gs._n0
        keep: list[Tensor] = []  # the plan points into these tensors: keep them alive

        def ptr(t: Tensor) -> int:
            t = t.contiguous()
            keep.append(t)
            return t.data_ptr()

        segs = []
        idx_of: dict[int, int] = {}
        if not self.direct:
            lay0 = gs.layers[0]
            segs.append((lay0.out, lay0.cols, 1, -1, 0, gs._invS[0], self.w0))
        for i in range(1, len(gs.layers)):
            lay = gs.layers[i]
            idx_of[i] = len(segs)
            segs.append((lay.out, lay.cols, lay.rep, gs._hid_off[i - 1], gs._w_off[i], gs._invS[i], lay.weight))
        if not self.direct:
            for lay, bo, inv in zip(gs.layers, gs._b_off, gs._invS):
                if bo is not None:
                    segs.append((lay.out, 1, 1, -1, bo, inv, lay.bias))
        arr = (_native.NtSeg * len(segs))()
        for k, (rows, cols, rep, hb, off, rowf, param) in enumerate(segs):
            arr[k] = _native.NtSeg(rows, cols, rep, hb, off, ptr(rowf.to(dt)), param.data_ptr())
        keep.append(arr)  # type: ignore[arg-type]
        root = gs._root_pred_global.clone()
        cinv = 1.0 / gs._root_coef
        if self.direct and root.numel():
            first = root < n0
            s0 = gs._S[0][root.clamp(max=max(n0 - 1, 0)) // gs.layers[0].cols]
            cinv = torch.where(first, cinv / s0, cinv)
            root = torch.where(first, -1 - root, root)
        H = root.numel()
        scratch = torch.zeros(4, max(H, 1), dtype=dt, device=dev)
        fixed_seg = torch.cat(
            [torch.full_like(f, idx_of[i]) for i, f in enumerate(gs._fixed_flat) if i > 0 and f.numel()]
            or [gs._long([])]
        )
        fixed_local = torch.cat([f for i, f in enumerate(gs._fixed_flat) if i > 0] or [gs._long([])])
        fixed_val = torch.cat([v for i, v in enumerate(gs._fixed_vals) if i > 0] or [gs._long([])]).to(dt)
        plan = _native.NtPlan()
        plan.nseg, plan.segs, plan.H = len(segs), arr, H
        plan.root_loc, plan.cinv = ptr(root.to(torch.int64)), ptr(cinv.to(dt))
        plan.Ur, plan.colf, plan.Tsum, plan.gsave = (ptr(scratch[j]) for j in range(4))
        plan.nfixed = fixed_local.numel()
        plan.fixed_dense = ptr(gs._fixed_global.to(torch.int64))
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
        gs = self.gs
        if all(p.grad is None for p in gs._dense_params):
            return False
        if not self.direct:
            if not self.fresh:
                gs._factors_of = None
            gs._dense_gradient(self.V, self.D, self.dviews, self.vviews)
            self.fresh = True
            return True
        # direct chart: the first layer's roots into V, corrections into the first layer's region of D, from
        # there into the model's first-layer gradient (its entries at the roots are saved for restore)
        if not self.fresh or gs._factors_of is not self.V:  # (the native push leaves the dense roots stale)
            self._roots_from_w0()
        r0 = self._r0
        self.D.index_fill_(0, r0, 0)
        gs._dense_gradient(self.V, self.D, self.dviews, self.vviews, first=False)
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
        self.gs._factors_of = None

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
            self.gs._factors_of = None  # the eager path's cached factors are stale now
        else:
            with torch.no_grad():
                if self.direct:
                    self._roots_from_w0()
                self.gs._write(self.V, self.vviews, direct=self.direct)
        self.fresh = True

    def invalidate(self) -> None:
        """The coordinates were changed from outside: recompute the path factors before the next use."""
        self.fresh = False
        self.gs._factors_of = None

    @torch.no_grad()
    def _mirror_direct(self) -> None:
        """Eager direct chart: the dense first-layer region from the first layer's weight (``v = u S``)."""
        gs = self.gs
        w0 = self.w0.detach()
        torch.mul(w0.reshape(self.vviews[0].shape), gs._S[0][:, None], out=self.vviews[0])
        for b, vb, S in self._bias_views:
            torch.mul(b.detach(), S, out=vb)
        gs._factors_of = None


# ----------------------------------------------------------------------------------------------------------
# Optimizer wrapper
# ----------------------------------------------------------------------------------------------------------


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
    model : nn.Module or GSpace
        The network (a :class:`GSpace` is built with ``skeleton`` / ``reparametrize``) or a prepared GSpace.
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
        constant sign when every skeleton path product is ``±1``, :class:`_HotPath`). ``None``: whenever the
        skeleton is unit (after ``reparametrize=True``); ``True`` raises if it is not.
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
        model: nn.Module | GSpace,
        optimizer_cls: Callable[..., torch.optim.Optimizer] = torch.optim.SGD,
        *,
        skeleton: str | Skeleton = "greedy",
        reparametrize: bool = False,
        reset_state_each_step: bool = False,
        direct: bool | None = None,
        native: bool | None = None,
        **optimizer_kwargs: Any,
    ) -> None:
        self.gspace = (
            model if isinstance(model, GSpace) else GSpace(model, skeleton=skeleton, reparametrize=reparametrize)
        )
        self.reset_state_each_step = bool(reset_state_each_step)
        gs = self.gspace
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
        self._hot = _HotPath(gs, self._cdet, self._grad_buf, direct=self._direct, native=native)
        if self._direct:
            # the first layer's weight and the biases are coordinates themselves (sign-normalised, see _HotPath);
            # the weights of layers 1..L-1 are a leaf view of the dense coordinates
            a, b = gs._n0, gs._n0 + gs._ntw
            inner_params = [gs._weights[0], *(p for p in gs._biases if p is not None)]
            self._tail_coords = self._cdet[a:b].detach().requires_grad_(True) if b > a else None
            self._tail_grad = self._grad_buf[a:b]
            if self._tail_coords is not None:
                inner_params.append(self._tail_coords)
        else:
            inner_params = [self._coords]
        self.inner = optimizer_cls(inner_params, **optimizer_kwargs)
        super().__init__(inner_params, {})
        self._alias()
        self._params = gs.parameters()
        self._versions = self._current_versions()

    @property
    def direct(self) -> bool:
        """Whether the first layer's weight and the biases are optimised in place (unit skeleton, see
        :class:`_HotPath`)."""
        return self._direct

    @property
    def native(self) -> bool:
        """Whether the fused C kernels run the per-step work (else whole-tensor PyTorch operations)."""
        return self._hot.lib is not None

    def _alias(self) -> None:
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        self.defaults = self.inner.defaults

    def _current_versions(self) -> list[int]:
        return [p._version for p in self._params]

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
        self._hot = _HotPath(self.gspace, self._cdet, self._grad_buf, direct=self._direct, native=self._native)
        self._versions = self._current_versions()

    def _pull_grads(self) -> None:
        if [p._version for p in self._params] != self._versions:
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
        self._versions = [p._version for p in self._params]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One optimizer step in G-space; ``closure`` (optional) re-evaluates the model and calls backward.

        Optimizer step pre/post hooks (global and registered on this optimizer) run as for any
        ``torch.optim`` optimizer; the hook machinery is inlined (``step.hooked``) so that an empty hook list
        costs nothing (the inner optimizer's step is wrapped as usual).
        """
        if _profiler_state._is_profiler_enabled:
            with torch.autograd.profiler.record_function("Optimizer.step#GSpaceOptimizer.step"):
                return self._hooked_step(closure)
        return self._hooked_step(closure)

    step.hooked = True  # type: ignore[attr-defined]  # torch.optim.Optimizer must not wrap it again

    def _hooked_step(self, closure: Callable[[], Any] | None) -> Any:
        args: tuple[Any, ...] = (self,) if closure is None else (self, closure)
        kwargs: dict[str, Any] = {}
        if _GLOBAL_PRE_HOOKS or self._optimizer_step_pre_hooks:
            for pre_hook in (*_GLOBAL_PRE_HOOKS.values(), *self._optimizer_step_pre_hooks.values()):
                result = pre_hook(self, args, kwargs)
                if result is not None:
                    args, kwargs = result
            closure = args[1] if len(args) > 1 else kwargs.get("closure")
        loss = self._step(closure)
        if _GLOBAL_POST_HOOKS or self._optimizer_step_post_hooks:
            for post_hook in (*self._optimizer_step_post_hooks.values(), *_GLOBAL_POST_HOOKS.values()):
                post_hook(self, args, kwargs)
        return loss

    def _step(self, closure: Callable[[], Any] | None) -> Any:
        if closure is None:
            self._pull_grads()
            loss = self.inner.step()
        else:

            def inner_closure() -> Any:
                self._push_weights()
                with torch.enable_grad():
                    value = closure()
                self._pull_grads()
                return value

            loss = self.inner.step(inner_closure)
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
        stale = self._current_versions() != self._versions
        if self._direct and not stale:
            self._hot._mirror_direct()  # the dense first-layer and bias regions, so that coords are complete
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
        self._hot = _HotPath(self.gspace, self._cdet, self._grad_buf, direct=self._direct, native=self._native)
        self._cdet.copy_(coords)
        self._hot.invalidate()
        if changed:
            self.gspace.write_dense(self._cdet)  # all weights, the direct ones included
            self._hot.invalidate()
        self._versions = self._current_versions()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "_params"):
            raise ValueError("GSpaceOptimizer covers the whole chain; parameter groups cannot be added")
        super().add_param_group(param_group)

    def __repr__(self) -> str:
        return f"GSpaceOptimizer({self.gspace!r}, inner={type(self.inner).__name__})"
