"""The library's exceptions: one base class, so callers (and the CLI) tell a user error from a bug.

Every error raised because of what the user passed (a model the engine refuses, a bad CoB, a bad value) derives from
:class:`NNTeleportError` and says, in one line, which module, parameter or value is at fault and what to do.
"""

from __future__ import annotations

__all__ = ["NNTeleportError", "UnsupportedModelError", "UntraceableModelError"]


class NNTeleportError(Exception):
    """Base class of every error nnteleport raises about its input."""


class UnsupportedModelError(NNTeleportError, ValueError):
    """The model, or a part of it, cannot be analysed exactly; the message names the module and the way out."""


class UntraceableModelError(NNTeleportError, TypeError):
    """``torch.fx`` could not trace the model; the message names the call and the way out."""
