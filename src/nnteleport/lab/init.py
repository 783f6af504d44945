"""Weight initialisations used in the paper's training experiments (Armenta et al. 2023, Sec. 5.2).

``initialize(model, scheme)`` re-initialises every ``Linear`` / ``ConvNd`` / ``ConvTransposeNd`` layer:

* ``"kaiming"`` -- ``W ~ N(0, 2 / fan_in)`` (He et al. 2015, ``kaiming_normal_`` with ReLU gain), bias 0;
* ``"xavier"`` -- ``W ~ U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))`` (Glorot & Bengio 2010), bias 0;
* ``"normal"`` -- ``W ~ N(0, std^2)`` (default ``std = 0.01``; the "basic Gaussian" of the paper), bias 0;
* ``"default"`` -- PyTorch's own initialisation (each module's ``reset_parameters()``; for ``Linear`` and
  ``Conv`` a uniform ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, the paper's "uniform" initialisation).

Normalisation layers (``BatchNorm``, ``GroupNorm``, ``LayerNorm``, ``InstanceNorm``) are reset to weight 1,
bias 0 under every scheme (``default`` calls their ``reset_parameters``, which does the same and also clears
running statistics). Other modules with parameters are left untouched, except under ``default``.
"""

from __future__ import annotations

import torch
from torch import nn

from nnteleport._choice import Choice
from nnteleport.errors import InvalidValueError

__all__ = ["InitScheme", "initialize"]


class InitScheme(Choice, what="init scheme"):
    """Weight initialisation schemes accepted by :func:`initialize`."""

    KAIMING = "kaiming"
    XAVIER = "xavier"
    NORMAL = "normal"
    DEFAULT = "default"


_WEIGHTED = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _gen_kw(generator: torch.Generator | None) -> dict:
    return {} if generator is None else {"generator": generator}


@torch.no_grad()
def initialize(
    model: nn.Module,
    scheme: str | InitScheme,
    *,
    std: float = 0.01,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Re-initialise ``model``'s weights in place with ``scheme`` and return it.

    Parameters
    ----------
    model : nn.Module
        Any module; its ``Linear`` / ``Conv`` layers are re-initialised (see the module docstring).
    scheme : {"kaiming", "xavier", "normal", "default"}
        The initialisation.
    std : float
        Standard deviation of the ``"normal"`` scheme.
    generator : torch.Generator, optional
        Random source (on the parameters' device); default torch's global generator. Ignored by
        ``"default"``, whose ``reset_parameters`` always draws from the global generator.

    Raises
    ------
    ValueError
        Unknown scheme (lists the allowed ones) or ``std <= 0``.
    """
    sch = InitScheme.parse(scheme)
    if sch is InitScheme.NORMAL and not std > 0:
        raise InvalidValueError(f"std of the 'normal' init must be > 0, got {std}")
    kw = _gen_kw(generator)
    for module in model.modules():
        if sch is InitScheme.DEFAULT:
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            continue
        if isinstance(module, _WEIGHTED):
            w = module.weight
            if sch is InitScheme.KAIMING:
                nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu", **kw)
            elif sch is InitScheme.XAVIER:
                nn.init.xavier_uniform_(w, **kw)
            else:
                nn.init.normal_(w, 0.0, std, **kw)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, _NORMS):
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    return model
