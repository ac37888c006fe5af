"""One upload, on the attachment worker pool: read the ``multipart/form-data``
body part by part without holding it whole, spool the ``file`` part to a
temporary file while hashing and counting it (refused the moment it passes
the size limit), sniff its type from its first bytes, scan it, and for
images decode, re-encode and make the thumbnail (``images.py``).

The request body itself is already bounded by the HTTP edge
(``http/site.py``: 413 from ``Content-Length`` or while a chunked body
arrives) and kept by Twisted in a temporary file past 100 kB.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from typing import IO, Callable, Iterator

from supportchat.attachments.images import PIL_FORMATS, reencode
from supportchat.attachments.models import MAX_NAME_CHARS, AttachmentError, Limits
from supportchat.attachments.scan import Scanner, ScannerUnavailable

CHUNK = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_FIELD_BYTES = 1024
SNIFF_BYTES = 1024


class MultipartError(ValueError):
    """The body is not well-formed multipart/form-data."""


def boundary_of(content_type: bytes | None) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type, or AttachmentError."""
    value = (content_type or b"").decode("latin-1")
    kind, _, params = value.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise AttachmentError(400, "bad_request", "the body must be multipart/form-data with a 'file' field")
    m = re.search(r'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', params, re.I)
    if m is None:
        raise AttachmentError(400, "bad_request", "multipart/form-data without a boundary")
    return (m.group(1) or m.group(2)).encode("latin-1")


def _part_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            raise MultipartError("a part header without a colon")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("utf-8", "replace")
    return headers


def disposition(value: str) -> tuple[str | None, str | None]:
    """(name, filename) of a part's Content-Disposition (``filename*`` in
    RFC 5987 form wins over ``filename``)."""
    params: dict[str, str] = {}
    for m in re.finditer(r';\s*([\w*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))', value):
        params[m.group(1).lower()] = m.group(2).replace('\\"', '"') if m.group(2) is not None else m.group(3).strip()
    filename = params.get("filename")
    star = params.get("filename*")
    if star and "''" in star:
        from urllib.parse import unquote

        charset, _, encoded = star.partition("''")
        try:
            filename = unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            pass
    return params.get("name"), filename


class MultipartReader:
    """Parts of a multipart body read from ``src`` in chunks: ``parts()``
    yields (headers, chunks) and each part's chunks must be consumed (or
    ``drain``ed) before the next part is read. At most one chunk plus a
    delimiter is in memory."""

    def __init__(self, src: IO[bytes], boundary: bytes) -> None:
        self._src = src
        self._delim = b"\r\n--" + boundary
        self._buf = b"\r\n"  # the first delimiter has no CRLF before it
        self._eof = False

    def _fill(self) -> None:
        data = self._src.read(CHUNK)
        if data:
            self._buf += data
        else:
            self._eof = True

    def parts(self) -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
        delim = self._delim
        while True:  # the preamble
            i = self._buf.find(delim)
            if i >= 0:
                self._buf = self._buf[i + len(delim):]
                break
            if self._eof:
                raise MultipartError("no part in the body")
            self._buf = self._buf[-len(delim):]
            self._fill()
        while True:
            while len(self._buf) < 2 and not self._eof:
                self._fill()
            if self._buf[:2] == b"--":
                return
            if self._buf[:2] != b"\r\n":
                raise MultipartError("a delimiter not followed by CRLF")
            self._buf = self._buf[2:]
            while (j := self._buf.find(b"\r\n\r\n")) < 0:
                if len(self._buf) > MAX_HEADER_BYTES or self._eof:
                    raise MultipartError("part headers too long or cut")
                self._fill()
            if j > MAX_HEADER_BYTES:
                raise MultipartError("part headers too long")
            headers = _part_headers(self._buf[:j]) if j else {}
            self._buf = self._buf[j + 4:]
            body = self._body()
            yield headers, body
            for _ in body:  # what the consumer left
                pass

    def _body(self) -> Iterator[bytes]:
        delim = self._delim
        keep = len(delim) - 1
        while True:
            i = self._buf.find(delim)
            if i >= 0:
                if i:
                    yield self._buf[:i]
                self._buf = self._buf[i + len(delim):]
                return
            if self._eof:
                raise MultipartError("the body ends inside a part")
            if len(self._buf) > keep:
                out, self._buf = self._buf[:-keep], self._buf[-keep:]
                yield out
            self._fill()


# -- type sniffing ---------------------------------------------------------
MARKUP = re.compile(rb"^\s*<|<\s*(html|svg|script|body|head|iframe|\?xml|!doctype)\b", re.I)


def sniff(head: bytes) -> str | None:
    """The type of a file from its first bytes: one of the known binary
    signatures, ``text/plain`` for what may be text (checked whole later),
    or None. What the client declared plays no part."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    if b"\x00" in head or MARKUP.search(head):
        return None  # binary, or HTML/SVG/XML dressed as text
    return "text/plain"


class _TextCheck:
    """Is the whole file UTF-8 text without NUL and C0 controls other than
    tab, newline, carriage return and form feed?"""

    BAD = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f]")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.ok = True

    def feed(self, data: bytes, final: bool = False) -> None:
        if not self.ok:
            return
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError:
            self.ok = False
            return
        if self.BAD.search(text):
            self.ok = False


def clean_name(name: str | None, content_type: str) -> str:
    """A file name safe to show and to put in Content-Disposition: the last
    path segment, no control or format characters, at most MAX_NAME_CHARS;
    a default by type when nothing is left."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in unicodedata.normalize("NFC", base)
                   if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn")).strip().lstrip(".")
    if not base:
        base = {"application/pdf": "document.pdf", "text/plain": "text.txt"}.get(
            content_type, "image." + PIL_FORMATS.get(content_type, "bin").lower().replace("jpeg", "jpg"))
    return base[:MAX_NAME_CHARS]


# -- the whole upload ----------------------------------------------------------
@dataclass
class Spooled:
    """What the worker leaves on disk for the service: the stored bytes
    (``path``) and, for images, the thumbnail; the caller owns the files."""

    path: str
    size: int
    sha256: str
    content_type: str
    name: str
    width: int | None = None
    height: int | None = None
    thumb_path: str | None = None
    thumb_type: str | None = None
    scan: str = "unscanned"
    infected: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    image_seconds: float = 0.0


def _spool(directory: str) -> IO[bytes]:
    return tempfile.NamedTemporaryFile(dir=directory, prefix="upload-", suffix=".part", delete=False)


def _hash_file(path: str) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while data := f.read(CHUNK):
            h.update(data)
            size += len(data)
    return size, h.hexdigest()


def _remove(*paths: str | None) -> None:
    for p in paths:
        if p:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


def process_upload(src: IO[bytes], boundary: bytes, limits: Limits, spool_dir: str, scanner: Scanner | None,
                   accept_unscanned: bool, now: Callable[[], float] = time.perf_counter) -> Spooled:
    """Everything an upload needs done off the reactor thread. Returns the
    spooled result, or raises AttachmentError (400 malformed or no file,
    413 too large, 415 type not allowed, 422 corrupt or too many pixels or
    infected, 503 scanner down when refusing then). Leaves no file behind
    when it raises."""
    src.seek(0)
    reader = MultipartReader(src, boundary)
    fields: dict[str, str] = {}
    raw: Spooled | None = None
    try:
        try:
            for headers, chunks in reader.parts():
                name, filename = disposition(headers.get("content-disposition", ""))
                if name == "file" and raw is None:
                    raw = _read_file(chunks, filename, limits, spool_dir)
                elif name and name != "file" and len(fields) < 8:
                    value = b""
                    for data in chunks:
                        value += data
                        if len(value) > MAX_FIELD_BYTES:
                            raise AttachmentError(400, "bad_request", f"the field {name[:40]!r} is too long")
                    fields[name[:40]] = value.decode("utf-8", "replace")
        except MultipartError as e:
            raise AttachmentError(400, "bad_request", f"malformed multipart/form-data: {e}") from None
        if raw is None:
            raise AttachmentError(400, "bad_request", "no 'file' field in the form")
        raw.fields = fields
        if scanner is not None:
            try:
                verdict = scanner.scan(raw.path)
            except ScannerUnavailable:
                if not accept_unscanned:
                    raise AttachmentError(503, "scanner_unavailable",
                                          "the virus scanner is unavailable; retry shortly", retry_after=30) from None
                raw.scan = "unavailable"
            else:
                if verdict.infected is not None:
                    raw.infected = verdict.infected
                    raise AttachmentError(422, "infected", "the file was refused by the virus scanner")
                raw.scan = "clean"
        if raw.content_type in PIL_FORMATS:
            return _image(raw, limits, spool_dir, now)
        return raw
    except BaseException:
        if raw is not None:
            _remove(raw.path)
        raise


def _read_file(chunks: Iterator[bytes], filename: str | None, limits: Limits, spool_dir: str) -> Spooled:
    h = hashlib.sha256()
    size = 0
    head = b""
    text = _TextCheck()
    out = _spool(spool_dir)
    try:
        with out:
            for data in chunks:
                size += len(data)
                if size > limits.max_bytes:
                    raise AttachmentError(413, "too_large", f"the file is larger than {limits.max_bytes} bytes")
                if len(head) < SNIFF_BYTES:
                    head += data[: SNIFF_BYTES - len(head)]
                h.update(data)
                text.feed(data)
                out.write(data)
            text.feed(b"", final=True)
            out.flush()
        if size == 0:
            raise AttachmentError(400, "bad_request", "the file is empty")
        content_type = sniff(head)
        if content_type == "text/plain" and not text.ok:
            content_type = None
        if content_type is None or content_type not in limits.allowed_types:
            raise AttachmentError(415, "unsupported_type",
                                  "this type of file is not accepted (" + ", ".join(limits.allowed_types) + ")")
        return Spooled(out.name, size, h.hexdigest(), content_type, clean_name(filename, content_type))
    except BaseException:
        _remove(out.name)
        raise


def _image(raw: Spooled, limits: Limits, spool_dir: str, now: Callable[[], float]) -> Spooled:
    started = now()
    out, thumb = _spool(spool_dir), _spool(spool_dir)
    try:
        with out, thumb:
            processed = reencode(raw.path, raw.content_type, out, thumb, limits.max_pixels, limits.max_frames,
                                 limits.thumbnail_size)
        size, sha = _hash_file(out.name)
    except BaseException:
        _remove(out.name, thumb.name)
        raise
    _remove(raw.path)
    return Spooled(out.name, size, sha, raw.content_type, raw.name, processed.width, processed.height,
                   thumb.name, processed.thumb_type, raw.scan, None, raw.fields, now() - started)
