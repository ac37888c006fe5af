"""The WebSocket edge in memory (iosim, Clock): frames reach the handler
as typed classes, and the deflate size threshold is applied per message."""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateResponse, PerMessageDeflateResponseAccept
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test.iosim import connectedServerAndClient
from twisted.trial import unittest

from supportchat.auth import Principal
from supportchat.background import BackgroundTasks
from supportchat.config import ChatConfig, WebSocketConfig
from supportchat.handlers.connections import ClientSession
from supportchat.wire.frames import ClientFrame, FrameError, SendMessage
from supportchat.ws.options import websocket_options
from supportchat.ws.protocol import ChatServerFactory, ReactorTimer


class RecordingHandler:
    """Stands in for the FrameRouter: records what the edge hands over."""

    def __init__(self) -> None:
        self.frames: list[ClientFrame] = []
        self.errors: list[FrameError] = []
        self.sessions: list[ClientSession] = []
        self.heartbeats = 0
        self.closed = 0

    def on_open(self, session: ClientSession) -> None:
        self.sessions.append(session)
        session.open_with({"type": "hello"})

    def on_frame(self, session: ClientSession, frame: ClientFrame) -> None:
        self.frames.append(frame)

    def on_bad_frame(self, session: ClientSession, error: FrameError) -> None:
        self.errors.append(error)
        session.send({"type": "error", "code": error.code})

    def on_heartbeat(self, session: ClientSession) -> None:
        self.heartbeats += 1

    def on_close(self, session: ClientSession) -> None:
        self.closed += 1


def parse_server_frames(data: bytes) -> list[tuple[bool, int]]:
    """(compressed, payload length) of each unmasked server frame."""
    out = []
    i = 0
    while i + 2 <= len(data):
        b0, b1 = data[i], data[i + 1]
        length = b1 & 0x7F
        i += 2
        if length == 126:
            length = int.from_bytes(data[i:i + 2], "big")
            i += 2
        elif length == 127:
            length = int.from_bytes(data[i:i + 8], "big")
            i += 8
        out.append((bool(b0 & 0x40), length))
        i += length
    return out


class Client(WebSocketClientProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[Any] = []
        self.raw = b""
        self.close_code: int | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.raw += data
        super().dataReceived(data)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        text = payload.decode()
        self.received.append(json.loads(text) if text.startswith("{") else text)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code = code


class EdgeTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.handler = RecordingHandler()
        config = WebSocketConfig(deflate_threshold=1024)
        self.server_factory = ChatServerFactory(
            self.clock, self.handler, BackgroundTasks(), config, ChatConfig()  # type: ignore[arg-type]
        )
        self.server_factory.setProtocolOptions(**websocket_options(config, ["http://127.0.0.1:8080"]))
        self.client_factory = WebSocketClientFactory("ws://127.0.0.1:8080/ws", reactor=self.clock)
        self.client_factory.protocol = Client
        self.client_factory._batched_timer = ReactorTimer(self.clock)
        self.client_factory.setProtocolOptions(
            perMessageCompressionOffers=[PerMessageDeflateOffer(accept_max_window_bits=True)],
            perMessageCompressionAccept=lambda r: PerMessageDeflateResponseAccept(r) if isinstance(r, PerMessageDeflateResponse) else None,
        )

    def connect(self) -> tuple[Client, Any, Any]:
        self.server_factory.pending_principal = Principal("u1", "customer")
        addr = IPv4Address("TCP", "127.0.0.1", 40000)
        client, server, pump = connectedServerAndClient(
            lambda: self.server_factory.buildProtocol(addr),
            lambda: self.client_factory.buildProtocol(addr),
            clock=self.clock,
        )
        pump.flush()
        return client, server, pump

    def test_text_frames_become_typed_frames(self) -> None:
        """A JSON text frame reaches the handler as its typed class; hello went out first."""
        client, server, pump = self.connect()
        self.assertEqual(client.received, [{"type": "hello"}])
        client.sendMessage(json.dumps({"type": "message", "ref": 1, "conversation": "c", "client_msg_id": "k", "body": "hi"}).encode())
        pump.flush()
        self.assertEqual(self.handler.frames, [SendMessage("c", "k", "hi", 1)])
        self.assertEqual(self.handler.sessions[0].principal, Principal("u1", "customer"))

    def test_bad_and_binary_frames_are_refused_at_the_edge(self) -> None:
        """Malformed JSON and binary frames become error frames; the handler sees no frame."""
        client, server, pump = self.connect()
        client.sendMessage(b"{oops")
        client.sendMessage(b"\x01\x02", isBinary=True)
        pump.flush()
        self.assertEqual(self.handler.frames, [])
        self.assertEqual([e.code for e in self.handler.errors], ["bad_request", "bad_request"])
        self.assertEqual(client.received[1:], [{"type": "error", "code": "bad_request"}] * 2)

    def test_deflate_only_above_the_threshold(self) -> None:
        """Server messages under 1024 bytes go uncompressed, larger ones compressed."""
        client, server, pump = self.connect()
        self.assertIsNotNone(server._perMessageCompress)
        session = self.handler.sessions[0]
        session.send({"type": "small", "body": "x" * 100})
        session.send({"type": "large", "body": "y" * 3000})
        pump.flush()
        frames = parse_server_frames(client.raw)
        self.assertEqual([c for c, _ in frames], [False, True])
        self.assertLess(frames[1][1], 200)
        self.assertEqual([f["type"] for f in client.received[1:]], ["small", "large"])

    def test_close_reaches_handler_and_cancels_timers(self) -> None:
        """Closing tells the handler once and leaves no timer behind."""
        client, server, pump = self.connect()
        client.sendClose(1000)
        pump.flush()
        self.assertEqual(self.handler.closed, 1)
        self.assertEqual(client.close_code, 1000)
        self.assertEqual(self.server_factory.live, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_frames_to_a_closing_or_closed_connection_are_dropped(self) -> None:
        """A frame for a session whose socket is closing (e.g. a disabled agent closed with
        1008) or already gone is dropped quietly: no exception reaches the caller."""
        client, server, pump = self.connect()
        session = self.handler.sessions[0]
        server.close(1008, "account disabled")  # closing: our close frame is out
        session.send({"type": "late", "body": "x"})
        pump.flush()
        session.send({"type": "later", "body": "y"})  # closed
        pump.flush()
        self.assertEqual(client.close_code, 1008)
        self.assertNotIn("late", [f.get("type") for f in client.received if isinstance(f, dict)])

    def test_close_all_sends_1001_and_waits(self) -> None:
        """Shutdown closes open connections with 1001 and fires once they are gone."""
        client, server, pump = self.connect()
        d = self.server_factory.close_all(1001, "server shutting down", 5.0)
        self.assertNoResult(d)
        pump.flush()
        self.successResultOf(d)
        self.assertEqual(client.close_code, 1001)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_options_set_limits_and_deflate(self) -> None:
        """The one options function always sets limits, origins, failByDrop and deflate."""
        config = WebSocketConfig()
        options = websocket_options(config, ["http://127.0.0.1:8080"])
        self.assertEqual(options["maxMessagePayloadSize"], 65536)
        self.assertEqual(options["maxFramePayloadSize"], 65536)
        self.assertFalse(options["failByDrop"])
        self.assertEqual(options["allowedOrigins"], ["http://127.0.0.1:8080"])
        self.assertEqual(options["autoPingInterval"], 30.0)
        accept = options["perMessageCompressionAccept"]([PerMessageDeflateOffer(accept_max_window_bits=True)])
        self.assertEqual((accept.window_bits, accept.mem_level, accept.max_message_size), (11, 3, 65536))
        self.assertEqual(accept.request_max_window_bits, 11)
        self.assertNotIn("perMessageCompressionAccept", websocket_options(WebSocketConfig(deflate=False), []))
        self.assertEqual(websocket_options(config, [], max_message_bytes=1 << 24)["maxMessagePayloadSize"], 1 << 24)
