"""Health, readiness, metrics and the v1 REST API."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from supportchat.auth import TokenIssuer
from supportchat.http.common import allow_cors, client_ip, cors_preflight, json_body, json_error, normalize_origin
from supportchat.metrics import Metrics
from supportchat.ratelimit import KeyedRateLimiter
from supportchat.storage.models import new_id

log = Logger()


class JsonResource(Resource):
    """A leaf answering JSON; unknown methods get 405 with a JSON body."""

    isLeaf = True
    methods: tuple[bytes, ...] = (b"GET",)

    def render(self, request: Request) -> Any:
        if request.method not in self.methods:
            allow = ", ".join(m.decode() for m in self.methods)
            return json_error(request, 405, "bad_request", f"method not allowed; use {allow}", {"allow": allow})
        return super().render(request)


class NotFoundResource(JsonResource):
    methods = (b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD")

    def render(self, request: Request) -> bytes:
        return json_error(request, 404, "not_found", "no such resource")


class ApiRoot(Resource):
    """A folder whose unknown children, and itself, answer a JSON 404."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        return NotFoundResource()

    def render(self, request: Request) -> bytes:
        return json_error(request, 404, "not_found", "no such resource")


class Healthz(JsonResource):
    """The process is alive and its reactor turns."""

    def render_GET(self, request: Request) -> bytes:
        return json_body(request, 200, {"status": "ok"})


class Readyz(JsonResource):
    """The database answers and its schema is the one this code expects."""

    def __init__(self, check: Callable[[], "Deferred[dict[str, Any]]"]) -> None:
        super().__init__()
        self._check = check

    def render_GET(self, request: Request) -> Any:
        def ready(details: dict[str, Any]) -> None:
            status = 200 if details.get("ready") else 503
            request.write(json_body(request, status, details))
            request.finish()

        def failed(reason: Failure) -> None:
            log.failure("readiness check failed", reason)
            request.write(json_body(request, 503, {"ready": False, "database": "unreachable"}))
            request.finish()

        self._check().addCallbacks(ready, failed)
        return NOT_DONE_YET


class MetricsResource(JsonResource):
    """Prometheus text exposition."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._metrics.registry)


class Visitors(JsonResource):
    """``POST /api/v1/visitors``: a fresh anonymous customer identity."""

    methods = (b"POST", b"OPTIONS")

    def __init__(self, clock: IReactorTime, issuer: TokenIssuer, ttl: int, limiter: KeyedRateLimiter, enabled: bool,
                 allowed_origins: Sequence[str] = ()) -> None:
        super().__init__()
        self._clock = clock
        self._issuer = issuer
        self._ttl = ttl
        self._limiter = limiter
        self._enabled = enabled
        self._origins = {o for o in (normalize_origin(x) for x in allowed_origins) if o}

    def render(self, request: Request) -> Any:
        allow_cors(request, self._origins)
        return super().render(request)

    def render_OPTIONS(self, request: Request) -> bytes:
        """CORS preflight: 204 with the allowed method and headers for an
        allowed Origin; 403 for any other."""
        if request.responseHeaders.hasHeader(b"access-control-allow-origin"):
            return cors_preflight(request, b"POST", b"content-type")
        return json_error(request, 403, "forbidden", "this Origin may not use the visitors endpoint")

    def render_POST(self, request: Request) -> bytes:
        if not self._enabled:
            return json_error(request, 404, "not_found", "anonymous visitors are disabled on this server")
        if not self._limiter.allow(client_ip(request)):
            return json_error(request, 429, "rate_limited", "too many requests; retry later", {"retry-after": "1"})
        now = self._clock.seconds()
        user_id = new_id("v", now)
        token = self._issuer.mint(user_id, "customer", self._ttl, now)
        return json_body(request, 201, {
            "user_id": user_id,
            "role": "customer",
            "token": token,
            "expires_at": int(now + self._ttl),
        })
