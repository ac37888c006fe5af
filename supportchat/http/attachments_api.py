"""``/api/v1/attachments``: upload and download (docs/protocol.md, "Attachments").

    POST /api/v1/attachments                    multipart/form-data, field "file" (and "conversation")
    GET  /api/v1/attachments/{id}               the stored bytes
    GET  /api/v1/attachments/{id}/thumbnail     an image's thumbnail

Uploads need the uploader's bearer token. Downloads take either a signed
link's ``exp`` and ``sig`` (minted in every response that shows the
attachment; 403 once expired or when tampered with) or a bearer token
(401 without one; the uploader, and once a message carries the upload,
the conversation's participants and staff; 404 for anyone else and for
ids that do not exist). Every download is served with ``nosniff``, a
sandboxing Content-Security-Policy, ``Content-Disposition: attachment``
for everything but images, an ``ETag`` and single byte ranges.
"""

from __future__ import annotations

from typing import IO, Any, Sequence
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from supportchat.attachments.models import IMAGE_TYPES, Attachment, AttachmentError
from supportchat.attachments.service import AttachmentService
from supportchat.http.authn import Authenticator
from supportchat.http.common import allow_cors, cors_preflight, json_body, json_error, normalize_origin
from supportchat.http.history import HttpError, authenticate, path_segments, str_arg

log = Logger()

# What a multipart body may carry besides the file (boundaries, headers,
# the conversation field): the route's body limit is max_bytes plus this.
MULTIPART_OVERHEAD = 64 * 1024
CSP = b"default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"


class _Window:
    """A file read from its current position for at most ``left`` bytes."""

    def __init__(self, f: IO[bytes], left: int) -> None:
        self._f = f
        self._left = left

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        data = self._f.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(data)
        return data


def parse_range(header: bytes | None, size: int) -> tuple[int, int] | None | bool:
    """(first, last) of a single ``bytes=`` range; None to serve the whole
    body (no header, several ranges, another unit, garbage: RFC 9110
    allows ignoring them); False when it cannot be satisfied (416)."""
    if not header:
        return None
    unit, _, spec = header.decode("latin-1").partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) or (
            last and not last.isdigit()):
        return None
    if not first:  # the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return False
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size:
        return False
    if end < start:
        return None
    return start, min(end, size - 1)


def content_disposition(name: str, inline: bool) -> bytes:
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in name) or "file"
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}".encode("ascii")


class AttachmentsApi(Resource):
    """The whole ``/api/v1/attachments`` tree (one leaf)."""

    isLeaf = True

    def __init__(self, authn: Authenticator, service: AttachmentService, allowed_origins: Sequence[str] = ()) -> None:
        super().__init__()
        self._authn = authn
        self._service = service
        self._origins = {o for o in (normalize_origin(x) for x in allowed_origins) if o}

    def render(self, request: Request) -> Any:
        allowed = allow_cors(request, self._origins)
        if allowed:
            request.setHeader(b"access-control-expose-headers", b"etag, content-disposition, content-range")
        if request.method == b"OPTIONS":
            if not allowed:
                return json_error(request, 403, "forbidden", "this Origin may not use this endpoint")
            return cors_preflight(request, b"GET, POST", b"authorization, range")
        try:
            path = path_segments(request)
        except HttpError as e:
            return json_error(request, e.status, e.code, e.message)
        if request.method == b"POST" and not any(path):
            return self._run(request, self._upload(request))
        if request.method == b"GET" and len(path) in (1, 2) and path[0] and (len(path) == 1 or path[1] == "thumbnail"):
            return self._run(request, self._download(request, path[0], "file" if len(path) == 1 else "thumbnail"))
        if request.method not in (b"GET", b"POST"):
            allow = "POST" if not any(path) else "GET"
            return json_error(request, 405, "bad_request", f"method not allowed; use {allow}", {"allow": allow})
        return json_error(request, 404, "not_found", "no such resource")

    def _run(self, request: Request, coro: Any) -> Any:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d: Deferred[Any] = Deferred.fromCoroutine(coro)

        def failed(reason: Failure) -> None:
            err = reason.value
            if isinstance(err, AttachmentError):
                headers = {"retry-after": str(int(err.retry_after))} if err.retry_after else None
                body = json_error(request, err.status, err.code, err.message, headers)
            elif isinstance(err, HttpError):
                body = json_error(request, err.status, err.code, err.message, err.headers)
            else:
                log.failure("{method} attachments failed", reason, method=request.method)
                body = json_error(request, 503, "unavailable", "attachments are unavailable; retry shortly",
                                  {"retry-after": "5"})
            if not gone:
                request.write(body)
                request.finish()

        d.addErrback(failed)
        return NOT_DONE_YET

    async def _upload(self, request: Request) -> None:
        principal = await authenticate(request, self._authn)
        assert request.content is not None
        body = await self._service.upload(principal, request.content, request.getHeader(b"content-type"))
        if not request.finished and not request._disconnected:
            request.write(json_body(request, 201, body))
            request.finish()

    async def _download(self, request: Request, attachment_id: str, variant: str) -> None:
        exp, sig = str_arg(request, "exp"), str_arg(request, "sig")
        signed = exp is not None or sig is not None
        if signed:
            attachment = await self._service.find_signed(attachment_id, variant, exp or "", sig or "")
        else:
            principal = await authenticate(request, self._authn)
            attachment = await self._service.find_for(attachment_id, principal)
        f, size, content_type = await self._service.open(attachment, variant)
        try:
            done = self._serve(request, attachment, variant, f, size, content_type, signed, exp)
        except BaseException:
            f.close()
            raise
        if done is None:
            f.close()
            return
        try:
            await done
        except Exception:  # the client went away mid-transfer
            pass
        finally:
            f.close()
        if not request.finished and not request._disconnected:
            request.finish()

    def _serve(self, request: Request, attachment: Attachment, variant: str, f: IO[bytes], size: int,
               content_type: str, signed: bool, exp: str | None) -> "Deferred[Any] | None":
        etag = f'"{attachment.sha256}{"-thumb" if variant == "thumbnail" else ""}"'.encode("ascii")
        image = content_type in IMAGE_TYPES
        request.setHeader(b"content-type", (content_type + ("; charset=utf-8" if content_type == "text/plain" else ""))
                          .encode("ascii"))
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", CSP)
        request.setHeader(b"content-disposition", content_disposition(attachment.name, image))
        request.setHeader(b"etag", etag)
        request.setHeader(b"accept-ranges", b"bytes")
        if signed and exp is not None and exp.isdigit():
            left = max(0, int(int(exp) - self._service.links.now()))
            request.setHeader(b"cache-control", f"private, max-age={left}".encode("ascii"))
        else:
            request.setHeader(b"cache-control", b"private, no-cache")
        inm = request.getHeader(b"if-none-match")
        if inm is not None and (inm.strip() == b"*" or etag in [t.strip().removeprefix(b"W/") for t in inm.split(b",")]):
            request.setResponseCode(304)
            request.finish()
            return None
        window = parse_range(request.getHeader(b"range"), size)
        if window is False:
            request.setResponseCode(416)
            request.setHeader(b"content-range", f"bytes */{size}".encode("ascii"))
            request.setHeader(b"content-length", b"0")
            request.finish()
            return None
        if window is None:
            first, last = 0, size - 1
            request.setResponseCode(200)
        else:
            assert isinstance(window, tuple)
            first, last = window
            request.setResponseCode(206)
            request.setHeader(b"content-range", f"bytes {first}-{last}/{size}".encode("ascii"))
        length = max(0, last - first + 1)
        request.setHeader(b"content-length", str(length).encode("ascii"))
        if length == 0:
            request.finish()
            return None
        f.seek(first)
        return FileSender().beginFileTransfer(_Window(f, length), request)
