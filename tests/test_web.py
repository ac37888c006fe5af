"""The static UI files and the CORS rules the embedded widget relies on."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from tests.support import http_client, start_server


class WebTests(unittest.TestCase):
    timeout = 30

    @inlineCallbacks
    def get(self, server: Any, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
        client = http_client()
        response = yield client.request(method, f"http://127.0.0.1:{server.port}{path}", headers=headers or {})
        body = yield response.content()
        return response, body

    @inlineCallbacks
    def test_pages_and_scripts_are_served_with_types_and_caching(self) -> Any:
        """/ and /console are HTML pages under a CSP; the scripts are text/javascript, revalidated, CORS-readable."""
        server = yield start_server(self)
        for path, ctype, marker in (
            ("/", "text/html; charset=utf-8", b"widget.js"),
            ("/console", "text/html; charset=utf-8", b"console.js"),
            ("/widget.js", "text/javascript; charset=utf-8", b"SupportChat"),
            ("/sc-client.js", "text/javascript; charset=utf-8", b"export class SupportChatClient"),
            ("/static/widget-app.js", "text/javascript; charset=utf-8", b"export function mount"),
            ("/static/console.css", "text/css; charset=utf-8", b".cols"),
        ):
            response, body = yield self.get(server, path)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(response.headers.getRawHeaders("content-type"), [ctype], path)
            self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-cache"], path)
            self.assertEqual(response.headers.getRawHeaders("x-content-type-options"), ["nosniff"], path)
            self.assertIsNotNone(response.headers.getRawHeaders("last-modified"), path)
            self.assertIn(marker, body, path)
            csp = response.headers.getRawHeaders("content-security-policy")
            if ctype.startswith("text/html"):
                self.assertIn("frame-ancestors 'none'", csp[0])
            else:
                self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), ["*"], path)

    @inlineCallbacks
    def test_unknown_static_file_is_a_json_404(self) -> Any:
        """A missing file under /static answers the usual JSON 404, like every other unknown path."""
        server = yield start_server(self)
        response, body = yield self.get(server, "/static/nope.js")
        self.assertEqual(response.code, 404)
        self.assertIn(b'"not_found"', body)

    @inlineCallbacks
    def test_visitors_cors_for_configured_origins_only(self) -> Any:
        """POST /api/v1/visitors answers CORS preflights and requests from websocket.allowed_origins, and from no other site."""
        server = yield start_server(self, websocket={"allowed_origins": ["https://shop.example"]})
        response, body = yield self.get(server, "/api/v1/visitors", "OPTIONS", {
            "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        self.assertEqual(response.code, 204)
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), ["https://shop.example"])
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-methods"), ["POST"])
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-headers"), ["content-type"])
        self.assertEqual(response.headers.getRawHeaders("vary"), ["Origin"])
        response, body = yield self.get(server, "/api/v1/visitors", "POST", {"Origin": "https://shop.example:443"})
        self.assertEqual(response.code, 201)
        self.assertEqual(response.headers.getRawHeaders("access-control-allow-origin"), ["https://shop.example:443"])
        response, body = yield self.get(server, "/api/v1/visitors", "OPTIONS", {
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        self.assertEqual(response.code, 403)
        self.assertIsNone(response.headers.getRawHeaders("access-control-allow-origin"))
        response, body = yield self.get(server, "/api/v1/visitors", "POST", {"Origin": "https://evil.example"})
        self.assertEqual(response.code, 201)  # a plain POST still works; the browser withholds the answer
        self.assertIsNone(response.headers.getRawHeaders("access-control-allow-origin"))
        response, body = yield self.get(server, "/api/v1/visitors", "POST")
        self.assertEqual(response.code, 201)
        self.assertIsNone(response.headers.getRawHeaders("access-control-allow-origin"))
