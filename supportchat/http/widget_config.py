"""``GET /api/v1/widget-config``: what the customer widget shows when it
opens, before the visitor has written anything, without creating a
conversation (public; CORS for the origins that may open the WebSocket).

    200 {"greeting": {"en": "...", "zh": "..."} | null,
         "quick_replies": [{"label", "text", "i18n"?}],
         "open_now": bool, "next_open": <unix time> | null,
         "agents_online": bool | null, "email": bool}

``greeting`` and ``quick_replies`` are the bot's (its knowledge file, every
language it has; null and [] with the bot off); ``open_now``/``next_open``
come from the business hours (``next_open`` is null when always open);
``agents_online`` says whether an enabled agent is online (null with the
workflow off); ``email`` whether the widget may offer the offline form
(``[email] enabled``: ``POST /api/v1/email``, docs/email.md). The answer
is computed at most once every CACHE_SECONDS per node, so page views cost
no query each.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.web.http import Request

from supportchat.bot.knowledge import Knowledge
from supportchat.hours import BusinessHours
from supportchat.http.common import allow_cors, cors_preflight, json_error, normalize_origin
from supportchat.http.history import AsyncJsonResource

CACHE_SECONDS = 5.0


class WidgetConfig(AsyncJsonResource):
    """``GET /api/v1/widget-config`` (and its CORS preflight)."""

    routes = {b"GET": "get"}

    def __init__(self, clock: IReactorTime, knowledge: Knowledge | None, hours: BusinessHours,
                 agents_online: Callable[[], Awaitable[bool]] | None, allowed_origins: Sequence[str] = (),
                 email: bool = False) -> None:
        super().__init__()
        self._clock = clock
        self._knowledge = knowledge
        self._hours = hours
        self._agents_online = agents_online
        self._email = email
        self._origins = {o for o in (normalize_origin(x) for x in allowed_origins) if o}
        self._cached: tuple[float, dict[str, Any]] | None = None

    def render(self, request: Request) -> Any:
        allowed = allow_cors(request, self._origins)
        if request.method == b"OPTIONS":
            if not allowed:
                return json_error(request, 403, "forbidden", "this Origin may not use this endpoint")
            return cors_preflight(request, b"GET", b"content-type")
        return super().render(request)

    async def get(self, request: Request) -> tuple[int, Any]:
        if any(getattr(request, "postpath", None) or []):
            return 404, {"error": {"code": "not_found", "message": "no such resource"}}
        now = self._clock.seconds()
        if self._cached is None or now - self._cached[0] >= CACHE_SECONDS:
            self._cached = (now, await self._compute(now))
        request.setHeader(b"cache-control", b"public, max-age=5")
        return 200, self._cached[1]

    async def _compute(self, now: float) -> dict[str, Any]:
        k = self._knowledge
        open_now = self._hours.is_open(now)
        return {
            "greeting": dict(k.greeting.by_lang) if k is not None else None,
            "quick_replies": [q.to_wire() for q in k.quick_replies] if k is not None else [],
            "open_now": open_now,
            "next_open": None if open_now else self._hours.next_open(now),
            "agents_online": await self._agents_online() if self._agents_online is not None else None,
            "email": self._email,
        }
