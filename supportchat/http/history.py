"""REST history for agents and integrators, authorized like WebSocket frames.

    GET /api/v1/conversations/{id}/messages?after_seq=&before_seq=&limit=
    GET /api/v1/search?q=&limit=

Bearer JWT in the Authorization header (the same tokens as the WebSocket).
Customers see their own conversations, agents those they joined, admins
all; a conversation that is missing and one that is not yours both answer
404 not_found.
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable, Coroutine

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from supportchat.auth import AuthError, Principal
from supportchat.http.authn import Authenticator, bearer_token
from supportchat.http.common import json_body, json_error
from supportchat.storage.interfaces import HistoryStore

log = Logger()

SEARCH_MAX_CHARS = 200


def _same(frame: dict[str, Any]) -> dict[str, Any]:
    """No attachment links to mint (the default of the history routes)."""
    return frame


class HttpError(Exception):
    """An error answer: status, code and message (and extra headers)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


async def authenticate(request: Request, authn: Authenticator) -> Principal:
    """The principal of the ``Authorization: Bearer`` token through the one
    authentication path (token and account, ``supportchat.http.authn``),
    or HttpError 401."""
    token = bearer_token(request)
    if token is None:
        raise HttpError(401, "unauthorized", "an Authorization: Bearer token is required", {"www-authenticate": "Bearer"})
    try:
        return await authn.authenticate(token)
    except AuthError as e:
        raise HttpError(401, "unauthorized", str(e), {"www-authenticate": "Bearer"}) from None


# Integers in queries must fit the SQL BIGINT columns they are compared with.
MAX_INT = 2**63 - 1
INT_DIGITS = re.compile(rb"^[0-9]{1,19}$")


def int_arg(request: Request, name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    """An integer query parameter (decimal digits) within [low, high] (high
    at most 2^63-1, the SQL BIGINT), or HttpError 400."""
    values = (request.args or {}).get(name.encode())
    if not values or values[0] == b"":
        return default
    top = MAX_INT if high is None else min(high, MAX_INT)
    if not INT_DIGITS.match(values[0]) or int(values[0]) < low or int(values[0]) > top:
        raise HttpError(400, "bad_request", f"{name} must be an integer between {low} and {top}")
    return int(values[0])


def str_arg(request: Request, name: str) -> str | None:
    """A text query parameter: UTF-8 without NUL characters, or HttpError 400."""
    values = (request.args or {}).get(name.encode())
    if not values:
        return None
    try:
        text = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "bad_request", f"{name} must be UTF-8") from None
    if "\x00" in text:
        raise HttpError(400, "bad_request", f"{name} must not contain NUL characters")
    return text


def path_segments(request: Request) -> list[str]:
    """The request's path below the resource, as text. A segment that is not
    UTF-8 or holds a NUL or other control character names nothing: 404."""
    out = []
    for raw in getattr(request, "postpath", None) or []:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(404, "not_found", "no such resource") from None
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise HttpError(404, "not_found", "no such resource")
        out.append(text)
    return out


class AsyncJsonResource(Resource):
    """A leaf whose handlers are coroutines returning (status, body);
    HttpError becomes a JSON error, anything else a logged 503."""

    isLeaf = True
    routes: dict[bytes, str] = {}

    def render(self, request: Request) -> Any:
        name = self.routes.get(request.method)
        if name is None:
            allow = ", ".join(m.decode() for m in self.routes)
            return json_error(request, 405, "bad_request", f"method not allowed; use {allow}", {"allow": allow})
        handler: Callable[[Request], Coroutine[Any, Any, tuple[int, Any]]] = getattr(self, name)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d: Deferred[tuple[int, Any]] = Deferred.fromCoroutine(handler(request))

        def done(result: tuple[int, Any]) -> None:
            if not gone:
                request.write(json_body(request, result[0], result[1]))
                request.finish()

        def failed(reason: Failure) -> None:
            err = reason.value
            if isinstance(err, HttpError):
                body = json_error(request, err.status, err.code, err.message, err.headers)
            else:
                log.failure("{method} {path} failed", reason, method=request.method, path=request.path)
                body = json_error(request, 503, "unavailable", "the history database is unavailable; retry shortly",
                                  {"retry-after": "5"})
            if not gone:
                request.write(body)
                request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET


class ConversationsApi(AsyncJsonResource):
    """``GET /api/v1/conversations/{id}/messages``: keyset pages of history."""

    routes = {b"GET": "get"}

    def __init__(self, authn: Authenticator, history: HistoryStore, max_limit: int,
                 links: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 names: Callable[[set[str]], Awaitable[dict[str, str]]] | None = None,
                 notes: Callable[[str, int, int | None], Awaitable[list[dict[str, Any]]]] | None = None) -> None:
        super().__init__()
        self._authn = authn
        self._history = history
        self._max_limit = max_limit
        self._links = links or _same
        self._names = names  # the workflow's: agents' display names
        self._notes = notes  # the workflow's: internal notes (staff only) placed after seqs lo..hi

    async def get(self, request: Request) -> tuple[int, Any]:
        principal = await authenticate(request, self._authn)
        path = path_segments(request)
        if len(path) != 2 or path[1] != "messages" or not path[0]:
            raise HttpError(404, "not_found", "no such resource")
        after = int_arg(request, "after_seq", None, 0)
        before = int_arg(request, "before_seq", None, 1)
        limit = int_arg(request, "limit", 50, 1, self._max_limit)
        assert limit is not None
        conv = await self._history.visible_conversation(path[0], principal.key, principal.role)
        if conv is None:
            raise HttpError(404, "not_found", "no such conversation")
        page = await self._history.messages_page(conv.id, after, before, limit + 1)
        backwards = before is not None and after is None
        has_more = len(page) > limit
        if has_more:
            page = page[1:] if backwards else page[:limit]
        out: dict[str, Any] = {
            "conversation": conv.to_wire(),
            "messages": [self._links(m.to_wire()) for m in page],
            "has_more": has_more,
        }
        staff = {m.sender_id for m in page if m.sender_role in ("agent", "admin")}
        if staff and self._names is not None:
            out["names"] = await self._names(staff)
        if principal.role in ("agent", "admin") and self._notes is not None and page:
            lo = 0 if page[0].seq == 1 else page[0].seq
            hi = None if not has_more and before is None else page[-1].seq
            out["notes"] = await self._notes(conv.id, lo, hi)
        return 200, out


class SearchApi(AsyncJsonResource):
    """``GET /api/v1/search?q=``: full-text search in what the user may read."""

    routes = {b"GET": "get"}

    def __init__(self, authn: Authenticator, history: HistoryStore, max_limit: int = 100,
                 links: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        super().__init__()
        self._authn = authn
        self._history = history
        self._max_limit = max_limit
        self._links = links or _same

    async def get(self, request: Request) -> tuple[int, Any]:
        principal = await authenticate(request, self._authn)
        if any(path_segments(request)):
            raise HttpError(404, "not_found", "no such resource")
        q = (str_arg(request, "q") or "").strip()
        if not q:
            raise HttpError(400, "bad_request", "q (the words to search for) is required")
        if len(q) > SEARCH_MAX_CHARS:
            raise HttpError(400, "bad_request", f"q must be at most {SEARCH_MAX_CHARS} characters")
        limit = int_arg(request, "limit", 20, 1, self._max_limit)
        assert limit is not None
        scope = None if principal.role == "admin" else principal.key
        found = await self._history.search(scope, q, limit)
        return 200, {"query": q, "messages": [self._links(m.to_wire()) for m in found]}
