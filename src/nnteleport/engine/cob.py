"""Changes of basis (CoB): one non-zero factor ``tau`` per free hidden neuron, and how to sample them.

Armenta et al. (2023), Sec. 3-4: a CoB gives every hidden neuron a factor ``tau``; inputs, outputs and bias units
keep ``tau = 1``. Sampling with CoB range ``s`` (``0 < s < 1``):

* ``"intra"`` -- ``tau ~ U[1 - s, 1 + s]`` (stays in the connected component of the identity);
* ``"inter"`` -- the same, with the sign flipped with probability 1/2, i.e. ``U([-1 - s, -1 + s] u [1 - s, 1 + s])``.

For ``tau ~ U[1 - s, 1 + s]`` independent, ``E[tau_a^2 / tau_b^2] = (s^2 + 3) / (3 (1 - s^2))`` (paper, Sec. 5.4),
which governs how much teleportation rescales gradients.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from nnteleport._choice import Choice
from nnteleport.errors import InvalidArgumentError, InvalidValueError

__all__ = ["CoB", "Sampling", "expected_squared_ratio", "sample_flat"]


class Sampling(Choice, what="sampling"):
    """CoB sampling scheme (paper, Sec. 4): ``"intra"`` keeps signs, ``"inter"`` also flips them."""

    INTRA = "intra"
    INTER = "inter"


class CoB(Mapping[str, Tensor]):
    """A change of basis: neuron group name -> 1-D tensor of per-neuron (per-channel) factors.

    Groups are those of :func:`nnteleport.analyze` (``plan.groups``); a group left out means factors 1.
    ``cob1 * cob2`` composes (teleporting by ``cob1`` then ``cob2`` equals teleporting by their product) and
    ``cob.inverse()`` undoes a teleport.
    """

    def __init__(self, factors: Mapping[str, Tensor]) -> None:
        self._factors = {str(k): torch.as_tensor(v) for k, v in factors.items()}

    def __getitem__(self, key: str) -> Tensor:
        return self._factors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._factors)

    def __len__(self) -> int:
        return len(self._factors)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: ({v.numel()},)" for k, v in self._factors.items())
        return f"CoB({{{inner}}})"

    def flat(self) -> Tensor:
        """All factors concatenated in group order."""
        if not self._factors:
            return torch.zeros(0, dtype=torch.float64)
        return torch.cat([v.reshape(-1) for v in self._factors.values()])

    def to(self, *args: Any, **kwargs: Any) -> CoB:
        return CoB({k: v.to(*args, **kwargs) for k, v in self._factors.items()})

    def __mul__(self, other: Mapping[str, Tensor]) -> CoB:
        keys = list(self._factors) + [k for k in other if k not in self._factors]
        out = {}
        for k in keys:
            a, b = self._factors.get(k), other.get(k)
            out[k] = a * b if a is not None and b is not None else (a if b is None else b)
        return CoB(out)

    def inverse(self) -> CoB:
        return CoB({k: 1.0 / v for k, v in self._factors.items()})


def _validate_cob_range(cob_range: Any) -> float:
    try:
        s = float(cob_range)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"cob_range must be a number in (0, 1), got {cob_range!r}") from None
    if math.isnan(s) or not 0.0 < s < 1.0:
        raise InvalidValueError(f"cob_range must lie in the open interval (0, 1), got {cob_range!r}")
    return s


def _validate_against_plan(plan: Any, cob: Mapping[str, Any]) -> Tensor:
    if not isinstance(cob, Mapping):
        raise InvalidArgumentError(f"cob must be a CoB or a mapping group name -> factors, got {type(cob).__name__}")
    unknown = [k for k in cob if k not in plan.groups]
    if unknown:
        known = ", ".join(repr(g) for g in plan.groups) or "(none: the model has no teleportable neuron)"
        raise InvalidValueError(f"CoB has unknown group(s) {unknown!r}; the model's groups are: {known}")
    flat = torch.ones(plan.num_free, dtype=torch.float64)
    for name, factors in cob.items():
        g = plan.groups[name]
        t = torch.as_tensor(factors).detach()
        if t.dim() != 1 or t.numel() != g.size:
            raise InvalidValueError(
                f"CoB group {name!r} must be a 1-D tensor of {g.size} factors, got shape {tuple(t.shape)}"
            )
        flat[g.offset : g.offset + g.size] = t
    # checked once over the flat vector; the error names the group and neuron
    bad = ~torch.isfinite(flat) | (flat == 0) | ((flat < 0) & plan.positive_mask)
    if bool(bad.any()):
        k = int(bad.nonzero()[0])
        g = next(g for g in plan.groups.values() if g.offset <= k < g.offset + g.size)
        v, j = float(flat[k]), k - g.offset
        if not math.isfinite(v):
            raise InvalidValueError(f"CoB group {g.name!r} contains NaN or inf factors (neuron {j})")
        if v == 0:
            raise InvalidValueError(f"CoB group {g.name!r} has a zero factor (neuron {j}); factors must be non-zero")
        raise InvalidValueError(
            f"CoB group {g.name!r}: neuron {j} must have a positive factor (it passes through a positively "
            f"homogeneous function that cannot hold a wrapper; see the report), got {v}"
        )
    return flat


def sample_flat(
    num: int,
    cob_range: float,
    sampling: str | Sampling,
    positive_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``num`` factors in float64 on the CPU: ``U[1 - s, 1 + s]``, negated with probability 1/2 for ``"inter"``
    where ``positive_mask`` is False."""
    s = _validate_cob_range(cob_range)
    mode = Sampling.parse(sampling)
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(num, generator=generator, dtype=torch.float64, device=device)
    tau = 1.0 - s + 2.0 * s * u
    if mode is Sampling.INTER:
        flip = torch.rand(num, generator=generator, dtype=torch.float64, device=device) < 0.5
        if positive_mask is not None:
            flip &= ~positive_mask.to(device)
        tau = torch.where(flip, -tau, tau)
    return tau.cpu()


def expected_squared_ratio(cob_range: float) -> float:
    """``E[tau_a^2 / tau_b^2] = (s^2 + 3) / (3 (1 - s^2))`` for independent ``tau ~ U[1 - s, 1 + s]``."""
    s = _validate_cob_range(cob_range)
    return (s * s + 3.0) / (3.0 * (1.0 - s * s))
