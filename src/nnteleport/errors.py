"""The library's exceptions: one base class, so callers (and the CLI) tell a user error from a bug.

Every error raised because of what the user passed (a model the engine refuses, a bad CoB, a bad value, a bad run
folder) derives from :class:`NNTeleportError` and says, in one line, which module, parameter or value is at fault and
what to do. The command line prints an :class:`NNTeleportError` as one line and exits with status 2; any other
exception is a bug and shows its traceback. Each class also derives from the built-in exception a caller would expect
(``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "ConfigMismatchError",
    "CorruptFileError",
    "Interrupted",
    "InvalidArgumentError",
    "InvalidValueError",
    "MissingExtraError",
    "MissingFileError",
    "NNTeleportError",
    "OutputInUseError",
    "RunsFailedError",
    "UnsafeFileError",
    "UnsupportedModelError",
    "UntraceableModelError",
    "UsageError",
]


class NNTeleportError(Exception):
    """Base class of every error nnteleport raises about its input."""


class UnsupportedModelError(NNTeleportError, ValueError):
    """The model, or a part of it, cannot be analysed exactly; the message names the module and the way out."""


class UntraceableModelError(NNTeleportError, TypeError):
    """``torch.fx`` could not trace the model; the message names the call and the way out."""


class InvalidValueError(NNTeleportError, ValueError):
    """A parameter or configuration value is out of range, of the wrong type, or unknown (names it)."""


class InvalidArgumentError(NNTeleportError, TypeError):
    """A function was given an argument it does not take (names the function and the argument)."""


class MissingFileError(NNTeleportError, FileNotFoundError):
    """A file the run needs (a dataset file, a config file) does not exist (names it and where to get it)."""


class CorruptFileError(NNTeleportError, ValueError):
    """A file on disk cannot be read as what it should be (names the file and what to do)."""


class UnsafeFileError(NNTeleportError, ValueError):
    """A file on disk would run code when loaded, or fails its checksum; it is refused, not loaded."""


class ConfigMismatchError(NNTeleportError, ValueError):
    """A stored result or checkpoint was computed with another configuration (names the differing keys)."""


class OutputInUseError(NNTeleportError, RuntimeError):
    """Another process is writing to the same output folder."""


class RunsFailedError(RuntimeError):
    """Some runs of a sweep failed (their errors are in ``runs/<id>/error.txt``); not a user error by itself."""


class Interrupted(KeyboardInterrupt):
    """A run was stopped by SIGINT (Ctrl-C) or SIGTERM; ``signum`` says which. Finished results are kept."""

    def __init__(self, message: str = "interrupted", signum: int = 2) -> None:
        super().__init__(message)
        self.signum = signum


class MissingExtraError(NNTeleportError, ImportError):
    """An optional package is not installed; the message names it and the ``pip install`` line that adds it."""


class UsageError(NNTeleportError):
    """A problem with the command line itself (exit status 2)."""
