"""JSON responses and request helpers shared by every resource."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from twisted.web.http import Request


def json_body(request: Request, status: int, body: Any, headers: dict[str, str] | None = None) -> bytes:
    """Set status and JSON content type; return the encoded body."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    for name, value in (headers or {}).items():
        request.setHeader(name.encode("ascii"), value.encode("ascii"))
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def json_error(request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    return json_body(request, status, {"error": {"code": code, "message": message}}, headers)


def client_ip(request: Request) -> str:
    addr = request.getClientAddress()
    return str(getattr(addr, "host", "unknown"))


DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(origin: str) -> str | None:
    """``scheme://host:port`` with the port made explicit (Autobahn compares
    origins in that form), or None when it is not an http(s) origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port or DEFAULT_PORTS[parts.scheme]}"


def redacting_log_formatter(timestamp: str, request: Request) -> str:
    """Access-log line without query strings (they may carry tokens)."""
    path = request.uri.split(b"?", 1)[0].decode("ascii", "replace")
    method = request.method.decode("ascii", "replace")
    return f'{client_ip(request)} - - {timestamp} "{method} {path}" {request.code} {request.sentLength or "-"}'


def allow_cors(request: Request, origins: set[str]) -> bool:
    """CORS for the embedded widget: an Origin among ``origins`` (those that
    may also open the WebSocket) is echoed in Access-Control-Allow-Origin.
    True when the request's Origin is allowed."""
    origin = request.getHeader(b"origin")
    if origin is None:
        return False
    request.setHeader(b"vary", b"Origin")
    if normalize_origin(origin.decode("ascii", "replace")) not in origins:
        return False
    request.setHeader(b"access-control-allow-origin", origin)
    return True


def cors_preflight(request: Request, methods: bytes, headers: bytes) -> bytes:
    """The answer to an allowed Origin's preflight: 204, what may follow."""
    request.setResponseCode(204)
    request.setHeader(b"access-control-allow-methods", methods)
    request.setHeader(b"access-control-allow-headers", headers)
    request.setHeader(b"access-control-max-age", b"600")
    request.setHeader(b"cache-control", b"no-store")
    return b""
