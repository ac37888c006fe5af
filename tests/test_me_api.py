"""GET /api/v1/me over real HTTP: the web clients' way to learn that a
WebSocket connect failed because of the token (a browser sees only close
1006) rather than because the server is away."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from tests.support import http_client, start_server, token


class MeApiTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self, websocket={"allowed_origins": ["https://shop.example"]})
        self.base = f"http://127.0.0.1:{self.server.port}/api/v1"
        self.http = http_client()

    @inlineCallbacks
    def call(self, method: str, path: str, bearer: str | None = None, body: Any = None,
             headers: dict[bytes, list[bytes]] | None = None) -> Any:
        h = {b"content-type": [b"application/json"], **(headers or {})}
        if bearer:
            h[b"authorization"] = [f"Bearer {bearer}".encode()]
        r = yield self.http.request(method, self.base + path, headers=h,
                                    data=None if body is None else json.dumps(body).encode())
        text = yield r.text()
        return r, (json.loads(text) if text else None)

    @inlineCallbacks
    def test_a_good_token_answers_its_principal_and_expiry(self) -> Any:
        """A valid token gets 200 with the user as in hello and its exp."""
        now = time.time()
        r, body = yield self.call("GET", "/me", token("alice", "agent", ttl=600, now=now, name="Alice"))
        self.assertEqual(r.code, 200)
        self.assertEqual(body, {"user": {"id": "alice", "role": "agent", "name": "Alice"},
                                "expires_at": int(now + 600)})
        r, body = yield self.call("GET", "/me", token("v1", "customer"))
        self.assertEqual((r.code, body["user"]), (200, {"id": "v1", "role": "customer"}))

    @inlineCallbacks
    def test_refused_tokens_answer_401_with_the_reason(self) -> Any:
        """No token, an expired one, a wrong signature, garbage: 401 JSON with
        WWW-Authenticate and a reason a client can show, never the token."""
        expired = token("alice", "agent", ttl=60, now=time.time() - 3600)
        forged = jwt.encode({"sub": "alice", "role": "agent", "exp": int(time.time()) + 600}, "another-secret-" + "y" * 40,
                            algorithm="HS256")
        for bearer, reason in ((None, "no_token"), (expired, "expired"), (forged, "signature"),
                               ("not-a-jwt", "malformed")):
            r, body = yield self.call("GET", "/me", bearer)
            self.assertEqual(r.code, 401, reason)
            self.assertEqual(r.headers.getRawHeaders(b"www-authenticate"), [b"Bearer"])
            self.assertEqual(r.headers.getRawHeaders(b"content-type"), [b"application/json"])
            self.assertEqual((body["error"]["code"], body["error"]["reason"]), ("unauthorized", reason))
            if bearer:
                self.assertNotIn(bearer, json.dumps(body))

    @inlineCallbacks
    def test_a_disabled_agent_answers_401_account_disabled(self) -> Any:
        """An agent disabled by an admin: their (still unexpired) token gets
        401 account_disabled, like their WebSocket; the refresh token no longer works."""
        admin = token("boss", "admin")
        r, body = yield self.call("POST", "/agents", admin, {"login": "ann", "name": "Ann", "password": "a long password"})
        self.assertEqual(r.code, 201, body)
        r, tokens = yield self.call("POST", "/login", None, {"login": "ann", "password": "a long password"})
        self.assertEqual(r.code, 200, tokens)
        r, body = yield self.call("GET", "/me", tokens["access_token"])
        self.assertEqual((r.code, body["user"]["id"]), (200, "ann"))
        r, _ = yield self.call("PATCH", "/agents/ann", admin, {"disabled": True})
        self.assertEqual(r.code, 200)
        r, body = yield self.call("GET", "/me", tokens["access_token"])
        self.assertEqual((r.code, body["error"]["reason"]), (401, "account_disabled"))
        r, _ = yield self.call("POST", "/refresh", None, {"refresh_token": tokens["refresh_token"]})
        self.assertEqual(r.code, 401)

    @inlineCallbacks
    def test_cors_for_allowed_origins_only(self) -> Any:
        """The embedded widget (another origin) may ask: an allowed Origin gets
        Access-Control-Allow-Origin and a preflight allowing the Authorization
        header; another Origin gets neither."""
        own = "https://shop.example"
        r, _ = yield self.call("OPTIONS", "/me", headers={b"origin": [own.encode()],
                                                          b"access-control-request-headers": [b"authorization"]})
        self.assertEqual(r.code, 204)
        self.assertEqual(r.headers.getRawHeaders(b"access-control-allow-origin"), [own.encode()])
        self.assertEqual(r.headers.getRawHeaders(b"access-control-allow-headers"), [b"authorization"])
        r, body = yield self.call("GET", "/me", token("v1"), headers={b"origin": [own.encode()]})
        self.assertEqual((r.code, r.headers.getRawHeaders(b"access-control-allow-origin")), (200, [own.encode()]))
        evil = b"https://evil.example"
        r, body = yield self.call("OPTIONS", "/me", headers={b"origin": [evil]})
        self.assertEqual((r.code, body["error"]["code"]), (403, "forbidden"))
        r, _ = yield self.call("GET", "/me", token("v1"), headers={b"origin": [evil]})
        self.assertIsNone(r.headers.getRawHeaders(b"access-control-allow-origin"))

    @inlineCallbacks
    def test_other_methods_and_paths(self) -> Any:
        """POST is 405 with Allow: GET; /me/x is a JSON 404."""
        r, body = yield self.call("POST", "/me", token("v1"), {})
        self.assertEqual((r.code, r.headers.getRawHeaders(b"allow")), (405, [b"GET"]))
        r, body = yield self.call("GET", "/me/x", token("v1"))
        self.assertEqual((r.code, body["error"]["code"]), (404, "not_found"))
