"""The frame router: what the WebSocket edge talks to.

Each frame type maps to one handler in a dispatch table that the frame
modules fill (``messages``, ``conversations`` and, with the workflow on,
``assignment``); a frame type nobody registered is refused. The router
applies the per-connection frame rate limit, answers pings itself, and
maps every failure to an ``error`` frame: ``FrameError`` and store
refusals with their own code, anything else as ``unavailable``.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from supportchat.config import ChatConfig
from supportchat.handlers.connections import ClientSession
from supportchat.handlers.sessions import Sessions
from supportchat.metrics import Metrics
from supportchat.ratelimit import TokenBucket
from supportchat.storage.models import StoreError
from supportchat.wire.frames import ClientFrame, FrameError, Ping, Pong, error_frame, reply

log = Logger()

F = TypeVar("F")
FrameHandler = Callable[[ClientSession, Any], Awaitable[None]]


class FrameRouter:
    """Rate limit, dispatch table, error mapping; sessions' lifecycle."""

    def __init__(self, clock: IReactorTime, sessions: Sessions, metrics: Metrics, config: ChatConfig) -> None:
        self._clock = clock
        self._sessions = sessions
        self._metrics = metrics
        self._config = config
        self._buckets: dict[str, TokenBucket] = {}
        self._table: dict[type, FrameHandler] = {}
        self.register(Ping, self._ping)
        self.register(Pong, self._pong)

    def register(self, frame_type: type[F], handler: Callable[[ClientSession, F], Awaitable[None]]) -> None:
        """``handler`` answers every frame of ``frame_type``."""
        if frame_type in self._table:
            raise ValueError(f"{frame_type.__name__} frames already have a handler")
        self._table[frame_type] = handler

    def stop(self) -> None:
        self._sessions.stop()

    # -- lifecycle (from the edge) ---------------------------------------
    def on_open(self, session: ClientSession) -> "Deferred[None]":
        self._buckets[session.id] = TokenBucket(self._config.frame_rate, self._config.frame_burst,
                                                self._clock.seconds())
        return Deferred.fromCoroutine(self._sessions.open(session))

    def on_close(self, session: ClientSession) -> None:
        self._buckets.pop(session.id, None)
        self._sessions.close(session)

    def on_heartbeat(self, session: ClientSession) -> None:
        """Any sign of life (ping, pong, frame) refreshes presence."""
        self._sessions.touch(session)

    # -- frames ------------------------------------------------------------
    def on_bad_frame(self, session: ClientSession, error: FrameError) -> None:
        self._send_error(session, error.code, error.message, error.ref)

    def on_frame(self, session: ClientSession, frame: ClientFrame) -> "Deferred[None]":
        """Handle one parsed frame; errors become ``error`` frames."""
        self._sessions.touch(session)
        bucket = self._buckets.get(session.id)
        if bucket is not None and not isinstance(frame, (Ping, Pong)) and not bucket.take(self._clock.seconds()):
            self._send_error(session, "rate_limited", f"too many frames; retry in {bucket.retry_after():.2f}s", frame.ref)
            return succeed(None)
        handler = self._table.get(type(frame))
        if handler is None:
            self._send_error(session, "bad_request", f"{type(frame).__name__.lower()} frames are not enabled on this "
                             "server (the support workflow is off)", frame.ref)
            return succeed(None)
        d: Deferred[None] = Deferred.fromCoroutine(handler(session, frame))  # type: ignore[arg-type]

        def failed(reason: Failure) -> None:
            err = reason.value
            if isinstance(err, FrameError):
                self._send_error(session, err.code, err.message, err.ref)
            elif isinstance(err, StoreError):
                self._send_error(session, err.code, str(err), frame.ref, err.retry_after)
            else:
                log.failure("frame handling failed ({kind})", reason, kind=type(frame).__name__)
                self._send_error(session, "unavailable", "temporarily unable to handle this frame; retry", frame.ref)

        return d.addErrback(failed)

    def _send_error(self, session: ClientSession, code: str, message: str, ref: Any,
                    retry_after: float | None = None) -> None:
        self._metrics.frame_errors.labels(code).inc()
        frame = error_frame(code, message, ref)
        if retry_after is not None:
            frame["retry_after"] = retry_after
        session.send(frame)

    async def _ping(self, session: ClientSession, frame: Ping) -> None:
        if frame.plain:
            session.send_encoded("pong")
        else:
            session.send(reply({"type": "pong"}, frame.ref))

    async def _pong(self, session: ClientSession, frame: Pong) -> None:
        """Nothing to answer: receiving it already refreshed presence."""
