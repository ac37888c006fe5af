"""End to end over real sockets: a real server, a real Autobahn client,
real SQLite. The handshake guard, the wire protocol, the limits."""

from __future__ import annotations

import gc
import json
import os
import re
import time
import zlib
from typing import Any

import jwt
from twisted.internet.defer import inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from tests.support import (
    SECRET, close_client, connect, free_port, http_client, is_event, raw_handshake, start_server, token,
)


class HandshakeTests(unittest.TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self)

    @inlineCallbacks
    def assertRefused(self, status: int, code: str, headers: dict[str, str] | None = None, path: str = "/ws") -> Any:
        got, hdrs, body = yield raw_handshake(self.server.port, path, headers)
        self.assertEqual(got, status)
        self.assertEqual(hdrs.get("content-type"), "application/json")
        self.assertEqual(json.loads(body)["error"]["code"], code)
        return hdrs

    @inlineCallbacks
    def test_no_token_is_401(self) -> Any:
        """Without a token the upgrade is refused with 401 before any WebSocket exists."""
        hdrs = yield self.assertRefused(401, "unauthorized")
        self.assertEqual(hdrs.get("www-authenticate"), "Bearer")

    @inlineCallbacks
    def test_bad_tokens_are_401(self) -> Any:
        """Expired, wrongly signed, unsigned (alg none) and wrong-audience tokens are all refused."""
        now = time.time()
        expired = token("u", now=now - 7200, ttl=60)
        wrong_key = jwt.encode({"sub": "u", "role": "customer", "exp": now + 60}, "another-secret-" + "y" * 40, algorithm="HS256")
        unsigned = jwt.encode({"sub": "u", "role": "customer", "exp": now + 60}, None, algorithm="none")
        for bad in (expired, wrong_key, unsigned, "not-a-jwt"):
            yield self.assertRefused(401, "unauthorized", {"Authorization": f"Bearer {bad}"})

    @inlineCallbacks
    def test_wrong_audience_is_401(self) -> Any:
        """When an audience is configured, a token for another audience is refused."""
        server = yield start_server(self, auth={"audience": "supportchat"})
        ok = jwt.encode({"sub": "u", "role": "customer", "exp": time.time() + 60, "aud": "supportchat"}, SECRET, algorithm="HS256")
        bad = jwt.encode({"sub": "u", "role": "customer", "exp": time.time() + 60, "aud": "other"}, SECRET, algorithm="HS256")
        status, _, body = yield raw_handshake(server.port, headers={"Authorization": f"Bearer {bad}"})
        self.assertEqual(status, 401)
        client = yield connect(server.port, ok)
        yield close_client(client)

    @inlineCallbacks
    def test_origin_allow_list(self) -> Any:
        """Browsers from a foreign Origin get 403; the server's own origin and no Origin are allowed."""
        port = free_port()
        server = yield start_server(self, server={"listen": [f"tcp:{port}:interface=127.0.0.1"]})
        good = token("u")
        status, _, _ = yield raw_handshake(server.port, headers={"Authorization": f"Bearer {good}", "Origin": "http://evil.example"})
        self.assertEqual(status, 403)
        for own in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
            client = yield connect(server.port, good, origin=own)
            yield close_client(client)
        client = yield connect(server.port, good)
        yield close_client(client)

    @inlineCallbacks
    def test_configured_origin_is_allowed(self) -> Any:
        """An origin from allowed_origins may connect (default ports made explicit)."""
        server = yield start_server(self, websocket={"allowed_origins": ["https://shop.example"]})
        client = yield connect(server.port, token("u"), origin="https://shop.example")
        yield close_client(client)
        status, _, _ = yield raw_handshake(server.port, headers={"Authorization": f"Bearer {token('u')}", "Origin": "https://shop.example:8443"})
        self.assertEqual(status, 403)

    @inlineCallbacks
    def test_handshake_flood_is_429(self) -> Any:
        """Past the per-IP burst, handshakes get 429 with Retry-After."""
        server = yield start_server(self, auth={"handshake_rate": 1.0, "handshake_burst": 3})
        statuses = []
        for _ in range(5):
            status, hdrs, _ = yield raw_handshake(server.port)
            statuses.append(status)
        self.assertEqual(statuses, [401, 401, 401, 429, 429])
        self.assertIn("retry-after", hdrs)

    @inlineCallbacks
    def test_token_by_query_and_subprotocol(self) -> Any:
        """The token may come as access_token or as a bearer.<jwt> subprotocol; only supportchat.v1 is selected."""
        t = token("qp")
        client = yield connect(self.server.port, query=f"?access_token={t}")
        self.assertEqual(client.frames[0]["user"]["id"], "qp")
        yield close_client(client)
        client = yield connect(self.server.port, protocols=["supportchat.v1", f"bearer.{t}"])
        self.assertEqual(client.websocket_protocol_in_use, "supportchat.v1")
        yield close_client(client)
        yield self.assertRefused(400, "bad_request", {"Sec-WebSocket-Protocol": f"bearer.{t}"})

    @inlineCallbacks
    def test_tokens_never_reach_the_log(self) -> Any:
        """Neither a query-string token nor a message body appears in any log line."""
        lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            from twisted.logger import formatEvent

            lines.append(formatEvent(event) + repr(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        t = token("secretive")
        client = yield connect(self.server.port, query=f"?access_token={t}")
        client.send({"type": "start", "ref": 1})
        conv = (yield client.next_frame("conversation"))["conversation"]["id"]
        client.send({"type": "message", "ref": 2, "conversation": conv, "client_msg_id": "k", "body": "my card is 4111-1111"})
        yield client.next_frame("ack")
        yield close_client(client)
        yield raw_handshake(self.server.port, path=f"/ws?access_token={t}x")
        joined = "\n".join(lines)
        self.assertNotIn(t, joined)
        self.assertNotIn("4111-1111", joined)


class UpgradeMemoryTests(unittest.TestCase):
    @inlineCallbacks
    def test_http_upgrade_state_is_released(self) -> Any:
        """Once a WebSocket is open nothing keeps its HTTP channel and request alive (no
        idle timer, not the transport's producer) and Autobahn's handshake copies are gone:
        idle connections do not carry them for their whole life; nor a copy of every option."""
        from twisted.internet import reactor
        from twisted.web.http import HTTPChannel, Request

        server = yield start_server(self)
        client = yield connect(server.port, token("idle"))
        self.addCleanup(close_client, client)
        [proto] = [p for p in server.server.get_chat_factory().live if p.principal and p.principal.user_id == "idle"]
        transport = proto.transport
        self.assertIsNone(transport.producer)
        gc.collect()
        channels = [o for o in gc.get_objects()
                    if isinstance(o, HTTPChannel) and getattr(o, "_networkProducer", None) is transport]
        self.assertEqual(channels, [])
        self.assertEqual([o for o in gc.get_objects() if isinstance(o, Request) and o.channel is None and
                          o.uri.startswith(b"/ws")], [])
        self.assertEqual([c for c in reactor.getDelayedCalls()
                          if isinstance(getattr(c.func, "__self__", None), HTTPChannel)
                          and c.func.__self__._networkProducer is transport], [])
        self.assertEqual((proto.http_headers, proto.http_request_data, proto.http_response_data), (None, None, None))
        # The factory's options are shared through the protocol class, not copied per connection.
        self.assertNotIn("maxMessagePayloadSize", vars(proto))
        self.assertEqual(proto.maxMessagePayloadSize, 65536)
        client.send({"type": "ping", "ref": "still-works"})
        self.assertEqual((yield client.next_frame("pong"))["ref"], "still-works")


def self_signed(directory: str) -> tuple[str, str, bytes]:
    """A key and a self-signed certificate for ``localhost`` (files), and the PEM."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_path, cert_path = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(pem)
    return key_path, cert_path, pem


class TlsTests(unittest.TestCase):
    @inlineCallbacks
    def test_wss_listener_serves_chat_and_releases_the_upgrade(self) -> Any:
        """`--listen ssl:...` (pyOpenSSL, service-identity) serves wss: a verified client
        chats over it, and the HTTP upgrade state is released as on plain TCP."""
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        directory = self.mktemp()
        os.makedirs(directory)
        key, cert, pem = self_signed(directory)
        server = yield start_server(self, server={"listen": [
            f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"]})
        tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(pem))
        client = yield connect(server.port, token("secure"), tls=tls)
        self.addCleanup(close_client, client)
        client.send({"type": "start", "ref": "s"})
        conv = (yield client.next_frame("conversation"))["conversation"]["id"]
        client.send({"type": "message", "ref": "m", "conversation": conv, "client_msg_id": "t1", "body": "over TLS"})
        self.assertEqual((yield client.next_frame("ack"))["client_msg_id"], "t1")
        [proto] = [p for p in server.server.get_chat_factory().live if p.principal and p.principal.user_id == "secure"]
        self.assertIsNone(proto.transport._producer)  # TLS held the HTTP channel in a producer membrane


class ProtocolTests(unittest.TestCase):
    def server_sections(self) -> dict[str, Any]:
        """Config sections for the server (the engine variants in
        tests/test_engines_e2e.py give a database URL)."""
        return {}

    @inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self, **self.server_sections())

    @inlineCallbacks
    def pair(self) -> Any:
        cust = yield connect(self.server.port, token("cust"))
        agent = yield connect(self.server.port, token("agent", "agent", name="Ann"))
        self.addCleanup(close_client, cust)
        self.addCleanup(close_client, agent)
        cust.send({"type": "start", "ref": "s"})
        conv = (yield cust.next_frame("conversation"))["conversation"]["id"]
        agent.send({"type": "accept", "ref": "a", "conversation": conv})
        yield agent.next_frame("conversation", lambda f: f.get("ref") == "a")
        yield cust.next_event("joined")
        if not any(is_event(f, "joined") for f in agent.frames):  # it may come before or after the reply
            yield agent.next_event("joined")
        return cust, agent, conv

    @inlineCallbacks
    def test_conversation_round_trip_with_deflate(self) -> Any:
        """Customer and agent exchange messages over permessage-deflate; acks and deliveries match."""
        cust, agent, conv = yield self.pair()
        self.assertIsNotNone(cust._perMessageCompress)
        long_body = "I need help with order 12345. " * 60  # > 1 KB: sent compressed
        for i, body in enumerate(["hello", long_body]):
            cust.send({"type": "message", "ref": i, "conversation": conv, "client_msg_id": f"c{i}", "body": body})
            ack = yield cust.next_frame("ack")
            got = yield agent.next_frame("message")
            self.assertEqual((got["msg_id"], got["seq"], got["body"]), (ack["msg_id"], ack["seq"], body))
        agent.send({"type": "message", "ref": 9, "conversation": conv, "client_msg_id": "a1", "body": "hi!"})
        got = yield cust.next_frame("message")
        self.assertEqual(got["sender"], {"id": "agent", "role": "agent", "name": "Ann"})  # staff messages carry the name
        self.assertEqual(got["seq"], ack["seq"] + 1)

    @inlineCallbacks
    def test_bad_frames_get_errors_and_connection_stays(self) -> Any:
        """Malformed JSON, unknown type, missing fields and over-long bodies get error frames; the socket stays usable."""
        cust, agent, conv = yield self.pair()
        cust.send("{not json")
        self.assertEqual((yield cust.next_frame("error"))["code"], "bad_request")
        cust.send({"type": "fly", "ref": 1})
        self.assertEqual((yield cust.next_frame("error"))["ref"], 1)
        cust.send({"type": "message", "ref": 2, "conversation": conv})
        self.assertEqual((yield cust.next_frame("error"))["code"], "bad_request")
        cust.send({"type": "message", "ref": 3, "conversation": conv, "client_msg_id": "k", "body": "x" * 4001})
        err = yield cust.next_frame("error")
        self.assertEqual((err["code"], err["ref"]), ("too_large", 3))
        cust.send(b"\x00\x01")
        cust.sendMessage(b"\x00\x01", isBinary=True)
        self.assertEqual((yield cust.next_frame("error"))["code"], "bad_request")
        cust.send("ping")
        self.assertEqual((yield cust.next_frame("pong")), "pong")
        cust.send({"type": "ping", "ref": "p"})
        self.assertEqual((yield cust.next_frame("pong"))["ref"], "p")

    @inlineCallbacks
    def test_oversized_message_closes_1009(self) -> Any:
        """A 70 KB message closes the connection with 1009."""
        cust = yield connect(self.server.port, token("big"), deflate=False)
        cust.send(json.dumps({"type": "message", "body": "x" * 70_000}))
        _, code, _ = yield cust.closed
        self.assertEqual(code, 1009)

    @inlineCallbacks
    def test_compression_bomb_closes_1009(self) -> Any:
        """A small compressed frame that inflates past the limit closes with 1009."""
        cust = yield connect(self.server.port, token("bomb"), deflate=True)
        self.assertEqual(len(zlib.compress(b"a" * 20_000_000)) < 64 * 1024, True)
        cust.sendMessage(b"a" * 20_000_000)
        _, code, _ = yield cust.closed
        self.assertEqual(code, 1009)

    @inlineCallbacks
    def test_invalid_utf8_closes_1007(self) -> Any:
        """A text frame that is not UTF-8 closes with 1007."""
        cust = yield connect(self.server.port, token("utf"), deflate=False)
        cust.sendMessage(b'{"type":"ping","x":"\xff\xfe"}', isBinary=False)
        _, code, _ = yield cust.closed
        self.assertEqual(code, 1007)

    @inlineCallbacks
    def test_duplicate_on_new_connection(self) -> Any:
        """A client that resends after reconnecting gets the same ack; one message stored, one delivery."""
        cust, agent, conv = yield self.pair()
        frame = {"type": "message", "ref": 1, "conversation": conv, "client_msg_id": "retry-me", "body": "once"}
        cust.send(frame)
        first = yield cust.next_frame("ack")
        yield close_client(cust)
        again = yield connect(self.server.port, token("cust"))
        self.addCleanup(close_client, again)
        again.send(frame)
        again.send(frame)
        second = yield again.next_frame("ack")
        third = yield again.next_frame("ack")
        for ack in (second, third):
            self.assertEqual((ack["msg_id"], ack["seq"], ack["ts"]), (first["msg_id"], first["seq"], first["ts"]))
        again.send({"type": "sync", "ref": "s", "conversation": conv, "after_seq": 0})
        history = yield again.next_frame("history")
        messages = history["messages"]
        self.assertEqual([m["client_msg_id"] for m in messages if m["kind"] != "event"], ["retry-me"])
        self.assertEqual([m["event"]["name"] for m in messages if m["kind"] == "event"], ["created", "queued", "joined"])
        self.assertEqual([m["seq"] for m in messages], list(range(1, len(messages) + 1)))
        agent.send({"type": "ping", "ref": "barrier"})
        yield agent.next_frame("pong")
        self.assertEqual(len([m for m in agent.of_type("message") if m["kind"] == "text"]), 1)

    @inlineCallbacks
    def test_offline_participant_syncs_exactly_what_was_missed(self) -> Any:
        """After a disconnect, sync from the last seen seq returns exactly the missed messages, in order, and hello shows the unread count."""
        cust, agent, conv = yield self.pair()
        cust.send({"type": "message", "ref": 1, "conversation": conv, "client_msg_id": "c1", "body": "before"})
        ack = yield cust.next_frame("ack")
        last_seen = ack["seq"]
        yield close_client(cust)
        sent = []
        for i in range(25):
            agent.send({"type": "message", "ref": i, "conversation": conv, "client_msg_id": f"a{i}", "body": f"while away {i}"})
            sent.append((yield agent.next_frame("ack"))["seq"])
        back = yield connect(self.server.port, token("cust"))
        self.addCleanup(close_client, back)
        [state] = back.frames[0]["conversations"]
        self.assertEqual((state["unread"], state["last_seq"]), (25, sent[-1]))
        got = []
        after = last_seen
        while True:
            back.send({"type": "sync", "ref": after, "conversation": conv, "after_seq": after, "limit": 10})
            page = yield back.next_frame("history")
            got.extend(page["messages"])
            if not page["has_more"]:
                break
            after = page["messages"][-1]["seq"]
        self.assertEqual([m["seq"] for m in got], sent)
        self.assertEqual([m["body"] for m in got], [f"while away {i}" for i in range(25)])

    @inlineCallbacks
    def test_typing_and_read_receipts(self) -> Any:
        """Typing and read events reach the other participant over the wire; a sync that
        catches up tells the others' read positions."""
        cust, agent, conv = yield self.pair()
        cust.send({"type": "typing", "conversation": conv})
        typing = yield agent.next_frame("typing")
        self.assertEqual(typing["user_id"], "cust")
        agent.send({"type": "read", "ref": 1, "conversation": conv, "seq": 1})
        mine = yield agent.next_frame("read")
        self.assertEqual(mine["ref"], 1)
        theirs = yield cust.next_frame("read")
        self.assertEqual((theirs["user_id"], theirs["seq"]), ("agent", 1))
        cust.send({"type": "sync", "ref": "s", "conversation": conv, "after_seq": 0})
        history = yield cust.next_frame("history")
        self.assertEqual(history["read"], [{"user_id": "agent", "seq": 1}])  # for Seen marks after a reload

    @inlineCallbacks
    def test_metrics_count_connections_and_messages(self) -> Any:
        """/metrics shows active connections, messages, rejections and the ack latency histogram."""
        treq = http_client()

        cust, agent, conv = yield self.pair()
        cust.send({"type": "message", "ref": 1, "conversation": conv, "client_msg_id": "m", "body": "count me"})
        yield cust.next_frame("ack")
        yield agent.next_frame("message")
        yield raw_handshake(self.server.port)
        response = yield treq.get(f"http://127.0.0.1:{self.server.port}/metrics")
        text = (yield response.text())
        self.assertIn("websocket_connections_active 2.0", text)
        self.assertIn("messages_received_total 1.0", text)
        self.assertIn("messages_acknowledged_total 1.0", text)
        self.assertIn('handshake_rejections_total{reason="no_token"} 1.0', text)
        self.assertIn("message_ack_latency_seconds_count 1.0", text)
        # The per-hop latency budget and the reactor watchdog are exported.
        for name in ("frame_parse_seconds", "message_append_seconds", "append_queue_seconds",
                     "append_commit_seconds", "message_publish_seconds", "message_deliver_seconds"):
            count = re.search(rf"^{name}_count (\S+)$", text, re.M)
            assert count is not None, name
            self.assertGreaterEqual(float(count.group(1)), 1.0, name)
        self.assertIn("reactor_lag_seconds_count", text)


class HttpTests(unittest.TestCase):
    @inlineCallbacks
    def test_health_ready_visitors_and_json_errors(self) -> Any:
        """healthz and readyz answer, visitors get working tokens, unknown API paths are JSON 404s."""
        treq = http_client()

        server = yield start_server(self)
        base = f"http://127.0.0.1:{server.port}"
        r = yield treq.get(base + "/healthz")
        self.assertEqual((r.code, (yield r.json())), (200, {"status": "ok"}))
        r = yield treq.get(base + "/readyz")
        body = yield r.json()
        self.assertEqual((r.code, body["ready"]), (200, True))
        r = yield treq.post(base + "/api/v1/visitors")
        visitor = yield r.json()
        self.assertEqual(r.code, 201)
        client = yield connect(server.port, visitor["token"])
        self.assertEqual(client.frames[0]["user"], {"id": visitor["user_id"], "role": "customer"})
        yield close_client(client)
        for path in ("/api/v1/nothing-here", "/api", "/api/v1", "/nope"):  # "/" is the demo page (tests/test_web.py)
            r = yield treq.get(base + path)
            self.assertEqual((r.code, (yield r.json())["error"]["code"]), (404, "not_found"), path)
        r = yield treq.get(base + "/api/v1/visitors")
        self.assertEqual((r.code, (yield r.json())["error"]["code"]), (405, "bad_request"))

    @inlineCallbacks
    def test_visitors_can_be_disabled(self) -> Any:
        """With visitors_enabled off, no anonymous token is handed out."""
        treq = http_client()

        server = yield start_server(self, auth={"visitors_enabled": False})
        r = yield treq.post(f"http://127.0.0.1:{server.port}/api/v1/visitors")
        self.assertEqual(r.code, 404)
        yield r.json()


class TesteeTests(unittest.TestCase):
    @inlineCallbacks
    def test_testee_echoes_large_messages_without_auth_when_enabled(self) -> Any:
        """The conformance echo endpoint, when configured, echoes (deflated) messages beyond 64 KiB without a token."""
        server = yield start_server(self, websocket={"testee_path": "/ws-testee"})
        client = yield connect(server.port, path="/ws-testee", wait_hello=False)
        client.sendMessage(b"y" * 1_000_000)
        echoed = yield client.next_frame()
        self.assertEqual(echoed, "y" * 1_000_000)
        self.assertIsNotNone(client._perMessageCompress)
        yield close_client(client)

    @inlineCallbacks
    def test_testee_is_off_by_default(self) -> Any:
        """Without testee_path there is no echo endpoint."""
        server = yield start_server(self)
        status, _, _ = yield raw_handshake(server.port, path="/ws-testee")
        self.assertEqual(status, 404)
