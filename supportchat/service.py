"""Service plumbing: ordered stop, the database and chat-drain services."""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from supportchat.background import BackgroundTasks
from supportchat.handlers.router import FrameRouter
from supportchat.storage.database import Database
from supportchat.storage.sql import SqlConversationStore

log = Logger()


class OrderedMultiService(MultiService):
    """Starts children in order and stops them one at a time in reverse
    order, each waiting for the previous to finish (listeners first,
    database last). Refuses duplicate names."""

    def addService(self, service: Any) -> None:
        if service.name is None:
            raise ValueError("every child service needs a name")
        super().addService(service)

    @inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        for child in reversed(list(self)):
            try:
                yield maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {name} failed", name=child.name)


class DatabaseService(Service):
    """Opens the pool on start; on stop, lets queued appends commit first."""

    def __init__(self, db: Database, store: SqlConversationStore | None) -> None:
        self.db = db
        self.store = store

    def startService(self) -> None:
        super().startService()
        self.db.start()

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self.store is not None:
            yield self.store.drain()
        self.db.close()


def _with_timeout(clock: IReactorTime, d: "Deferred[Any]", seconds: float) -> "Deferred[Any]":
    """``d`` or a timeout, whichever first; the timer never outlives it."""
    out: Deferred[Any] = Deferred()
    def expire() -> None:
        if not out.called:
            out.callback(None)

    timer = clock.callLater(seconds, expire)

    def done(result: Any) -> None:
        if timer.active():
            timer.cancel()
        if not out.called:
            out.callback(None)

    d.addBoth(done)
    return out


class ChatService(Service):
    """On stop: close every WebSocket with 1001 and wait (bounded) for
    frames in flight to finish."""

    def __init__(
        self,
        clock: IReactorTime,
        close_all: Callable[[int, str, float], "Deferred[None]"],
        handler: FrameRouter,
        background: BackgroundTasks,
        timeout: float,
    ) -> None:
        self._clock = clock
        self._close_all = close_all
        self._handler = handler
        self._background = background
        self._timeout = timeout

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        yield self._close_all(1001, "server shutting down", self._timeout)
        yield _with_timeout(self._clock, self._background.wait(), self._timeout)
        self._handler.stop()
