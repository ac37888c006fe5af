"""The browser UI: the demo page with the customer widget (``/``), the agent
console (``/console``) and their static files (``/static/...``, plus
``/widget.js`` and ``/sc-client.js`` at the root for embedding), served from
the ``supportchat/web`` package data with twisted.web.static.File."""

from __future__ import annotations

import os
from typing import Any

from twisted.web.http import Request
from twisted.web.resource import Resource
from twisted.web.static import File

WEB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web")

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
    ".ico": "image/x-icon",
}

# Pages may only load this server's own scripts and styles, talk to it and
# its WebSocket, and may not be framed. (The widget runs inside the integrator's
# page, under the integrator's policy, not this one.)
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class WebFile(File):
    """``File`` with explicit UTF-8 types, revalidation caching (``no-cache``
    plus Last-Modified, so a new release is picked up at once and unchanged
    files answer 304), ``nosniff``, and CORS on scripts so the widget's
    modules load from any site that embeds it. Directory listings are off."""

    contentTypes = dict(File.contentTypes, **CONTENT_TYPES)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.childNotFound = _NotFound()  # type: ignore[assignment]  # a JSON 404, as everywhere else

    def directoryListing(self) -> Resource:
        return self.childNotFound

    def getChild(self, path: bytes, request: Request) -> Resource:
        # A name the file system cannot take (NUL) or that is not UTF-8 text
        # names no file: a JSON 404, not the OS error File would raise (500).
        if b"\x00" in path or b"/" in path or b"\\" in path:
            return self.childNotFound
        try:
            path.decode("utf-8")
        except UnicodeDecodeError:
            return self.childNotFound
        return super().getChild(path, request)

    def render(self, request: Request) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            from supportchat.http.common import json_error

            return json_error(request, 405, "bad_request", "method not allowed; use GET", {"allow": "GET, HEAD"})
        return super().render(request)

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        path = self.path
        if path.endswith((".js", ".mjs", ".css")):
            request.setHeader(b"access-control-allow-origin", b"*")
        if path.endswith(".html"):
            request.setHeader(b"content-security-policy", PAGE_CSP.encode("ascii"))
            request.setHeader(b"referrer-policy", b"same-origin")
        return super().render_GET(request)


def _file(name: str) -> WebFile:
    f = WebFile(os.path.join(WEB_DIR, name), defaultType="application/octet-stream")
    f.isLeaf = True
    return f


def mount_web(root: Resource) -> None:
    """Put the UI on ``root`` (which answers JSON 404s for everything else)."""
    if not os.path.isdir(WEB_DIR):
        return
    root.putChild(b"", _file("index.html"))
    root.putChild(b"index.html", _file("index.html"))
    root.putChild(b"console", _file("console.html"))
    root.putChild(b"widget.js", _file("widget.js"))
    root.putChild(b"sc-client.js", _file("sc-client.js"))
    static = WebFile(WEB_DIR, defaultType="application/octet-stream")
    root.putChild(b"static", static)


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        from supportchat.http.common import json_error

        return json_error(request, 404, "not_found", "no such file")
