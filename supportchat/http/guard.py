"""The WebSocket handshake guard: rate limit (429), Origin (403) and token
(401) are checked before the upgrade, answered as JSON like the REST API."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from autobahn.twisted.resource import WebSocketResource
from twisted.web.http import Request

from supportchat.auth import AuthError, TokenVerifier
from supportchat.http.common import client_ip, json_error, normalize_origin
from supportchat.metrics import Metrics
from supportchat.ratelimit import KeyedRateLimiter
from supportchat.ws.protocol import SUBPROTOCOL, ChatServerFactory


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
        verifier: TokenVerifier,
        limiter: KeyedRateLimiter,
        allowed_origins: Sequence[str],
        metrics: Metrics,
        serving: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(factory)
        self._serving = serving
        self._chat_factory = factory
        self._verifier = verifier
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
        try:
            principal = self._verifier.verify(token)
        except AuthError as e:
            return self._reject(request, 401, "unauthorized", e.reason, str(e), {"www-authenticate": "Bearer"})
        self._chat_factory.pending_principal = principal
        try:
            return super().render(request)
        finally:
            self._chat_factory.pending_principal = None
