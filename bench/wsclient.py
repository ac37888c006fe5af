"""A small, fast WebSocket client protocol for the load generator.

Written for the benchmark rather than taken from a library so that every
byte read from and written to the socket is counted (the "bytes on the
wire" figures are WebSocket bytes: frame headers, masks and payloads, not
TCP/IP headers) and so that the per-frame cost stays low enough for one
Python process to drive thousands of connections.

What it does, and no more:
- the HTTP/1.1 upgrade with ``Authorization: Bearer``, the ``supportchat.v1``
  subprotocol and, when asked, the offer
  ``permessage-deflate; client_max_window_bits`` (what browsers send);
- permessage-deflate (RFC 7692) with the negotiated window sizes and
  context takeover, compressing every text message it sends (as browsers do);
- masked client frames with a fresh random key per frame;
- answers pings with pongs and close frames with close frames.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import zlib
from typing import Any, Callable

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TRAILER = b"\x00\x00\xff\xff"
CLIENT_MEM_LEVEL = 8  # zlib's default, what browsers use

_rand = random.Random(os.urandom(16))


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    k = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def _parse_extensions(value: str) -> dict[str, str | bool]:
    params: dict[str, str | bool] = {}
    first = value.split(",")[0]
    parts = [p.strip() for p in first.split(";")]
    if not parts or parts[0].lower() != "permessage-deflate":
        return {}
    params["permessage-deflate"] = True
    for p in parts[1:]:
        if not p:
            continue
        name, _, val = p.partition("=")
        params[name.strip().lower()] = val.strip().strip('"') if val else True
    return params


class Counters:
    """Bytes read and written by every connection of one process."""

    __slots__ = ("bytes_in", "bytes_out", "frames_in", "frames_out")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.frames_in = 0
        self.frames_out = 0


class HandshakeError(Exception):
    pass


class WsClient(asyncio.Protocol):
    """One client connection. ``on_text(client, text, wire_bytes, compressed)``
    is called for every complete text message."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        token: str,
        deflate: bool,
        counters: Counters,
        on_text: Callable[["WsClient", str, int, bool], None],
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.token = token
        self.offer_deflate = deflate
        self.counters = counters
        self.on_text = on_text
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.deflate = False
        self.extension = ""
        self._key = ""
        self._buf = bytearray()
        self._upgraded = False
        self._comp: Any = None
        self._decomp: Any = None
        self._client_bits = 15
        self._server_bits = 15
        self._client_reset = False
        self._server_reset = False
        self._frag: list[bytes] | None = None
        self._frag_wire = 0
        self._frag_compressed = False
        self.close_sent = False

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key}",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Protocol: supportchat.v1",
            f"Authorization: Bearer {self.token}",
        ]
        if self.offer_deflate:
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        self.counters.bytes_out += len(data)
        transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError(f"connection lost during handshake: {exc}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.counters.bytes_in += len(data)
        buf = self._buf
        buf += data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self._fail("handshake response too long")
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            if not self._check_handshake(head):
                return
        self._parse()

    # -- handshake ---------------------------------------------------------
    def _fail(self, why: str) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError(why))
        if self.transport is not None:
            self.transport.abort()

    def _check_handshake(self, head: str) -> bool:
        lines = head.split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            self._fail(f"handshake refused: {lines[0]}")
            return False
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(self._key.encode() + GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            self._fail("bad Sec-WebSocket-Accept")
            return False
        ext = headers.get("sec-websocket-extensions", "")
        self.extension = ext
        params = _parse_extensions(ext) if ext else {}
        if params:
            if not self.offer_deflate:
                self._fail("server chose an extension we did not offer")
                return False
            self.deflate = True
            client_bits = params.get("client_max_window_bits")
            if isinstance(client_bits, str):
                self._client_bits = int(client_bits)
            server_bits = params.get("server_max_window_bits")
            if isinstance(server_bits, str):
                self._server_bits = int(server_bits)
            self._client_reset = "client_no_context_takeover" in params
            self._server_reset = "server_no_context_takeover" in params
        self._upgraded = True
        self.handshake.set_result(None)
        return True

    # -- frames in ---------------------------------------------------------
    def _parse(self) -> None:
        buf = self._buf
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:
                self._fail("masked frame from the server")
                return
            end = pos + head + length
            if end > size:
                break
            payload = bytes(buf[pos + head : end])
            wire = end - pos
            pos = end
            self.counters.frames_in += 1
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode == 0x1 or opcode == 0x2:
                compressed = bool(b0 & 0x40)
                if fin:
                    self._message(payload, wire, compressed)
                else:
                    self._frag = [payload]
                    self._frag_wire = wire
                    self._frag_compressed = compressed
            elif opcode == 0x0:
                if self._frag is None:
                    self._fail("continuation without a message")
                    return
                self._frag.append(payload)
                self._frag_wire += wire
                if fin:
                    data = b"".join(self._frag)
                    self._frag = None
                    self._message(data, self._frag_wire, self._frag_compressed)
            elif opcode == 0x8:
                if not self.close_sent:
                    self._send_frame(0x8, payload[:2])
                    self.close_sent = True
                if self.transport is not None:
                    self.transport.close()
                del buf[:pos]
                return
            elif opcode == 0x9:
                self._send_frame(0xA, payload)
            # 0xA pong: nothing to do
        if pos:
            del buf[:pos]

    def _message(self, payload: bytes, wire: int, compressed: bool) -> None:
        if compressed:
            if self._decomp is None or self._server_reset:
                self._decomp = zlib.decompressobj(-self._server_bits)
            payload = self._decomp.decompress(payload + TRAILER)
        self.on_text(self, payload.decode("utf-8"), wire, compressed)

    # -- frames out --------------------------------------------------------
    def _send_frame(self, opcode: int, payload: bytes, rsv1: bool = False) -> int:
        if self.transport is None or self.transport.is_closing():
            return 0
        n = len(payload)
        b0 = 0x80 | (0x40 if rsv1 else 0) | opcode
        if n < 126:
            head = bytes((b0, 0x80 | n))
        elif n < 65536:
            head = bytes((b0, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((b0, 0x80 | 127)) + n.to_bytes(8, "big")
        key = _rand.getrandbits(32).to_bytes(4, "little")
        frame = head + key + _mask(payload, key)
        self.transport.write(frame)
        self.counters.bytes_out += len(frame)
        self.counters.frames_out += 1
        return len(frame)

    def send_text(self, text: str) -> int:
        """Send one text message; returns its size on the wire."""
        data = text.encode("utf-8")
        if self.deflate:
            if self._comp is None or self._client_reset:
                self._comp = zlib.compressobj(
                    zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self._client_bits, CLIENT_MEM_LEVEL
                )
            data = self._comp.compress(data) + self._comp.flush(zlib.Z_SYNC_FLUSH)
            if data.endswith(TRAILER):
                data = data[:-4]
            return self._send_frame(0x1, data, rsv1=True)
        return self._send_frame(0x1, data)

    def close(self, code: int = 1000) -> None:
        if not self.close_sent and self._upgraded:
            self.close_sent = True
            self._send_frame(0x8, code.to_bytes(2, "big"))
        elif self.transport is not None and not self._upgraded:
            self.transport.abort()
