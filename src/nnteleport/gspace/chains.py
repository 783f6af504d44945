"""Chain discovery: the ``Linear`` / ``ConvNd`` layers of a ReLU-family network, found with ``torch.fx``.

A *chain* is a sequence of layers ``0 .. L-1`` (``nn.Linear`` / ``nn.Conv1d/2d/3d``, ``groups=1``) with only
channel-wise positively homogeneous operations between consecutive layers, ``f(a x) = a f(x)`` for every
per-channel ``a > 0``. Which operations those are is decided by the engine's one table of homogeneous ops
(:func:`nnteleport.engine.rules.homogeneity`: ReLU, LeakyReLU, RReLU, max / average / adaptive / LP pooling,
dropout, identity, upsampling, padding, in module or functional form) plus the layout-only operations listed
here (flatten, view, reshape, contiguous, clone), which move no value between channels.

Each layer's weight is viewed as a matrix ``M_i`` of shape ``(out_i, cols_i)``; column ``j`` reads the source
neuron ``j // rep_i`` of the previous layer (``rep_i`` = kernel size for a convolution, ``H * W`` for a linear
layer after flattening a feature map, 1 otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from nnteleport.engine.rules import homogeneity
from nnteleport.errors import UnsupportedModelError

__all__ = ["ChainLayer", "rescale_chain", "trace_chain"]

#: operations that only re-arrange a tensor without moving values between channels (function, method or module
#: names); the positively homogeneous activations, pooling and dropout come from the engine's table
_LAYOUT_NAMES = {"flatten", "view", "reshape", "contiguous", "clone", "identity"}
_LAYOUT_MODULES: tuple[type[nn.Module], ...] = (nn.Flatten,)
_SHAPE_QUERIES = {"size", "dim", "shape", "ndim", "numel"}
_SUPPORTED_BETWEEN = "ReLU, LeakyReLU, RReLU, max/avg/LP pooling, dropout, upsampling, padding and flatten"


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


def _homogeneous(node: fx.Node, model: nn.Module) -> bool:
    """Whether ``node`` is a channel-wise positively homogeneous or layout-only operation (engine table)."""
    if node.op == "call_module":
        mod = model.get_submodule(str(node.target))
        return homogeneity(mod) is not None or type(mod) in _LAYOUT_MODULES
    if node.op == "call_method":
        return homogeneity(str(node.target)) is not None or str(node.target) in _LAYOUT_NAMES
    if node.op == "call_function":
        try:
            if homogeneity(node.target) is not None:  # type: ignore[arg-type]
                return True
        except TypeError:  # unhashable target
            pass
        return _op_name(node) in _LAYOUT_NAMES
    return False


def _trace(model: nn.Module) -> fx.Graph:
    if isinstance(model, (nn.Linear, _ConvNd)):
        raise UnsupportedModelError(
            f"GSpace: the model is a bare {type(model).__name__} layer; one layer has no hidden neurons, so its "
            "G-space is its weight space (no rescaling symmetry to remove): use a plain torch.optim optimizer, or "
            "wrap it as nn.Sequential(layer) to use the G-space machinery anyway"
        )
    try:
        return fx.Tracer().trace(model)
    except Exception as exc:  # fx raises many exception types
        raise ValueError(
            f"could not trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
            "G-space needs a model without data-dependent control flow, e.g. an nn.Sequential of "
            "Linear/Conv and ReLU"
        ) from exc


def _check_layer_module(desc: str, mod: nn.Module) -> None:
    """Refuse a parametrised module that is not a chain layer (called between or around the layers)."""
    if isinstance(mod, _NormBase):
        raise ValueError(
            f"{desc}: batch normalisation is not supported by G-space / weight fixing (its output is "
            "invariant to the scale of its input); fold it into the preceding layer or remove it"
        )
    if any(True for _ in mod.parameters()):
        raise ValueError(
            f"{desc} has parameters but is not nn.Linear / nn.ConvNd; G-space and weight fixing "
            "support chains of Linear/Conv layers with ReLU-family activations in between"
        )


def _find_layers(graph: fx.Graph, model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Walk the traced graph: the ``(name, module)`` of every chain layer, in order (see :func:`trace_chain`)."""
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
        if _op_name(node) in _SHAPE_QUERIES:
            continue  # output is not a tensor of the chain
        mod = model.get_submodule(str(node.target)) if node.op == "call_module" else None
        if isinstance(mod, (nn.Linear, _ConvNd)) and not isinstance(mod, _ConvTransposeNd):
            if isinstance(mod, _ConvNd) and mod.groups != 1:
                raise ValueError(f"{desc} has groups={mod.groups}; only groups=1 convolutions are supported")
            if any(m is mod for _, m in found):
                raise ValueError(f"{desc} is called twice (shared weights); this is not supported")
            if found and pending:
                raise ValueError(
                    f"between layer {found[-1][0]!r} and {node.target!r}: {pending[0]} is not positively "
                    f"homogeneous per channel; supported in between are {_SUPPORTED_BETWEEN}"
                )
            found.append((str(node.target), mod))
            pending = []
        elif not _homogeneous(node, model):
            if mod is not None:
                _check_layer_module(desc, mod)
            pending.append(desc)
        current = node
        chain_nodes.add(node)
    return found


def _chain_layers(found: list[tuple[str, nn.Module]]) -> list[ChainLayer]:
    """The :class:`ChainLayer` of each found module: ``rep`` from how it reads the previous layer's outputs."""
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


def trace_chain(model: nn.Module) -> list[ChainLayer]:
    """Discover the chain of ``Linear`` / ``ConvNd`` layers of ``model`` with ``torch.fx``.

    Before the first and after the last layer anything parameter-free is allowed (the inputs and outputs are
    pinned, so they carry no symmetry); between two layers only channel-wise positively homogeneous
    operations (:func:`nnteleport.engine.rules.homogeneity`: ReLU, LeakyReLU, RReLU, pooling, dropout, ...) and
    layout-only ones (flatten, view, reshape). A subclass of a listed module counts only if it keeps the base
    class's ``forward``.

    Raises
    ------
    ValueError
        Naming the offending module or node: residual connections or any other branching, BatchNorm or other
        parametrised modules, non-homogeneous activations between layers, grouped or transposed convolutions,
        modules called twice, models that ``torch.fx`` cannot trace.
    """
    found = _find_layers(_trace(model), model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear / nn.ConvNd layer")
    chain_params = {id(p) for _, m in found for p in m.parameters()}
    stray = [n for n, p in model.named_parameters() if id(p) not in chain_params and p.requires_grad]
    if stray:
        raise ValueError(f"parameters {stray[:5]} are not in the Linear/Conv chain; G-space cannot represent them")
    return _chain_layers(found)


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
