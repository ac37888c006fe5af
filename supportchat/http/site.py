"""The HTTP edge, before any resource runs: every connection is bounded in
time and every request body in size.

- **Request deadline.** A request (its head and its body) must arrive whole
  within ``[server] request_timeout`` seconds, counted from the TCP accept
  for the first request and from the first byte of each later one. The
  WebSocket opening handshake (a request to ``[websocket] path``) gets
  ``[websocket] open_handshake_timeout`` instead, and an upload to
  ``/api/v1/attachments`` ``[attachments] upload_timeout``. The deadline is absolute:
  unlike Twisted's idle timer it does not restart on every byte, so a
  client trickling one byte a second is cut at the deadline. The answer is
  ``408`` with a JSON body, then the connection closes.
- **Idle keep-alive.** Between requests a connection may stay silent for
  ``[server] idle_timeout`` seconds (Twisted's ``Site`` timeout, 12 hours by
  default, now short).
- **Body limits.** A request whose ``Content-Length`` is over its route's
  limit (``BodyLimits``) is answered ``413`` before one byte of the body is
  read; a chunked body is counted while it arrives and refused the moment
  it passes the limit, so nothing past the limit is buffered.

A refusal writes the JSON answer with ``Connection: close``, half-closes
the connection so the client sees the whole answer, discards whatever the
client still sends, and aborts the TCP connection after
``REFUSAL_GRACE`` seconds (or at once past ``DRAIN_MAX_BYTES``).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from twisted.internet.interfaces import IDelayedCall
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

# How long a refused client may keep the connection to read the answer.
REFUSAL_GRACE = 2.0
# What a refused client may still send (discarded) before the abort.
DRAIN_MAX_BYTES = 256 * 1024

REASONS = {408: b"Request Timeout", 413: b"Content Too Large"}


def target_path(target: bytes) -> bytes:
    """The path of a request-target, in origin or absolute form, without
    its query."""
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    if b"://" in path:
        rest = path.split(b"://", 1)[1]
        path = b"/" + rest.split(b"/", 1)[1] if b"/" in rest else b"/"
    return path


class BodyLimits:
    """The largest request body each route accepts, in one table: the
    longest path prefix that matches wins, ``default`` otherwise."""

    def __init__(self, default: int, routes: Mapping[str, int] | None = None) -> None:
        self.default = default
        self.routes = dict(routes or {})
        self._ordered = sorted(((p.rstrip("/").encode(), n) for p, n in self.routes.items()),
                               key=lambda item: -len(item[0]))

    def for_target(self, target: bytes) -> int:
        """The limit for a request-target (origin or absolute form, query ignored)."""
        path = target_path(target)
        for prefix, limit in self._ordered:
            if path == prefix or path.startswith(prefix + b"/"):
                return limit
        return self.default


class LimitedRequest(Request):
    """A request that counts its body as it arrives and lets the channel
    refuse it the moment it passes its route's limit (chunked bodies,
    whose size is not announced)."""

    body_limit: int | None = None
    body_received = 0

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if isinstance(channel, GuardedHTTPChannel) and channel.refused:
            return
        self.body_received += len(data)
        if self.body_limit is not None and self.body_received > self.body_limit:
            if isinstance(channel, GuardedHTTPChannel):
                channel.refuse_too_large(self.body_limit)
            return
        super().handleContentChunk(data)


class GuardedHTTPChannel(HTTPChannel):
    """``HTTPChannel`` with an absolute deadline per request and body limits
    applied before the body is read (see the module docstring)."""

    site: "BoundedSite"
    refused = False
    _deadline: IDelayedCall | None = None
    _deadline_started = 0.0
    _deadline_for_handshake = False
    _abort_call: IDelayedCall | None = None
    _drained = 0

    # -- the request deadline --------------------------------------------
    def connectionMade(self) -> None:
        super().connectionMade()
        self._start_deadline()

    def _start_deadline(self) -> None:
        if self._deadline is not None or self.refused:
            return
        self._deadline_started = self.site.reactor.seconds()
        self._deadline_for_handshake = False
        self._deadline = self.callLater(self.site.request_timeout, self._deadline_passed)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        self.site.refused("request_timeout")
        self._refuse(408, "timeout", "the request was not received in time")

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            self._drained += len(data)
            if self._drained > DRAIN_MAX_BYTES:
                self._abort()
            return
        if not self._handlingRequest:
            self._start_deadline()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.refused:
            return
        super().lineReceived(line)
        path = getattr(self, "_path", None)
        if path is not None and self._deadline is not None and not self._deadline_for_handshake:
            # The opening handshake and uploads have their own (documented)
            # deadlines, from the same start.
            own = self.site.handshake_timeout if self.site.is_websocket_path(path) else self.site.long_deadline(path)
            if own is not None:
                self._deadline_for_handshake = True
                left = self._deadline_started + own - self.site.reactor.seconds()
                self._deadline.reset(max(0.0, left))

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        limit = self.site.body_limits.for_target(getattr(self, "_path", b"/"))
        if self.length is not None and self.length > limit:
            # Refused from Content-Length: not one byte of the body is read
            # (and no "100 Continue" invites the client to send it).
            self.refuse_too_large(limit)
            return
        super().allHeadersReceived()
        request = self.requests[-1]
        if isinstance(request, LimitedRequest):
            request.body_limit = limit

    def allContentReceived(self) -> None:
        if self.refused:
            return
        self._stop_deadline()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if (self.persistent and not self._handlingRequest and not self.refused
                and (self.requests or self._partial_line())):
            # The client sent part of its next request while this one was
            # served: that one's deadline runs from now.
            self._start_deadline()

    def _partial_line(self) -> bool:
        """Has LineReceiver buffered the start of a line?"""
        buffered: Any = getattr(self, "_buffer", b"")
        return bool(buffered)

    def connectionLost(self, reason: Any = None) -> None:
        self._stop_deadline()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        super().connectionLost(reason)

    # -- refusals -------------------------------------------------------
    def refuse_too_large(self, limit: int) -> None:
        self.site.refused("body_too_large")
        self._refuse(413, "too_large", f"the request body is larger than {limit} bytes")

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` with a JSON error, stop reading requests, and
        close: half-close at once, abort after ``REFUSAL_GRACE``."""
        if self.refused or self.transport is None:
            return
        self.refused = True
        self.persistent = False
        self._stop_deadline()
        self.setTimeout(None)
        body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()
        head = (
            b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Error"))
            + b"Content-Type: application/json\r\nCache-Control: no-store\r\nConnection: close\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
        )
        self.transport.write(head + body)
        self._abort_call = self.callLater(REFUSAL_GRACE, self._abort)
        lose_write = getattr(self.transport, "loseWriteConnection", None)
        if lose_write is not None:
            lose_write()
        else:
            self.transport.loseConnection()

    def _abort(self) -> None:
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        elif self.transport is not None:
            self.transport.loseConnection()


class BoundedSite(Site):
    """``Site`` whose channels are ``GuardedHTTPChannel``: request deadline,
    short keep-alive idle time, body limits per route."""

    protocol = GuardedHTTPChannel  # type: ignore[assignment]
    requestFactory = LimitedRequest

    def __init__(
        self,
        resource: IResource,
        reactor: Any,
        *,
        request_timeout: float,
        handshake_timeout: float,
        idle_timeout: float,
        body_limits: BodyLimits,
        websocket_paths: tuple[str, ...] = (),
        on_refusal: Callable[[str], None] | None = None,
        logFormatter: Any = None,
        long_deadlines: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(resource, requestFactory=LimitedRequest, timeout=idle_timeout, reactor=reactor,
                         **({"logFormatter": logFormatter} if logFormatter is not None else {}))
        self.request_timeout = request_timeout
        self.handshake_timeout = handshake_timeout
        self.body_limits = body_limits
        self._ws_paths = tuple(p.rstrip("/").encode() for p in websocket_paths)
        self._on_refusal = on_refusal
        # Routes whose whole request may take longer than request_timeout
        # (uploads), by exact path.
        self._long = {p.rstrip("/").encode(): t for p, t in (long_deadlines or {}).items()}

    def logPrefix(self) -> str:
        return "Site"  # the "Site starting on PORT" line operators and tests look for

    def long_deadline(self, target: bytes) -> float | None:
        """The deadline of a route that has its own (an upload), or None."""
        return self._long.get(target_path(target).rstrip(b"/"))

    def is_websocket_path(self, target: bytes) -> bool:
        return target_path(target).rstrip(b"/") in self._ws_paths

    def refused(self, reason: str) -> None:
        if self._on_refusal is not None:
            self._on_refusal(reason)
