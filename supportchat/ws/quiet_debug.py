"""Autobahn's debug log arguments, formatted only if they are logged.

Autobahn builds the arguments of its ``log.debug`` calls before the logger
can drop them: on every socket read and every write it makes coloured
strings (``hltype``, ``hlval``), and on every new connection a
pretty-printed dump of its sixty options (``pformat``). With debug logging
off (always, in this server) all of it is thrown away. Profiled on the load
benchmark (docs/benchmarks.md, issue 13): about a tenth of the reactor's
time while 9,000 connections open, and a few percent per message.

:func:`install` replaces those three helpers in the two Autobahn modules on
our path with stand-ins that only remember their argument; the real helper
runs if and when a log line is actually formatted. Debug output, when
someone turns it on, reads the same (``str``/``format`` give the real
text).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

MODULES = ("autobahn.websocket.protocol", "autobahn.twisted.websocket")
HELPERS = ("hltype", "hlval", "pformat")


class _Deferred(str):
    """An empty ``str`` standing for ``real(value, ...)``, computed when it is
    turned into text."""

    __slots__ = ("_call",)

    _call: tuple[Callable[..., str], tuple[Any, ...], dict[str, Any]]

    def __new__(cls, real: Callable[..., str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> "_Deferred":
        self = super().__new__(cls, "")
        self._call = (real, args, kwargs)
        return self

    def __str__(self) -> str:
        real, args, kwargs = self._call
        return str(real(*args, **kwargs))

    def __repr__(self) -> str:
        return self.__str__()

    def __format__(self, spec: str) -> str:
        return format(self.__str__(), spec)


class _StandIn:
    """Called like the real helper; returns a :class:`_Deferred`."""

    __slots__ = ("real",)

    def __init__(self, real: Callable[..., str]) -> None:
        self.real = real

    def __call__(self, *args: Any, **kwargs: Any) -> _Deferred:
        return _Deferred(self.real, args, kwargs)


def install() -> None:
    """Put the stand-ins in place (idempotent)."""
    for name in MODULES:
        module = importlib.import_module(name)
        for helper in HELPERS:
            real = getattr(module, helper, None)
            if real is not None and not isinstance(real, _StandIn):
                setattr(module, helper, _StandIn(real))
