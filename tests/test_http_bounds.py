"""The HTTP edge before any resource runs (supportchat/http/site.py), on a
memory transport and a Clock: the absolute request deadline (slowloris),
the WebSocket handshake deadline, the keep-alive idle time, and body
limits applied from Content-Length and while a chunked body arrives."""

from __future__ import annotations

import json
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Request

from supportchat.http.site import REFUSAL_GRACE, BodyLimits, BoundedSite, GuardedHTTPChannel


class Echo(Resource):
    """Answers with the size of the body it was given; counts its calls."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def render(self, request: Request) -> bytes:
        self.calls += 1
        body = request.content.read() if request.content is not None else b""
        return json.dumps({"got": len(body)}).encode()


def split_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


class ChannelBoundsTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.echo = Echo()
        root = Resource()
        root.putChild(b"small", self.echo)
        root.putChild(b"ws", self.echo)
        root.putChild(b"nobody", self.echo)
        root.putChild(b"upload", self.echo)
        self.refusals: list[str] = []
        self.site = BoundedSite(
            root, self.clock, request_timeout=10.0, handshake_timeout=4.0, idle_timeout=60.0,
            body_limits=BodyLimits(1000, {"/small": 100, "/nobody": 0}), websocket_paths=("/ws",),
            on_refusal=self.refusals.append, long_deadlines={"/upload": 60.0},
        )

    def connect(self) -> tuple[GuardedHTTPChannel, StringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert isinstance(channel, GuardedHTTPChannel)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        channel.makeConnection(transport)
        self.addCleanup(self._lose, channel, transport)
        return channel, transport

    def _lose(self, channel: GuardedHTTPChannel, transport: StringTransport) -> None:
        if not getattr(channel, "_lost", False):
            channel._lost = True  # type: ignore[attr-defined]
            channel.connectionLost(None)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [], "timers left behind")

    def trickle(self, channel: GuardedHTTPChannel, transport: StringTransport, data: bytes, seconds: float) -> None:
        """One byte every second (``seconds`` bytes at most), like a slowloris client."""
        for byte in data[: int(seconds)]:
            if transport.disconnecting:
                return
            channel.dataReceived(bytes([byte]))
            self.clock.advance(1)

    def test_slowloris_is_cut_at_the_absolute_deadline(self) -> None:
        """A client sending its request head one byte a second gets 408 (JSON) at request_timeout, however often it sends."""
        channel, transport = self.connect()
        request = b"GET /small HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 100
        self.trickle(channel, transport, request, 30)
        status, headers, body = split_response(transport.value())
        self.assertEqual((status, headers["connection"]), (408, "close"))
        self.assertEqual(json.loads(body)["error"]["code"], "timeout")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.clock.seconds(), 10.0)  # cut at the deadline, not 12 hours after the last byte
        self.assertEqual((self.echo.calls, self.refusals), (0, ["request_timeout"]))

    def test_silent_connection_is_closed_at_the_deadline(self) -> None:
        """A connection that sends nothing at all is closed request_timeout after the accept."""
        channel, transport = self.connect()
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertEqual(split_response(transport.value())[0], 408)
        self.assertTrue(transport.disconnecting)

    def test_websocket_handshake_has_the_handshake_deadline(self) -> None:
        """A request to the WebSocket path must be complete within open_handshake_timeout of the accept."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /ws HTTP/1.1\r\n")
        self.clock.advance(3.9)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"Host: x\r\n")
        self.clock.advance(0.1)
        self.assertEqual(split_response(transport.value())[0], 408)
        self.assertTrue(transport.disconnecting)

    def test_upload_route_has_its_own_deadline(self) -> None:
        """A route with a long deadline (attachment uploads) may take it
        whole, counted from the accept, and is cut there."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n")
        for _ in range(59):
            channel.dataReceived(b"a")
            self.clock.advance(1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(split_response(transport.value())[0], 408)
        self.assertTrue(transport.disconnecting)

    def test_refused_connection_is_aborted_after_the_grace(self) -> None:
        """After a refusal, what the client still sends is discarded and the TCP connection is aborted after a short grace."""
        channel, transport = self.connect()
        self.clock.advance(10)
        transport.disconnecting = False  # a client ignoring the half-close
        channel.dataReceived(b"more bytes that are never parsed\r\n\r\n")
        self.clock.advance(REFUSAL_GRACE)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.echo.calls, 0)

    def test_requests_within_the_deadline_are_served_and_keep_alive_idles_out(self) -> None:
        """Two keep-alive requests are served; each gets a fresh deadline; the idle connection closes after idle_timeout."""
        channel, transport = self.connect()
        self.clock.advance(9)
        channel.dataReceived(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(split_response(transport.value())[0], 200)
        transport.clear()
        self.clock.advance(30)  # idle between requests: the request deadline does not run
        channel.dataReceived(b"GET /sm")
        self.clock.advance(9)
        channel.dataReceived(b"all HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(split_response(transport.value())[0], 200)
        self.assertEqual(self.echo.calls, 2)
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)  # Site's idle timeout (Twisted's default is 12 hours)
        channel.connectionLost(None)
        channel._lost = True  # type: ignore[attr-defined]
        for call in self.clock.getDelayedCalls():  # Twisted's own forced-abort call after an idle timeout
            call.cancel()

    def test_a_pipelined_partial_request_gets_its_own_deadline(self) -> None:
        """Part of a second request sent with the first is cut request_timeout after the first was served."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\nGET /small HTTP/1.1\r\nHo")
        self.assertEqual(split_response(transport.value())[0], 200)
        transport.clear()
        self.clock.advance(9.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(split_response(transport.value())[0], 408)
        self.assertEqual(self.echo.calls, 1)

    def test_content_length_over_the_limit_is_refused_before_reading(self) -> None:
        """A Content-Length over the route's limit gets 413 (JSON) right after the head; no body is read, no 100-continue."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /small HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                             b"Content-Length: 52428800\r\n\r\n")
        status, headers, body = split_response(transport.value())
        self.assertEqual((status, headers["content-type"]), (413, "application/json"))
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertEqual(json.loads(body)["error"]["code"], "too_large")
        channel.dataReceived(b"x" * 100_000)
        content = channel.requests[-1].content
        self.assertTrue(content is None or content.tell() == 0)  # nothing of the body was kept
        self.assertEqual((self.echo.calls, self.refusals), (0, ["body_too_large"]))
        self.clock.advance(REFUSAL_GRACE)

    def test_chunked_body_is_refused_when_it_passes_the_limit(self) -> None:
        """A chunked body is counted as it arrives: 413 the moment it passes the limit, and no more is buffered."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        channel.dataReceived(b"40\r\n" + b"a" * 64 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"40\r\n" + b"b" * 64 + b"\r\n" + (b"40\r\n" + b"c" * 64 + b"\r\n") * 100 + b"0\r\n\r\n")
        self.assertEqual(split_response(transport.value())[0], 413)
        self.assertLessEqual(channel.requests[-1].content.tell(), 100)
        self.assertEqual(self.echo.calls, 0)
        self.clock.advance(REFUSAL_GRACE)

    def test_bodies_within_the_limit_reach_the_resource(self) -> None:
        """Bodies up to the limit, by Content-Length or chunked, are read and served as before."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 100)
        self.assertEqual(json.loads(split_response(transport.value())[2]), {"got": 100})
        transport.clear()
        channel.dataReceived(b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"32\r\n" + b"a" * 50 + b"\r\n32\r\n" + b"b" * 50 + b"\r\n0\r\n\r\n")
        self.assertEqual(json.loads(split_response(transport.value())[2]), {"got": 100})

    def test_routes_without_a_body_refuse_any(self) -> None:
        """A route whose limit is 0 refuses any body; the default limit applies elsewhere."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /nobody HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n")
        self.assertEqual(split_response(transport.value())[0], 413)
        self.clock.advance(REFUSAL_GRACE)
        limits = BodyLimits(1000, {"/api/v1/login": 16, "/api/v1": 5, "/ws": 0})
        self.assertEqual([limits.for_target(t) for t in (
            b"/api/v1/login", b"/api/v1/login?x=1", b"/api/v1/loginx", b"/api/v1/teams/a", b"/ws", b"/other",
            b"http://h:1/api/v1/login",
        )], [16, 16, 5, 5, 0, 1000, 16])
