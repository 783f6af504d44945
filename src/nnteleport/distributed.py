"""Teleportation, G-space optimisers and weight fixing inside ``DistributedDataParallel`` training.

DDP keeps its ranks identical by starting every rank from rank 0's parameters and averaging the gradients; an
optimizer step is then the same computation on every rank. Whatever changes the parameters *outside* the
gradient must be the same on every rank as well. A teleport is such a change, and its change of basis is random:
with each rank's own generator the ranks would drift apart silently. Here every rank applies **one CoB**, sampled
on rank ``src`` and broadcast (:func:`broadcast_cob`), to the module inside the DDP wrapper *in place*
(``teleport(..., inplace=True)``): the same ``Parameter`` objects, rescaled, so DDP's reducer (its gradient
hooks and buckets) keeps syncing their gradients.

Recipe (every rank runs the same lines; ``x`` an example batch, any rank's)::

    ddp = DistributedDataParallel(model)
    cob = teleport_ddp(ddp, x, cob_range=0.9, sampling="inter")  # one CoB for all ranks; returns it
    opt = GSpaceOptimizer(ddp.module, torch.optim.SGD, lr=1e-4)  # G-SGD on the averaged gradients
    fixed = fix_weights(ddp.module, optimizer=opt)               # deterministic: the same on every rank
    for xb, yb in loader:                                        # each rank its shard
        opt.zero_grad(); loss_fn(ddp(xb), yb).backward(); opt.step()
    assert max_rank_difference(ddp) == 0.0                       # optional check (one all-reduce)

* :class:`~nnteleport.gspace.GSpaceOptimizer` needs nothing else: it reads the gradients DDP has averaged, and
  its construction (the skeleton, ``reparametrize=True``) is a deterministic function of the weights, which
  are identical on every rank. Build it after (or before) the DDP wrapper, on ``ddp.module``.
* :func:`~nnteleport.gspace.fix_weights` likewise (``"diagonal"`` or ``"hungarian"`` selection and the value
  rescaling depend on the weights only); after DDP's backward the fixed entries' gradients are zero as in one
  process (``tests/test_ddp.py``), and their values are restored after every step.
* :func:`sync_module` broadcasts every parameter and buffer from ``src`` (e.g. after loading a checkpoint on
  one rank only, or after a step that is not bit-reproducible across different machines), and
  :func:`max_rank_difference` measures how far the ranks are apart.
* New buffers a teleport creates (the ``tau`` of ``TeleportedActivation`` wrappers, for activations that are
  not positively homogeneous) are not among the buffers DDP broadcasts; they hold the same CoB on every rank.

With the NCCL back-end the collectives run on the current CUDA device, otherwise on the CPU (gloo).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from nnteleport.engine.apply import sample_cob, teleport
from nnteleport.engine.cob import CoB, Sampling
from nnteleport.errors import InvalidValueError

__all__ = ["broadcast_cob", "max_rank_difference", "sync_module", "teleport_ddp", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The module a ``DistributedDataParallel`` (or ``DataParallel``) wrapper trains; any other module itself."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def _check_initialized(what: str) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise InvalidValueError(
            f"{what}: torch.distributed is not initialised; call torch.distributed.init_process_group first"
        )


def _comm_device(group: Any) -> torch.device:
    """Where the collectives of ``group`` run: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_agree(ok: bool, group: Any, device: torch.device) -> bool:
    """Whether ``ok`` holds on every rank (one all-reduce), so that all ranks raise together or none."""
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return int(flag.item()) == 0


def broadcast_cob(cob: Mapping[str, Tensor], *, src: int = 0, group: Any = None) -> CoB:
    """Rank ``src``'s CoB on every rank (a collective: every rank of ``group`` calls it).

    Parameters
    ----------
    cob : mapping
        Group name -> factors, shape ``(group size,)``; on the other ranks only the names and sizes matter (a
        CoB of the same model, e.g. sampled locally), which must be those of ``src``.
    src : int
        Global rank whose factors are kept.
    group : ProcessGroup, optional
        Default: the whole world.

    Returns
    -------
    CoB
        ``src``'s factors (float64, on the device of ``cob``'s first tensor), identical on every rank.

    Raises
    ------
    InvalidValueError
        torch.distributed not initialised, or the ranks' CoBs have different groups or sizes (raised on every rank).
    """
    _check_initialized("broadcast_cob")
    names = list(cob)
    sizes = [int(torch.as_tensor(cob[k]).numel()) for k in names]
    device = _comm_device(group)
    crc = zlib.crc32(repr(list(zip(names, sizes))).encode())  # the same in every process (unlike hash())
    layout = torch.tensor([len(names), sum(sizes), crc], dtype=torch.int64)
    theirs = layout.to(device).clone()
    dist.broadcast(theirs, src=src, group=group)
    if not _all_agree(bool(torch.equal(theirs.cpu(), layout)), group, device):
        raise InvalidValueError(
            f"broadcast_cob: the ranks' CoBs have different groups or sizes (rank {dist.get_rank()}: {len(names)} "
            f"groups, {sum(sizes)} factors); every rank must pass a CoB of the same model"
        )
    out_device = torch.as_tensor(cob[names[0]]).device if names else torch.device("cpu")
    if not names:
        return CoB({})
    flat = torch.cat([torch.as_tensor(cob[k]).reshape(-1).to(device, torch.float64) for k in names])
    dist.broadcast(flat, src=src, group=group)
    parts = torch.split(flat.to(out_device), sizes)
    return CoB({k: p.clone() for k, p in zip(names, parts)})


def teleport_ddp(
    model: nn.Module,
    x: Any,
    cob: Mapping[str, Tensor] | None = None,
    *,
    cob_range: float = 0.5,
    sampling: str | Sampling = "intra",
    generator: torch.Generator | None = None,
    src: int = 0,
    group: Any = None,
    leaf_modules: Any = (),
    functional: str = "constrain",
) -> CoB:
    """Teleport a DDP-wrapped model in place on every rank with one CoB (a collective: every rank calls it).

    Parameters
    ----------
    model : nn.Module
        The ``DistributedDataParallel`` wrapper (or the module it trains): its module is teleported in place, so
        the wrapper keeps its parameters and syncs their gradients as before.
    x : tensor or tuple
        An example input batch (only its shapes matter; ranks may pass different batches).
    cob : mapping, optional
        The CoB to apply (rank ``src``'s is used on every rank); ``None``: sampled on rank ``src`` with
        ``cob_range``, ``sampling`` and ``generator`` (see :func:`nnteleport.sample_cob`).
    src, group
        The rank whose CoB is used, and the process group (default: the world).
    leaf_modules, functional
        As in :func:`nnteleport.teleport` (``functional="graph"`` needs a new module, so it is refused when
        wrappers are needed).

    Returns
    -------
    CoB
        The CoB applied (identical on every rank), e.g. to transform optimizer state
        (:func:`nnteleport.transform_optimizer_state`).
    """
    _check_initialized("teleport_ddp")
    module = unwrap(model)
    if cob is None:
        cob = sample_cob(module, x, cob_range, sampling, generator, leaf_modules=leaf_modules, functional=functional)
    shared = broadcast_cob(cob, src=src, group=group)
    teleport(module, x, shared, inplace=True, leaf_modules=leaf_modules, functional=functional)
    return shared


def _tensors(module: nn.Module) -> list[Tensor]:
    return [t for t in (*module.parameters(), *module.buffers())]


@torch.no_grad()
def sync_module(model: nn.Module, *, src: int = 0, group: Any = None) -> None:
    """Copy every parameter and buffer of rank ``src`` to the other ranks, in place (a collective)."""
    _check_initialized("sync_module")
    device = _comm_device(group)
    for t in _tensors(unwrap(model)):
        buf = t.detach().to(device).clone()
        dist.broadcast(buf, src=src, group=group)
        t.copy_(buf.to(t.device))


@torch.no_grad()
def max_rank_difference(model: nn.Module, *, src: int = 0, group: Any = None) -> float:
    """``max |p_rank - p_src|`` over every parameter and buffer entry and every rank, in float64 (a collective;
    0.0 when the ranks are identical; a NaN on some ranks only counts as ``inf``)."""
    _check_initialized("max_rank_difference")
    device = _comm_device(group)
    worst = torch.zeros((), dtype=torch.float64, device=device)
    for t in _tensors(unwrap(model)):
        mine = (torch.view_as_real(t) if t.is_complex() else t).detach().to(device, torch.float64)
        ref = mine.clone()
        dist.broadcast(ref, src=src, group=group)
        if mine.numel():
            same = (mine == ref) | (torch.isnan(mine) & torch.isnan(ref))
            diff = torch.where(same, 0.0, (mine - ref).abs().nan_to_num(nan=torch.inf))
            worst = torch.maximum(worst, diff.max())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=group)
    return float(worst.item())
