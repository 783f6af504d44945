"""One base class for the string options of the API (``sampling="inter"``, ``skeleton="max"``, ...).

>>> class Sampling(Choice, what="sampling"):
...     INTRA = "intra"
...     INTER = "inter"
>>> Sampling.parse("inter") is Sampling.INTER
True
>>> Sampling.parse("both")
Traceback (most recent call last):
...
nnteleport.errors.InvalidValueError: unknown sampling 'both'; choose one of: 'intra', 'inter'

Members are ``str``: they compare equal to, format as and serialise as their value.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Self

from nnteleport.errors import InvalidValueError

__all__ = ["Choice"]


class Choice(StrEnum):
    """A :class:`~enum.StrEnum` whose unknown values raise :class:`InvalidValueError` naming the option."""

    def __init_subclass__(cls, *, what: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._what = what or cls.__name__  # set on the class after its members exist; not a member itself

    @classmethod
    def parse(cls, value: Any, what: str | None = None) -> Self:
        """``value`` as a member; ``what`` overrides the option's name in the error message."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except InvalidValueError as e:
            if what is None:
                raise
            raise InvalidValueError(str(e).replace(f"unknown {cls._what} ", f"unknown {what} ", 1)) from None

    @classmethod
    def _missing_(cls, value: object) -> Any:
        allowed = ", ".join(repr(m.value) for m in cls)
        raise InvalidValueError(f"unknown {getattr(cls, '_what', cls.__name__)} {value!r}; choose one of: {allowed}")
