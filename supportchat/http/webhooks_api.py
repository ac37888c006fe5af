"""Admin REST for webhooks (docs/webhooks.md):

    POST   /api/v1/webhooks                  {"url", "events", "description"?} -> 201 with id and secret (once)
    GET    /api/v1/webhooks                  -> {"webhooks": [...]} (never a secret)
    GET    /api/v1/webhooks/{id}
    PATCH  /api/v1/webhooks/{id}             {"url"?, "events"?, "description"?, "paused"?,
                                              "rotate_secret"?: true, "grace_period"?: seconds}
    DELETE /api/v1/webhooks/{id}             -> 204-like {"deleted": true}
    GET    /api/v1/webhooks/{id}/deliveries  ?limit=&before=  each attempt, newest first
    POST   /api/v1/webhooks/{id}/replay      {"since": EVENT_ID or UNIX seconds} -> 202

Admins only (403 for agents and customers), through the one authentication
path. A secret is in the answer of the POST that creates it and of the
PATCH that rotates it, nowhere else.
"""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

from twisted.internet.interfaces import IReactorTime
from twisted.web.http import Request

from supportchat.http.authn import Authenticator
from supportchat.http.history import AsyncJsonResource, HttpError, authenticate, int_arg, path_segments, str_arg
from supportchat.http.workflow_api import read_json
from supportchat.webhooks.client import Network, literal_refused
from supportchat.webhooks.events import EVENT_TYPES
from supportchat.webhooks.store import Endpoint, SqlWebhookStore, new_id

DEFAULT_GRACE = 86400.0
MAX_GRACE = 7 * 86400.0
MAX_URL = 2048


def new_secret() -> str:
    return "whsec_" + base64.urlsafe_b64encode(os.urandom(32)).decode("ascii").rstrip("=")


def _not_found() -> HttpError:
    return HttpError(404, "not_found", "no such webhook")


class WebhooksApi(AsyncJsonResource):
    """``/api/v1/webhooks[...]``."""

    routes = {b"GET": "get", b"POST": "post", b"PATCH": "patch", b"DELETE": "delete"}

    def __init__(self, clock: IReactorTime, authn: Authenticator, store: SqlWebhookStore,
                 allowed: Sequence[Network], poke: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self._clock = clock
        self._authn = authn
        self._store = store
        self._allowed = list(allowed)
        self._poke = poke

    async def _admin(self, request: Request) -> list[str]:
        principal = await authenticate(request, self._authn)
        if principal.role != "admin":
            raise HttpError(403, "forbidden", "only admins manage webhooks")
        return path_segments(request)

    async def _endpoint(self, endpoint_id: str) -> Endpoint:
        endpoint = await self._store.get(endpoint_id)
        if endpoint is None:
            raise _not_found()
        return endpoint

    def _url(self, value: Any) -> str:
        if not isinstance(value, str) or len(value) > MAX_URL:
            raise HttpError(400, "bad_request", "url must be an http:// or https:// URL")
        try:
            parts = urlsplit(value)
            parts.port
        except ValueError:
            raise HttpError(400, "bad_request", "url must be an http:// or https:// URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(400, "bad_request", "url must be an http:// or https:// URL")
        if literal_refused(value, self._allowed):
            raise HttpError(400, "bad_request", "url points to a private, loopback or link-local address "
                                                "([webhooks] allowed_private_networks)")
        return value

    @staticmethod
    def _events(value: Any) -> tuple[str, ...]:
        if (not isinstance(value, list) or not value or len(value) > len(EVENT_TYPES)
                or not all(isinstance(v, str) and v in EVENT_TYPES for v in value)):
            raise HttpError(400, "bad_request", "events must be a list of: " + ", ".join(EVENT_TYPES))
        return tuple(dict.fromkeys(value))

    @staticmethod
    def _description(value: Any) -> str:
        if not isinstance(value, str) or len(value) > 500:
            raise HttpError(400, "bad_request", "description must be text of at most 500 characters")
        return value

    async def get(self, request: Request) -> tuple[int, Any]:
        path = await self._admin(request)
        now = self._clock.seconds()
        if not path or path == [""]:
            return 200, {"webhooks": [e.to_wire(now) for e in await self._store.endpoints()]}
        if len(path) == 1:
            return 200, (await self._endpoint(path[0])).to_wire(now)
        if len(path) == 2 and path[1] == "deliveries":
            endpoint = await self._endpoint(path[0])
            limit = int_arg(request, "limit", 50, 1, 500) or 50
            attempts = await self._store.attempts(endpoint.id, limit, str_arg(request, "before"))
            body: dict[str, Any] = {"deliveries": [a.to_wire() for a in attempts]}
            if len(attempts) == limit:
                body["next_before"] = attempts[-1].id
            return 200, body
        raise HttpError(404, "not_found", "no such resource")

    async def post(self, request: Request) -> tuple[int, Any]:
        path = await self._admin(request)
        data = read_json(request)
        now = self._clock.seconds()
        if not path or path == [""]:
            endpoint = Endpoint(
                id=new_id("wh_"), url=self._url(data.get("url")), events=self._events(data.get("events")),
                description=self._description(data.get("description", "")), secret=new_secret(), old_secret=None,
                old_secret_until=None, paused=False, paused_reason=None, since_ts=now, created_at=now)
            await self._store.add(endpoint)
            self._poke()
            return 201, dict(endpoint.to_wire(now), secret=endpoint.secret)
        if len(path) == 2 and path[1] == "replay":
            endpoint = await self._endpoint(path[0])
            since = data.get("since")
            if isinstance(since, bool) or not isinstance(since, (str, int, float)) or (
                    isinstance(since, (int, float)) and not 0 <= since < 2**40):
                raise HttpError(400, "bad_request", "since must be an event id or a UNIX time in seconds")
            point = await self._store.replay(endpoint.id, since)
            if point is None:
                raise HttpError(404, "not_found", "no such event")
            self._poke()
            return 202, {"id": endpoint.id, "replaying_from": point}
        raise HttpError(404, "not_found", "no such resource")

    async def patch(self, request: Request) -> tuple[int, Any]:
        path = await self._admin(request)
        if len(path) != 1:
            raise HttpError(404, "not_found", "no such resource")
        endpoint = await self._endpoint(path[0])
        data = read_json(request)
        now = self._clock.seconds()
        unknown = set(data) - {"url", "events", "description", "paused", "rotate_secret", "grace_period"}
        if unknown:
            raise HttpError(400, "bad_request", "unknown field: " + sorted(unknown)[0])
        changed = endpoint
        if "url" in data:
            changed = replace(changed, url=self._url(data["url"]))
        if "events" in data:
            changed = replace(changed, events=self._events(data["events"]))
        if "description" in data:
            changed = replace(changed, description=self._description(data["description"]))
        if "paused" in data:
            if not isinstance(data["paused"], bool):
                raise HttpError(400, "bad_request", "paused must be true or false")
            changed = replace(changed, paused=data["paused"], paused_reason="admin" if data["paused"] else None)
        secret: str | None = None
        if data.get("rotate_secret") is True:
            grace = data.get("grace_period", DEFAULT_GRACE)
            if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace <= MAX_GRACE:
                raise HttpError(400, "bad_request", f"grace_period must be between 0 and {int(MAX_GRACE)} seconds")
            secret = new_secret()
            changed = replace(changed, secret=secret, old_secret=endpoint.secret, old_secret_until=now + grace)
        elif "rotate_secret" in data and data["rotate_secret"] is not False:
            raise HttpError(400, "bad_request", "rotate_secret must be true or false")
        await self._store.update(changed, pause="paused" in data)
        if endpoint.paused and not changed.paused:
            self._poke()
        body = changed.to_wire(now)
        if secret is not None:
            body["secret"] = secret
        return 200, body

    async def delete(self, request: Request) -> tuple[int, Any]:
        path = await self._admin(request)
        if len(path) != 1:
            raise HttpError(404, "not_found", "no such resource")
        if not await self._store.delete(path[0]):
            raise _not_found()
        return 200, {"id": path[0], "deleted": True}
