"""The checkpoint-distance penalty :class:`CheckpointDistance` (von Bachmann 2020, Sec. 2.1)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nnteleport.distance.canonical import Balancer, balancer_of, compute_dtype
from nnteleport.distance.kernels import Kernel, KernelSum, sq_distances, workspace
from nnteleport.distance.schedules import ScheduleLike, as_schedule
from nnteleport.errors import InvalidValueError

__all__ = ["CheckpointDistance"]


class CheckpointDistance:
    """Penalty ``strength * sum_c k(theta, theta_c)`` that pushes the parameters away from stored checkpoints.

    Von Bachmann (2020), Sec. 2.1, Eq. 2.3 / 2.8 / 2.9: with the RBF kernel each checkpoint becomes a
    Gaussian hill of height ``strength`` and width ``sigma`` in parameter space; adding the penalty to the
    loss makes the optimiser roll away from it. The gradient is (Eq. 2.18)

    ``d/dtheta [strength * sum_c k_c] = strength * sum_c (theta_c - theta) / sigma^2 * k_c``.

    >>> dist = CheckpointDistance(model, sigma=2.0, strength=0.1)      # doctest: +SKIP
    >>> dist.add_checkpoint()                                          # doctest: +SKIP
    >>> loss = criterion(model(x), y) + dist()                         # doctest: +SKIP

    Parameters
    ----------
    model:
        The model whose parameters are regularised.
    kernel:
        ``"rbf"`` (default) or ``"squared_l2"`` (see :class:`Kernel`).
    sigma, strength:
        Numbers or schedules (callables ``epoch -> float``, e.g. :class:`StepSchedule`) evaluated at
        :attr:`epoch`, which :meth:`step` advances (call it once per epoch, like an LR scheduler).
        ``sigma`` must be > 0.
    invariant:
        Measure distances between balanced representatives of the positive-rescaling orbits
        (:func:`canonicalize`); needs ``example_input``. Checkpoints are canonicalised once, when stored.
        The current parameters are canonicalised at every call by balancing factors ``t`` computed under
        ``no_grad`` (warm-started from the previous call, so a few sweeps suffice) and applied as constants:
        ``theta' = theta * t[out] / t[in]``. The gradient is therefore ``t[out] / t[in] * dk/dtheta'``
        and ignores ``dt/dtheta``; it is the exact gradient of the penalty in the chart where ``t`` is
        frozen at the balanced point, and it vanishes exactly where ``dk/dtheta'`` does.
    params:
        Which parameters count: ``None`` (all with ``requires_grad``), an iterable of parameter names, or a
        predicate ``(name, param) -> bool``.
    example_input:
        Example input for the engine's analysis (only with ``invariant=True``).
    max_checkpoints:
        Keep at most this many checkpoints (the oldest is dropped first). Every checkpoint is a full copy of
        the selected parameters: memory grows by one model size per checkpoint.
    balance_tol, balance_max_iter:
        Stopping rule of the balancing in invariant mode (per call).
    """

    def __init__(
        self,
        model: nn.Module,
        kernel: str | Kernel = "rbf",
        sigma: ScheduleLike = 1.0,
        strength: ScheduleLike = 1.0,
        invariant: bool = False,
        params: Iterable[str] | Callable[[str, Tensor], bool] | None = None,
        *,
        example_input: Any = None,
        max_checkpoints: int | None = None,
        balance_tol: float = 1e-7,
        balance_max_iter: int = 200,
    ) -> None:
        self.model = model
        self.kernel = Kernel.parse(kernel)
        self._sigma = as_schedule(sigma, "sigma")
        self._strength = as_schedule(strength, "strength")
        self.invariant = bool(invariant)
        self.epoch = 0
        if max_checkpoints is not None and max_checkpoints < 1:
            raise ValueError(f"CheckpointDistance: max_checkpoints must be >= 1 or None, got {max_checkpoints}")
        self.max_checkpoints = max_checkpoints
        self.balance_tol, self.balance_max_iter = balance_tol, balance_max_iter

        named = list(model.named_parameters())
        self._all_names = [n for n, _ in named]
        if params is None:
            selected = [n for n, p in named if p.requires_grad]
        elif callable(params):
            selected = [n for n, p in named if params(n, p)]
        else:
            wanted = list(params)
            unknown = [n for n in wanted if n not in self._all_names]
            if unknown:
                raise ValueError(
                    f"CheckpointDistance: unknown parameter name(s) {unknown}; the model's parameters are "
                    f"{self._all_names}"
                )
            selected = [n for n in self._all_names if n in set(wanted)]
        if not selected:
            raise ValueError("CheckpointDistance: no parameters selected (check `params`)")
        self.param_names: list[str] = selected
        self._sel = [self._all_names.index(n) for n in selected]
        self.checkpoints: list[list[Tensor]] = []
        self._work: list[Tensor] = []
        self.last_balance_sweeps = 0

        self._balancer: Balancer | None = None
        self._u: Tensor | None = None
        if self.invariant:
            if example_input is None:
                raise ValueError(
                    "CheckpointDistance(invariant=True) needs `example_input=` (an input batch for the "
                    "engine's analysis of the rescaling symmetry)"
                )
            self._balancer, _ = balancer_of(model, example_input)
        self._check_sigma()
        self._check_strength()

    # -- schedules ------------------------------------------------------------------------------------
    @property
    def sigma(self) -> float:
        """Current ``sigma`` (the schedule evaluated at :attr:`epoch`)."""
        return float(self._sigma(self.epoch))

    @property
    def strength(self) -> float:
        """Current ``strength`` (the schedule evaluated at :attr:`epoch`)."""
        return float(self._strength(self.epoch))

    def _check_sigma(self) -> float:
        sigma = self.sigma
        if self.kernel is Kernel.RBF and not (sigma > 0 and math.isfinite(sigma)):
            raise InvalidValueError(
                f"CheckpointDistance: sigma must be > 0 and finite, got {sigma} at epoch {self.epoch}"
            )
        return sigma

    def _check_strength(self) -> float:
        strength = self.strength
        if not math.isfinite(strength):
            raise InvalidValueError(
                f"CheckpointDistance: strength must be finite, got {strength} at epoch {self.epoch}"
            )
        return strength

    def step(self) -> None:
        """Advance the epoch counter of the ``sigma`` / ``strength`` schedules by one."""
        self.epoch += 1
        self._check_sigma()
        self._check_strength()

    # -- checkpoints ----------------------------------------------------------------------------------
    def _current(self) -> list[Tensor]:
        params = list(self.model.parameters())
        return [params[i] for i in self._sel]

    def _source_tensors(self, source: nn.Module | Mapping[str, Tensor] | None, names: Sequence[str]) -> list[Tensor]:
        if source is None:
            src: Mapping[str, Tensor] = dict(self.model.named_parameters())
        elif isinstance(source, nn.Module):
            src = dict(source.named_parameters())
        elif isinstance(source, Mapping):
            src = source
        else:
            raise TypeError(
                f"CheckpointDistance.add_checkpoint: expected None, an nn.Module or a mapping "
                f"name -> tensor, "
                f"got {type(source).__name__}"
            )
        own = dict(self.model.named_parameters())
        out = []
        for n in names:
            if n not in src:
                raise ValueError(
                    f"CheckpointDistance: checkpoint lacks parameter {n!r} -- was it saved from "
                    f"another model? "
                    f"(it has {len(src)} entries, e.g. {list(src)[:5]})"
                )
            t = src[n]
            if tuple(t.shape) != tuple(own[n].shape):
                raise ValueError(
                    f"CheckpointDistance: checkpoint parameter {n!r} has shape {tuple(t.shape)}, the model's "
                    f"has {tuple(own[n].shape)} -- checkpoint of another model?"
                )
            stored = t.detach().to(device=own[n].device, dtype=own[n].dtype).clone()
            if not bool(torch.isfinite(stored).all()):
                bad = int((~torch.isfinite(stored)).sum())
                raise InvalidValueError(
                    f"CheckpointDistance.add_checkpoint: parameter {n!r} has {bad} NaN/infinite value(s); a "
                    "non-finite checkpoint would make the penalty NaN for the rest of training (has the run "
                    "diverged?)"
                )
            out.append(stored)
        return out

    def _canonical(self, tensors: list[Tensor], *, warm: bool) -> tuple[dict[int, Tensor], Tensor]:
        assert self._balancer is not None
        dtype = compute_dtype(tensors[0].device)
        masses = self._balancer.masses(tensors, dtype)
        u0 = self._u if warm else None
        max_iter = self.balance_max_iter if warm else max(self.balance_max_iter, 10_000)
        u, sweeps, _ = self._balancer.solve(masses, u0, tol=self.balance_tol if warm else 1e-10, max_iter=max_iter)
        self.last_balance_sweeps = sweeps
        return self._balancer.scales(u, tensors), u

    def add_checkpoint(self, source: nn.Module | Mapping[str, Tensor] | None = None) -> None:
        """Store a detached copy of the parameters (of ``model``, or of ``source``: a model or state dict).

        In invariant mode the copy is canonicalised (balanced) once, here.
        """
        if self.invariant:
            full = self._source_tensors(source, self._all_names)
            scales, _ = self._canonical(full, warm=False)
            for i, s in scales.items():
                full[i] = full[i] * s
            ckpt = [full[i] for i in self._sel]
        else:
            ckpt = self._source_tensors(source, self.param_names)
        self.checkpoints.append(ckpt)
        if self.max_checkpoints is not None and len(self.checkpoints) > self.max_checkpoints:
            self.checkpoints.pop(0)

    def clear(self) -> None:
        """Remove all checkpoints."""
        self.checkpoints.clear()

    def __len__(self) -> int:
        return len(self.checkpoints)

    # -- evaluation -----------------------------------------------------------------------------------
    def _theta(self) -> list[Tensor]:
        """Current selected parameters, canonicalised (with constant factors) in invariant mode."""
        if not self.invariant:
            return self._current()
        full = list(self.model.parameters())
        scales, u = self._canonical(full, warm=True)
        self._u = u.detach()
        return [full[i] * scales[i] if i in scales else full[i] for i in self._sel]

    def __call__(self, model: nn.Module | None = None) -> Tensor:
        """The penalty ``strength * sum_c k(theta, theta_c)``: scalar with gradients (0 if no checkpoint).

        ``model`` is optional and must be the regularised model: this lets the instance serve directly as
        the ``penalty(model)`` hook of :func:`nnteleport.lab.training.train`.
        """
        if model is not None and model is not self.model:
            raise ValueError(
                "CheckpointDistance: called with another model than the one it was built for; create one "
                "CheckpointDistance per model"
            )
        theta = self._theta() if self.checkpoints else self._current()
        if not self.checkpoints:
            return torch.zeros((), dtype=theta[0].dtype, device=theta[0].device)
        sigma = self._check_sigma()
        work = workspace(self._work, theta)
        return KernelSum.apply(self.kernel, sigma, self.strength, self.checkpoints, work, *theta)

    forward = __call__

    @torch.no_grad()
    def distances(self) -> Tensor:
        """Euclidean distances ``||theta - theta_c||`` to every checkpoint, shape ``(C,)`` (no gradient)."""
        theta = [t.detach() for t in self._theta()]
        if not self.checkpoints:
            return torch.zeros(0, dtype=theta[0].dtype, device=theta[0].device)
        return sq_distances(theta, self.checkpoints, workspace(self._work, theta)).sqrt()

    # -- serialisation --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Checkpoints and settings (schedules are not saved: recreate them, as for LR schedulers)."""
        return {
            "kernel": self.kernel.value,
            "invariant": self.invariant,
            "epoch": self.epoch,
            "param_names": list(self.param_names),
            "checkpoints": [dict(zip(self.param_names, ckpt)) for ckpt in self.checkpoints],
            "balance_log_tau": None if self._u is None else self._u.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the checkpoints and epoch counter from :meth:`state_dict` (same model and selection)."""
        for key in ("kernel", "invariant", "epoch", "param_names", "checkpoints"):
            if key not in state:
                raise ValueError(f"CheckpointDistance.load_state_dict: missing key {key!r}")
        if Kernel.parse(state["kernel"]) is not self.kernel or bool(state["invariant"]) != self.invariant:
            raise ValueError(
                f"CheckpointDistance.load_state_dict: saved with kernel={state['kernel']!r}, "
                f"invariant={state['invariant']}, but this instance has kernel={self.kernel.value!r}, "
                f"invariant={self.invariant}"
            )
        if list(state["param_names"]) != self.param_names:
            raise ValueError(
                "CheckpointDistance.load_state_dict: the saved parameter selection differs from this one "
                f"(saved {len(state['param_names'])} names, here {len(self.param_names)}; first saved: "
                f"{list(state['param_names'])[:3]}) -- checkpoint of another model or another `params=`?"
            )
        checkpoints = [self._source_tensors(c, self.param_names) for c in state["checkpoints"]]
        self.checkpoints = checkpoints
        self.epoch = int(state["epoch"])
        u = state.get("balance_log_tau")
        self._u = None if u is None else u.clone()
        self._check_sigma()

    def __repr__(self) -> str:
        return (
            f"CheckpointDistance(kernel={self.kernel.value!r}, sigma={self.sigma}, strength={self.strength}, "
            f"invariant={self.invariant}, params={len(self.param_names)}, "
            f"checkpoints={len(self.checkpoints)})"
        )
