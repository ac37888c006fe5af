"""The one way to start work nobody waits for: failures are logged, never
dropped on the floor."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

T = TypeVar("T")


class BackgroundTasks:
    """Runs background calls and keeps the ones still running, so shutdown
    can wait for them and tests can assert none are left."""

    def __init__(self) -> None:
        self._running: set[Deferred[Any]] = set()

    def run(self, desc: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
        d = maybeDeferred(fn, *args, **kwargs)
        if d.called:
            return d.addErrback(self._failed, desc)
        self._running.add(d)

        def finished(result: Any) -> Any:
            self._running.discard(d)
            return result

        d.addBoth(finished)
        d.addErrback(self._failed, desc)
        return d

    @staticmethod
    def _failed(reason: Failure, desc: str) -> None:
        log.failure("background task {desc} failed", reason, desc=desc)

    @property
    def running(self) -> int:
        return len(self._running)

    def wait(self) -> "Deferred[None]":
        """Fires when everything started so far has finished."""
        from twisted.internet.defer import DeferredList

        pending = list(self._running)
        d = DeferredList(pending, consumeErrors=True)
        return d.addCallback(lambda _: None)
