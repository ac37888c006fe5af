"""The WebSocket handshake guard: rate limit (429), Origin (403) and token
and account (401, through the one authentication path of
``supportchat.http.authn``) are checked before the upgrade, answered as
JSON like the REST API."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from autobahn.twisted.resource import WebSocketResource
from twisted.web.http import Request
from twisted.web.server import NOT_DONE_YET

from twisted.python.failure import Failure
from twisted.logger import Logger

from supportchat.auth import AuthError, Principal
from supportchat.http.authn import Authenticator
from supportchat.http.common import client_ip, json_error, normalize_origin
from supportchat.metrics import Metrics
from supportchat.ratelimit import KeyedRateLimiter
from supportchat.ws.protocol import SUBPROTOCOL, ChatServerFactory

log = Logger()


def release_upgrade_request(request: Request) -> None:
    """Autobahn has taken the TCP transport over: let the HTTP channel and
    its request go. Left alone, the channel's idle timeout (a DelayedCall,
    ``[server] idle_timeout`` long) and the transport, which still has the channel as its
    producer, keep both alive with every header for as long as the
    WebSocket lives: about 3.5 KB of every idle connection (measured with
    bench/run.py; tests/test_ws_edge.py checks they are freed)."""
    channel = getattr(request, "channel", None)
    if channel is None:
        return
    channel.setTimeout(None)
    requests = getattr(channel, "requests", None)
    if isinstance(requests, list) and request in requests:
        requests.remove(request)
    transport = getattr(channel, "_networkProducer", None)  # the TCP or TLS transport (Twisted's name for it)
    if transport is not None and channel in _registered_producers(transport):
        transport.unregisterProducer()


def _registered_producers(transport: Any) -> list[Any]:
    """The producer a transport holds: TCP keeps it as ``producer``; TLS
    keeps it in a membrane (``_producer._producer``)."""
    out: list[Any] = []
    for name in ("producer", "_producer"):
        held = getattr(transport, name, None)
        if held is not None:
            out.extend((held, getattr(held, "_producer", None)))
    return out


def token_from_request(request: Request) -> tuple[str | None, str | None]:
    """The bearer token and where it came from: the Authorization header,
    the ``access_token`` query parameter, or a ``bearer.<jwt>`` subprotocol."""
    auth = request.getHeader(b"authorization")
    if auth:
        scheme, _, value = auth.partition(b" ")
        if scheme.lower() == b"bearer" and value.strip():
            return value.strip().decode("ascii", "replace"), "header"
    args = request.args or {}
    values = args.get(b"access_token")
    if values and values[0]:
        return values[0].decode("ascii", "replace"), "query"
    offered = request.getHeader(b"sec-websocket-protocol")
    if offered:
        names = [p.strip() for p in offered.decode("ascii", "replace").split(",")]
        for name in names:
            if name.startswith("bearer."):
                return name[len("bearer."):], "subprotocol"
    return None, None


class GuardedWebSocketResource(WebSocketResource):
    """``WebSocketResource`` that authenticates before handing over."""

    isLeaf = True

    def __init__(
        self,
        factory: ChatServerFactory,
        authn: Authenticator,
        limiter: KeyedRateLimiter,
        allowed_origins: Sequence[str],
        metrics: Metrics,
        serving: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(factory)
        self._serving = serving
        self._chat_factory = factory
        self._authn = authn
        self._limiter = limiter
        self._origins = {o for o in (normalize_origin(x) for x in allowed_origins) if o}
        self._metrics = metrics

    def _reject(self, request: Request, status: int, code: str, reason: str, message: str, headers: dict[str, str] | None = None) -> bytes:
        self._metrics.handshake_rejections.labels(reason).inc()
        return json_error(request, status, code, message, headers)

    def render(self, request: Request) -> Any:
        if not self._serving():
            return self._reject(request, 503, "unavailable", "not_ready", "this node is starting; retry shortly",
                                {"retry-after": "1"})
        if not self._limiter.allow(client_ip(request)):
            retry = max(1, int(1 / self._limiter.rate + 0.999))
            return self._reject(request, 429, "rate_limited", "rate_limited", "too many connection attempts; retry later",
                                {"retry-after": str(retry)})
        origin = request.getHeader(b"origin")
        if origin is not None and normalize_origin(origin.decode("ascii", "replace")) not in self._origins:
            return self._reject(request, 403, "forbidden", "origin", "this Origin may not open chat connections")
        token, source = token_from_request(request)
        if token is None:
            return self._reject(request, 401, "unauthorized", "no_token", "a bearer token is required",
                                {"www-authenticate": "Bearer"})
        if source == "subprotocol":
            offered = (request.getHeader(b"sec-websocket-protocol") or b"").decode("ascii", "replace")
            if SUBPROTOCOL not in [p.strip() for p in offered.split(",")]:
                return self._reject(request, 400, "bad_request", "subprotocol",
                                    f"offer {SUBPROTOCOL} together with the bearer subprotocol")
        # The account check may need the database: the upgrade then happens
        # when it answers (customer tokens and refused ones answer at once).
        now: list[Any] = []
        waiting: list[bool] = []
        gone: list[bool] = []

        def arrived(outcome: Any) -> None:
            if not waiting:
                now.append(outcome)
            elif not gone and request.channel is not None and request.channel.transport is not None:
                body = self._authenticated(request, outcome)
                if body is not NOT_DONE_YET:
                    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
                    request.write(body)
                    request.finish()
            # else: the client left while its account was looked up

        self._authn.authenticate(token).addBoth(arrived)
        if now:
            return self._authenticated(request, now[0])
        waiting.append(True)
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        return NOT_DONE_YET

    def _authenticated(self, request: Request, outcome: Principal | Failure) -> Any:
        """Upgrade for a principal; answer 401 for a refused token or
        account, 503 when the account could not be read."""
        if isinstance(outcome, Failure):
            if outcome.check(AuthError):
                err = outcome.value
                assert isinstance(err, AuthError)
                return self._reject(request, 401, "unauthorized", err.reason, str(err), {"www-authenticate": "Bearer"})
            log.failure("account check at the WebSocket handshake failed", outcome)
            return self._reject(request, 503, "unavailable", "unavailable", "accounts cannot be checked; retry shortly",
                                {"retry-after": "5"})
        self._chat_factory.pending_principal = outcome
        try:
            result = super().render(request)
        finally:
            self._chat_factory.pending_principal = None
        if result is NOT_DONE_YET:
            release_upgrade_request(request)
        return result
