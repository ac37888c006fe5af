"""Bounded connections on real sockets against a whole server: a WebSocket
peer that does not read is closed and its buffer stays bounded while its
senders keep being served; silent and slowloris connections are closed
at the request deadline; oversized bodies are refused before they are
read."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from tests.support import TIMEOUT, close_client, connect, start_server, token

LIMIT = 16 * 1024
REFUSAL_GRACE = 2.0  # supportchat.http.site.REFUSAL_GRACE (not imported: this module also runs against older code)
BODY = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(1300))  # ~3.9 KB of UTF-8, hard to compress


def tcp_of(transport: Any) -> Any:
    """The TCP transport, under a TLS wrapper if there is one."""
    return transport if isinstance(transport, FileDescriptor) else transport.transport


def tcp_socket(transport: Any) -> socket.socket:
    return tcp_of(transport).socket  # type: ignore[no-any-return]


def server_buffered(transport: Any) -> int:
    """Bytes the server holds for a peer in user space (Twisted's
    FileDescriptor buffer: unsent part of ``dataBuffer`` plus what was
    written since the last flush; for TLS also the wrapper's cleartext)."""
    tcp = tcp_of(transport)
    held = 0
    if tcp is not transport:  # the TLS wrapper's own buffers: aggregated small writes, pre-handshake writes
        held += sum(len(b) for b in transport._aggregator._buffer) + sum(len(b) for b in transport._appSendBuffer)
    return held + len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen


class Raw(protocol.Protocol):
    """A TCP client that records what it gets and when it is closed."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[float] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(time.monotonic())


@defer.inlineCallbacks
def raw_connect(port: int) -> Any:
    from twisted.internet import reactor

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    proto = yield endpoint.connect(protocol.Factory.forProtocol(Raw))
    return proto


class SlowConsumerBase(unittest.TestCase):
    """A customer and an agent in one conversation; the agent floods."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(
            self,
            websocket={"send_buffer_limit": LIMIT, "send_timeout": 30.0, "close_handshake_timeout": 0.5,
                       "deflate": False},
            chat={"frame_rate": 100000.0, "frame_burst": 100000},
        )

    @defer.inlineCallbacks
    def pair(self) -> Any:
        tls = getattr(self, "tls", None)
        cust = yield connect(self.server.port, token("cust"), deflate=False, tls=tls)
        agent = yield connect(self.server.port, token("agent", "agent", name="Ann"), deflate=False, tls=tls)
        self.addCleanup(close_client, agent)
        cust.send({"type": "start", "ref": "s"})
        conv = (yield cust.next_frame("conversation"))["conversation"]["id"]
        agent.send({"type": "accept", "ref": "a", "conversation": conv})
        yield agent.next_frame("conversation", lambda f: f.get("ref") == "a")
        yield cust.next_event("joined")
        return cust, agent, conv

    def server_side(self, user_id: str) -> Any:
        (proto,) = [p for p in self.server.server.get_chat_factory().live
                    if p.principal is not None and p.principal.user_id == user_id]
        return proto

    @defer.inlineCallbacks
    def send_acked(self, agent: Any, conv: str, prefix: str, count: int, window: int = 16,
                   each: Any = None) -> Any:
        """Send ``count`` messages (``window`` unacknowledged at most); all must be acknowledged."""
        sent = acked = 0
        while acked < count:
            while sent < count and sent - acked < window:
                agent.send({"type": "message", "ref": f"{prefix}{sent}", "conversation": conv,
                            "client_msg_id": f"{prefix}{sent}", "body": BODY})
                sent += 1
            ack = yield agent.next_frame("ack")
            self.assertEqual(ack["ref"], f"{prefix}{acked}")
            acked += 1
            if each is not None:
                each()
        return acked

    @defer.inlineCallbacks
    def flood_a_stalled_peer(self, cust: Any, agent: Any, conv: str) -> Any:
        victim = self.server_side("cust")
        # Small kernel buffers on both ends so the test needs kilobytes, not
        # megabytes, before the server's own buffer starts to fill.
        tcp_socket(victim.transport).setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        tcp_socket(cust.transport).setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        tcp_of(cust.transport).pauseProducing()  # the customer stops reading
        gone: defer.Deferred[None] = defer.Deferred()
        factory = self.server.server.get_chat_factory()
        factory.lost_waiters.setdefault(victim, []).append(gone)
        peak = [0]

        def sample() -> None:
            if victim.transport is not None and victim in factory.live:
                peak[0] = max(peak[0], server_buffered(victim.transport))

        # 400 x ~4 KB = 1.6 MB at a peer whose buffers hold a few KB.
        yield self.send_acked(agent, conv, "f", 400, each=sample)
        yield gone.addTimeout(TIMEOUT, self.server.reactor)
        self.assertTrue(victim.slow_consumer)
        frame_bytes = len(BODY.encode()) + 1024  # one message frame, JSON, WebSocket (and TLS) headers included
        self.assertLessEqual(peak[0], LIMIT + frame_bytes)
        # The sender is still served after its peer was dropped.
        yield self.send_acked(agent, conv, "g", 20)
        metrics = self.server.server.get_metrics().registry
        self.assertEqual(metrics.get_sample_value("websocket_slow_consumer_disconnects_total",
                                                  {"trigger": "buffer"}), 1.0)
        tcp_of(cust.transport).resumeProducing()
        yield cust.closed.addTimeout(TIMEOUT, self.server.reactor)

class SlowConsumerTests(SlowConsumerBase):
    @defer.inlineCallbacks
    def test_a_peer_that_does_not_read_is_closed_and_its_buffer_stays_bounded(self) -> Any:
        """A flood at a customer that never reads: the server closes it (1013, then abort) with at most
        send_buffer_limit plus one frame buffered for it, counts it, and the sender's acks keep flowing."""
        cust, agent, conv = yield self.pair()
        yield self.flood_a_stalled_peer(cust, agent, conv)

    @defer.inlineCallbacks
    def test_a_peer_that_stops_draining_is_closed_after_send_timeout(self) -> Any:
        """Under the byte limit, a peer whose queue is not drained for send_timeout is closed too."""
        factory = self.server.server.get_chat_factory()
        factory.send_buffer_limit = 64 * 1024 * 1024
        factory.send_timeout = 0.5
        cust, agent, conv = yield self.pair()
        victim = self.server_side("cust")
        victim.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        cust.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        cust.transport.pauseProducing()  # the customer stops reading
        gone: defer.Deferred[None] = defer.Deferred()
        factory.lost_waiters.setdefault(victim, []).append(gone)
        yield self.send_acked(agent, conv, "f", 60)
        yield gone.addTimeout(TIMEOUT, self.server.reactor)
        metrics = self.server.server.get_metrics().registry
        self.assertEqual(metrics.get_sample_value("websocket_slow_consumer_disconnects_total",
                                                  {"trigger": "timeout"}), 1.0)
        cust.transport.resumeProducing()
        yield cust.closed.addTimeout(TIMEOUT, self.server.reactor)

    @defer.inlineCallbacks
    def test_a_reading_peer_gets_everything(self) -> Any:
        """A peer that reads receives every message of the same flood, in order, and stays connected."""
        cust, agent, conv = yield self.pair()
        self.addCleanup(close_client, cust)
        yield self.send_acked(agent, conv, "f", 200)
        for i in range(200):
            got = yield cust.next_frame("message", lambda f: f.get("kind") != "event")
            self.assertEqual(got["client_msg_id"], f"f{i}")
        self.assertFalse(self.server_side("cust").slow_consumer)


class TlsSlowConsumerTests(SlowConsumerBase):
    """The same bound on a wss:// listener (the TLS wrapper sits between the protocol and the socket)."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        from tests.test_websocket import self_signed

        directory = self.mktemp()
        os.makedirs(directory)
        key, cert, pem = self_signed(directory)
        self.server = yield start_server(
            self,
            server={"listen": [f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"]},
            websocket={"send_buffer_limit": LIMIT, "send_timeout": 30.0, "close_handshake_timeout": 0.5,
                       "deflate": False},
            chat={"frame_rate": 100000.0, "frame_burst": 100000},
        )
        self.tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(pem))

    @defer.inlineCallbacks
    def test_a_peer_that_does_not_read_over_tls_is_closed_and_its_buffer_stays_bounded(self) -> Any:
        """Over wss:// too, a customer that never reads is closed with at most send_buffer_limit plus one
        frame held for it (TLS's aggregated writes included), and the sender's acks keep flowing."""
        cust, agent, conv = yield self.pair()
        yield self.flood_a_stalled_peer(cust, agent, conv)


class RequestDeadlineTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(
            self, server={"request_timeout": 0.5}, websocket={"open_handshake_timeout": 0.7})

    @defer.inlineCallbacks
    def test_silent_and_slowloris_connections_are_closed_at_the_deadline(self) -> Any:
        """50 silent TCP connections and a client trickling a WebSocket handshake byte by byte are all
        closed after the configured timeouts (408), long before Twisted's 12-hour idle timer."""
        started = time.monotonic()
        silent = []
        for _ in range(50):
            silent.append((yield raw_connect(self.server.port)))
        loris = yield raw_connect(self.server.port)
        request = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        sent = [0]

        def drip() -> None:
            if sent[0] < len(request) and loris.transport.connected:
                loris.transport.write(request[sent[0]:sent[0] + 1])
                sent[0] += 1

        dripping = task.LoopingCall(drip)
        dripping.start(0.05)
        self.addCleanup(lambda: dripping.running and dripping.stop())
        closed_at = yield defer.gatherResults([c.lost for c in silent + [loris]]).addTimeout(
            TIMEOUT, self.server.reactor)
        dripping.stop()
        for conn in silent + [loris]:
            self.assertTrue(conn.data.startswith(b"HTTP/1.1 408 "), conn.data[:40])
            self.assertIn(b'"code":"timeout"', conn.data)
        self.assertLess(sent[0], len(request))  # the handshake was cut while still arriving
        self.assertGreaterEqual(min(closed_at) - started, 0.5)
        self.assertLess(max(closed_at) - started, 0.7 + REFUSAL_GRACE + 3.0)
        metrics = self.server.server.get_metrics().registry
        self.assertEqual(metrics.get_sample_value("http_refusals_total", {"reason": "request_timeout"}), 51.0)

    @defer.inlineCallbacks
    def test_oversized_body_is_refused_before_it_is_sent(self) -> Any:
        """POST /api/v1/login announcing 50 MB gets 413 (JSON) without sending one byte of it."""
        conn = yield raw_connect(self.server.port)
        conn.transport.write(b"POST /api/v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 52428800\r\n\r\n")
        yield conn.lost.addTimeout(TIMEOUT, self.server.reactor)
        self.assertTrue(conn.data.startswith(b"HTTP/1.1 413 "), conn.data[:40])
        self.assertIn(b'{"error":{"code":"too_large"', conn.data)

    @defer.inlineCallbacks
    def test_oversized_chunked_body_is_refused_while_it_arrives(self) -> Any:
        """A chunked body to a small endpoint is answered 413 once it passes the route's limit."""
        conn = yield raw_connect(self.server.port)
        conn.transport.write(b"POST /api/v1/teams HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"1000\r\n" + b" " * 4096 + b"\r\n"
        for _ in range(8):  # 32 KiB, twice the console endpoints' limit
            conn.transport.write(chunk)
        yield conn.lost.addTimeout(TIMEOUT, self.server.reactor)
        self.assertTrue(conn.data.startswith(b"HTTP/1.1 413 "), conn.data[:40])
