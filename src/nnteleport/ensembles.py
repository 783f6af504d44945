"""Snapshot ensembles, SGDR, and diversity measures (von Bachmann 2020, Sec. 1.2.3-1.2.4).

A *snapshot ensemble* (Huang et al. 2017) averages the softmax outputs of several states of one training run.
Model averaging (thesis Sec. 1.2.4): ``p_c(x) = sum_i w_i p_{c,i}(x)`` with ``sum_i w_i = 1`` (uniform by
default); the prediction is ``argmax_c p_c``. The baseline way to obtain diverse snapshots is SGDR (cosine
annealing with warm restarts, Loshchilov & Hutter 2017): take a snapshot at the end of every cycle, where the
learning rate is smallest. The thesis' alternative is the checkpoint-distance penalty
(:class:`nnteleport.CheckpointDistance`).

An ensemble helps only if its members err differently (thesis Eq. 1.14: with error variance ``v`` and pairwise
covariance ``c``, the averaged error variance is ``v / k + (k - 1) c / k``). :func:`pairwise_disagreement`
and :func:`error_correlation` measure this, :func:`diversity_report` summarises them with the accuracies.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "SnapshotEnsemble",
    "diversity_report",
    "ensemble_probs",
    "error_correlation",
    "pairwise_disagreement",
    "sgdr_scheduler",
    "sgdr_snapshot_epochs",
]


def _check_weights(weights: Sequence[float] | Tensor | None, m: int, like: Tensor) -> Tensor:
    if weights is None:
        return torch.full((m,), 1.0 / m, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device).reshape(-1)
    if w.numel() != m:
        raise ValueError(f"ensemble: got {w.numel()} weights for {m} members")
    if bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"ensemble: weights must be >= 0 with a positive sum, got {w.tolist()}")
    return w / w.sum()


def ensemble_probs(member_probs: Tensor, weights: Sequence[float] | Tensor | None = None) -> Tensor:
    """Weighted model average ``p = sum_i w_i p_i`` of member probabilities ``(M, N, K)`` -> ``(N, K)``.

    ``weights`` (``M`` non-negative numbers) are normalised to sum to 1; uniform when ``None``.
    """
    if member_probs.dim() != 3:
        raise ValueError(f"ensemble_probs: expected member probabilities (M, N, K), got {tuple(member_probs.shape)}")
    w = _check_weights(weights, member_probs.shape[0], member_probs)
    return torch.einsum("m,mnk->nk", w, member_probs)


class SnapshotEnsemble(nn.Module):
    """Ensemble of snapshots (states) of one model: averages their softmax probabilities.

    Snapshots are stored as detached copies of the full ``state_dict`` (parameters *and* buffers such as
    BatchNorm statistics); evaluation loads them one at a time into a private copy of the model, so memory
    grows by one state per snapshot, not by one module.

    >>> ens = SnapshotEnsemble(model)                    # doctest: +SKIP
    >>> ens.add_snapshot(model)  # e.g. at every SGDR restart or checkpoint
    >>> probs = ens(x)                                   # (N, K) averaged probabilities

    Parameters
    ----------
    model:
        The architecture (copied once; later changes to ``model`` do not affect the ensemble).
    weights:
        Optional member weights (see :func:`ensemble_probs`); may also be passed to :meth:`predict_proba`.
    """

    def __init__(self, model: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self._model = copy.deepcopy(model)
        self.snapshots: list[dict[str, Tensor]] = []
        self.weights = None if weights is None else list(weights)

    def add_snapshot(self, source: nn.Module | Mapping[str, Tensor]) -> None:
        """Store a detached copy of the ``state_dict`` of ``source`` (a model or state dict of this model)."""
        state = source.state_dict() if isinstance(source, nn.Module) else source
        own = self._model.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise ValueError(
                f"SnapshotEnsemble.add_snapshot: the snapshot lacks {missing[:5]} -- state of another model?"
            )
        for k, v in own.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(
                    f"SnapshotEnsemble.add_snapshot: {k!r} has shape {tuple(state[k].shape)}, expected "
                    f"{tuple(v.shape)} -- state of another model?"
                )
        self.snapshots.append({k: state[k].detach().clone() for k in own})

    def __len__(self) -> int:
        return len(self.snapshots)

    @torch.no_grad()
    def member_probs(self, x: Tensor, batch_size: int | None = None) -> Tensor:
        """Softmax probabilities of every member in eval mode, shape ``(M, N, K)``."""
        if not self.snapshots:
            raise ValueError("SnapshotEnsemble: no snapshots yet (call add_snapshot first)")
        self._model.eval()
        out = []
        for state in self.snapshots:
            self._model.load_state_dict(state)
            chunks = [x] if batch_size is None else list(torch.split(x, batch_size))
            out.append(torch.cat([torch.softmax(self._model(c), dim=-1) for c in chunks]))
        return torch.stack(out)

    def predict_proba(self, x: Tensor, weights: Sequence[float] | None = None) -> Tensor:
        """Averaged probabilities ``(N, K)`` (weights: argument, else the constructor's, else uniform)."""
        return ensemble_probs(self.member_probs(x), weights if weights is not None else self.weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.predict_proba(x)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return {"snapshots": self.snapshots, "weights": self.weights}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        self.snapshots = []
        for s in state["snapshots"]:
            self.add_snapshot(s)
        self.weights = state.get("weights")


# ---------------------------------------------------------------------------------------------------------
# SGDR
# ---------------------------------------------------------------------------------------------------------


def sgdr_scheduler(
    optimizer: torch.optim.Optimizer, cycle_len: int, cycle_mult: int = 1, eta_min: float = 0.0
) -> torch.optim.lr_scheduler.CosineAnnealingWarmRestarts:
    """Cosine annealing with warm restarts (Loshchilov & Hutter 2017; thesis Sec. 1.2.3).

    ``lr(t) = eta_min + (lr_0 - eta_min) (1 + cos(pi * T_cur / T_i)) / 2`` with ``T_cur`` the epochs (may be
    fractional) since the last restart and cycle lengths ``T_i = cycle_len * cycle_mult ** i``. Call
    ``scheduler.step(epoch + batch / batches_per_epoch)`` every batch for the smooth schedule, or ``step()``
    once per epoch. A thin wrapper of ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``.
    """
    if cycle_len < 1 or cycle_mult < 1:
        raise ValueError(f"sgdr_scheduler: need cycle_len >= 1 and cycle_mult >= 1, got {cycle_len}, {cycle_mult}")
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=cycle_len, T_mult=cycle_mult, eta_min=eta_min
    )


def sgdr_snapshot_epochs(cycle_len: int, cycle_mult: int, epochs: int) -> list[int]:
    """Completed-epoch counts at which an SGDR cycle ends (take a snapshot there, just before the restart)."""
    if cycle_len < 1 or cycle_mult < 1:
        raise ValueError(
            f"sgdr_snapshot_epochs: need cycle_len >= 1 and cycle_mult >= 1, got {cycle_len}, {cycle_mult}"
        )
    out, end, length = [], cycle_len, cycle_len
    while end <= epochs:
        out.append(end)
        length *= cycle_mult
        end += length
    return out


# ---------------------------------------------------------------------------------------------------------
# diversity
# ---------------------------------------------------------------------------------------------------------


def pairwise_disagreement(member_probs: Tensor) -> Tensor:
    """Fraction of inputs on which two members predict different classes, ``(M, M)`` (0 on the diagonal).

    ``D_ij = mean_n [argmax p_i(x_n) != argmax p_j(x_n)]`` for member probabilities (or logits) ``(M, N, K)``.
    """
    pred = member_probs.argmax(-1)  # (M, N)
    return (pred[:, None, :] != pred[None, :, :]).to(member_probs.dtype).mean(-1)


def error_correlation(member_probs: Tensor, targets: Tensor) -> Tensor:
    """Pearson correlation of the members' 0/1 error indicators over the inputs, ``(M, M)``.

    ``e_i(n) = [argmax p_i(x_n) != y_n]``; ``rho_ij = cov(e_i, e_j) / (std(e_i) std(e_j))``. A member without
    any error (or erring everywhere) has no defined correlation: its row and column are NaN.
    """
    err = (member_probs.argmax(-1) != targets[None, :]).to(torch.float64)  # (M, N)
    centred = err - err.mean(1, keepdim=True)
    cov = centred @ centred.T / err.shape[1]
    std = cov.diagonal().sqrt()
    denom = std[:, None] * std[None, :]
    return torch.where(denom > 0, cov / denom.clamp_min(1e-300), torch.full_like(cov, math.nan)).to(member_probs.dtype)


def _off_diagonal_mean(mat: Tensor) -> float:
    m = mat.shape[0]
    if m < 2:
        return math.nan
    mask = ~torch.eye(m, dtype=torch.bool, device=mat.device)
    vals = mat[mask]
    vals = vals[~torch.isnan(vals)]
    return float(vals.mean()) if vals.numel() else math.nan


def diversity_report(
    member_probs: Tensor, targets: Tensor, weights: Sequence[float] | Tensor | None = None
) -> dict[str, Any]:
    """Accuracies and diversity of an ensemble, as plain numbers (JSON-ready).

    Returns ``member_accuracy`` (list), ``mean_member_accuracy``, ``ensemble_accuracy`` (of the weighted
    average of probabilities), ``ensemble_nll``, ``mean_disagreement`` and ``mean_error_correlation``
    (off-diagonal means; NaN for a single member), and the full ``disagreement`` / ``error_correlation``
    matrices as nested lists.
    """
    targets = targets.to(member_probs.device)
    member_acc = (member_probs.argmax(-1) == targets[None]).to(torch.float64).mean(1)
    avg = ensemble_probs(member_probs, weights)
    ens_acc = float((avg.argmax(-1) == targets).to(torch.float64).mean())
    nll = float(-torch.log(avg.gather(1, targets[:, None]).clamp_min(1e-12)).mean())
    dis = pairwise_disagreement(member_probs)
    corr = error_correlation(member_probs, targets)
    return {
        "members": int(member_probs.shape[0]),
        "member_accuracy": member_acc.tolist(),
        "mean_member_accuracy": float(member_acc.mean()),
        "ensemble_accuracy": ens_acc,
        "ensemble_nll": nll,
        "mean_disagreement": _off_diagonal_mean(dis),
        "mean_error_correlation": _off_diagonal_mean(corr),
        "disagreement": dis.tolist(),
        "error_correlation": corr.tolist(),
    }
