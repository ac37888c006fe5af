"""The visitor's side of email (docs/email.md).

``POST /api/v1/email`` (customer token; CORS for the widget's origins)
``{"conversation": ID, "email": ADDRESS, "transcript"?: bool, "replies"?: bool,
"lang"?: TAG}`` keeps the address for the customer's own conversation:
agent replies are then emailed too (unless ``replies`` is false: a visitor
chatting live who only wants the transcript), and with ``transcript`` the
conversation at close. Answers ``200 {"conversation", "email", "transcript",
"replies"}``; 400 for a bad
address, 403 for someone else's conversation or a staff token, 404 when
email is off or the conversation does not exist.

``/api/v1/unsubscribe?conversation=ID&token=HMAC`` (public, the link in
every email): ``GET`` shows a page with a button, ``POST`` stops the
emails (so a mail scanner that follows links unsubscribes nobody; the
``List-Unsubscribe`` header points here too)."""

from __future__ import annotations

import html
import json
import re
from typing import Any, Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.web.http import Request
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from supportchat.email.compose import check_unsubscribe
from supportchat.email.store import SqlEmailStore
from supportchat.http.authn import Authenticator
from supportchat.http.common import allow_cors, cors_preflight, json_error, normalize_origin
from supportchat.http.history import AsyncJsonResource, HttpError, authenticate, str_arg

# One address, no display name, no spaces or line breaks (RFC 5321 lengths).
ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
LANG = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8}){0,3}$")


def valid_address(address: Any) -> bool:
    return isinstance(address, str) and len(address) <= 254 and bool(ADDRESS.match(address))


class EmailApi(AsyncJsonResource):
    """``POST /api/v1/email`` (and its CORS preflight)."""

    routes = {b"POST": "post"}

    def __init__(self, clock: IReactorTime, authn: Authenticator, store: SqlEmailStore, enabled: bool,
                 allowed_origins: Sequence[str] = (), poke: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._clock = clock
        self._authn = authn
        self._store = store
        self._enabled = enabled
        self._origins = {o for o in (normalize_origin(x) for x in allowed_origins) if o}
        self._poke = poke

    def render(self, request: Request) -> Any:
        allowed = allow_cors(request, self._origins)
        if request.method == b"OPTIONS":
            if not allowed:
                return json_error(request, 403, "forbidden", "this Origin may not use this endpoint")
            return cors_preflight(request, b"POST", b"authorization, content-type")
        return super().render(request)

    async def post(self, request: Request) -> tuple[int, Any]:
        principal = await authenticate(request, self._authn)
        if any(getattr(request, "postpath", None) or []):
            raise HttpError(404, "not_found", "no such resource")
        if principal.role != "customer":
            raise HttpError(403, "forbidden", "only the visitor of a conversation leaves an address")
        if not self._enabled:
            raise HttpError(404, "not_found", "email is not enabled on this server")
        try:
            body = json.loads((request.content.read() if request.content is not None else b"") or b"null")
        except ValueError:
            raise HttpError(400, "bad_request", "the body must be JSON") from None
        if not isinstance(body, dict):
            raise HttpError(400, "bad_request", "the body must be a JSON object")
        conversation, address = body.get("conversation"), body.get("email")
        transcript, lang, replies = body.get("transcript", False), body.get("lang", ""), body.get("replies", True)
        if not isinstance(conversation, str) or not 0 < len(conversation) <= 64:
            raise HttpError(400, "bad_request", "'conversation' must be a conversation id")
        if not valid_address(address):
            raise HttpError(400, "bad_request", "'email' must be an email address such as name@example.com")
        if not isinstance(transcript, bool):
            raise HttpError(400, "bad_request", "'transcript' must be true or false")
        if not isinstance(replies, bool):
            raise HttpError(400, "bad_request", "'replies' must be true or false")
        if not (replies or transcript):
            raise HttpError(400, "bad_request", "ask for replies, the transcript, or both")
        if not isinstance(lang, str) or (lang and not LANG.match(lang)):
            raise HttpError(400, "bad_request", "'lang' must be a language tag such as \"en\" or \"zh-CN\"")
        assert isinstance(address, str)
        outcome = await self._store.subscribe(conversation, address, lang, transcript, self._clock.seconds(),
                                              customer=principal.key, replies=replies)
        if outcome == "missing":
            raise HttpError(404, "not_found", "no such conversation")
        if outcome == "forbidden":
            raise HttpError(403, "forbidden", "not your conversation")
        if self._poke is not None:
            self._poke()
        return 200, {"conversation": conversation, "email": address, "transcript": transcript, "replies": replies}


_PAGE = ('<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
         '<title>{title}</title></head><body><main><h1>{title}</h1>{content}</main></body></html>')


class UnsubscribeResource(Resource):
    """``GET|POST /api/v1/unsubscribe`` (public; the signed link)."""

    isLeaf = True

    def __init__(self, clock: IReactorTime, store: SqlEmailStore, secret: str) -> None:
        super().__init__()
        self._clock = clock
        self._store = store
        self._secret = secret

    def _page(self, request: Request, status: int, title: str, content: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"content-security-policy", b"default-src 'none'; form-action 'self'")
        return _PAGE.format(title=html.escape(title), content=content).encode()

    def _link(self, request: Request) -> tuple[str, str] | None:
        try:
            conversation, token = str_arg(request, "conversation"), str_arg(request, "token")
        except HttpError:
            return None
        if not conversation or not token or not check_unsubscribe(self._secret, conversation, token):
            return None
        return conversation, token

    def render(self, request: Request) -> Any:
        # Errors are JSON like every other route; only the pages are HTML.
        if request.method not in (b"GET", b"POST"):
            return json_error(request, 405, "bad_request", "method not allowed; use GET, POST", {"allow": "GET, POST"})
        if any(getattr(request, "postpath", None) or []) or self._link(request) is None:
            return json_error(request, 404, "not_found", "this unsubscribe link is not valid")
        return super().render(request)

    def render_GET(self, request: Request) -> bytes:
        query = html.escape(request.uri.decode("utf-8", "replace").partition("?")[2])
        form = (f'<form method="post" action="?{query}"><button type="submit">'
                'Stop emails about this conversation / 退订此会话的邮件</button></form>')
        return self._page(request, 200, "Unsubscribe / 退订", form)

    def render_POST(self, request: Request) -> Any:
        link = self._link(request)
        assert link is not None  # checked in render
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = self._store.unsubscribe(link[0], self._clock.seconds())

        def done(_: Any) -> None:
            if gone:
                return
            request.write(self._page(request, 200, "Unsubscribed / 已退订",
                                     "<p>You will get no more emails about this conversation. "
                                     "您将不再收到此会话的邮件。</p>"))
            request.finish()

        def failed(_: Any) -> None:
            if gone:
                return
            request.write(json_error(request, 503, "unavailable", "the database is unavailable; retry shortly",
                                     {"retry-after": "5"}))
            request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET
