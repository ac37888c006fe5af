"""``GET /api/v1/me``: is this bearer token still good, and whose is it?

The web clients ask after a WebSocket connect fails before ``hello``: a
browser cannot see the HTTP status of a refused upgrade (it only gets close
1006), so this answer tells an authentication failure (the token is
expired, badly signed, for another audience, or the agent's account is
disabled or its tokens revoked) from a transient one (the server is down).

    200 {"user": {"id", "role", "name"?}, "expires_at": <exp or null>}
    401 {"error": {"code": "unauthorized", "reason": <word>, "message"}}

``reason`` is the verifier's word (``expired``, ``signature``,
``audience``, ``issuer``, ``claims``, ``algorithm``, ``malformed``,
``invalid``), ``no_token`` without a token, or the account's word
(``account_disabled``, ``revoked``, ``role_changed``): the one
authentication path (``supportchat.http.authn``) every route uses.
Cross-origin pages (the embedded widget) may call it from the origins that
may open the WebSocket.
"""

from __future__ import annotations

from typing import Any, Sequence

import jwt
from twisted.web.http import Request

from supportchat.auth import AuthError
from supportchat.http.authn import Authenticator, bearer_token
from supportchat.http.common import allow_cors, cors_preflight, json_error, normalize_origin
from supportchat.http.history import AsyncJsonResource


def _unauthorized(request: Request, reason: str, message: str) -> tuple[int, Any]:
    request.setHeader(b"www-authenticate", b"Bearer")
    return 401, {"error": {"code": "unauthorized", "reason": reason, "message": message}}


class MeApi(AsyncJsonResource):
    """``GET /api/v1/me`` (and its CORS preflight)."""

    routes = {b"GET": "get"}

    def __init__(self, authn: Authenticator, allowed_origins: Sequence[str] = ()) -> None:
        super().__init__()
        self._authn = authn
        self._origins = {o for o in (normalize_origin(x) for x in allowed_origins) if o}

    def render(self, request: Request) -> Any:
        allowed = allow_cors(request, self._origins)
        if request.method == b"OPTIONS":
            if not allowed:
                return json_error(request, 403, "forbidden", "this Origin may not use this endpoint")
            return cors_preflight(request, b"GET", b"authorization")
        return super().render(request)

    async def get(self, request: Request) -> tuple[int, Any]:
        if any(getattr(request, "postpath", None) or []):
            return 404, {"error": {"code": "not_found", "message": "no such resource"}}
        token = bearer_token(request)
        if token is None:
            return _unauthorized(request, "no_token", "an Authorization: Bearer token is required")
        try:
            principal = await self._authn.authenticate(token)
        except AuthError as e:
            return _unauthorized(request, e.reason, str(e))
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")  # verified above
        return 200, {"user": principal.to_wire(),
                     "expires_at": int(exp) if isinstance(exp, (int, float)) else None}
