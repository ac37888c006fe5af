"""Per-connection and per-message costs that only debug logging needed
(issue 13): Autobahn's debug arguments, and the connection count."""

from __future__ import annotations

import pprint
from typing import Any

import autobahn.util
import autobahn.websocket.protocol as ab_protocol
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from supportchat.auth import Principal
from supportchat.handlers.connections import ClientSession, ConnectionRegistry
from supportchat.ws import quiet_debug
from tests.support import close_client, connect, start_server, token


class QuietDebugTests(unittest.TestCase):
    def test_stand_ins_format_like_the_real_helpers(self) -> None:
        """After install, Autobahn's debug helpers give the same text as the
        real ones when a log line is formatted (str and format)."""
        quiet_debug.install()
        quiet_debug.install()  # idempotent: not a stand-in of a stand-in
        value = {"b": [1, 2, 3], "a": "x" * 100}
        self.assertEqual(str(ab_protocol.pformat(value)), pprint.pformat(value))
        self.assertEqual(format(ab_protocol.hlval(42)), autobahn.util.hlval(42))
        self.assertEqual(f"{ab_protocol.hltype(self.test_stand_ins_format_like_the_real_helpers)}",
                         autobahn.util.hltype(self.test_stand_ins_format_like_the_real_helpers))

    @inlineCallbacks
    def test_a_connection_and_a_message_format_nothing(self) -> Any:
        """Opening a chat connection and exchanging a message runs neither
        Autobahn's colouring helper nor the pretty-printer (debug logging is
        off, so nothing would be shown), and still works end to end."""
        calls = {"hl": 0, "pformat": 0}
        real_hl, real_pformat = autobahn.util.hl, pprint.PrettyPrinter.pformat

        def hl(*a: Any, **kw: Any) -> Any:
            calls["hl"] += 1
            return real_hl(*a, **kw)

        def pformat(printer: Any, obj: Any) -> Any:
            calls["pformat"] += 1
            return real_pformat(printer, obj)

        server = yield start_server(self)
        self.patch(autobahn.util, "hl", hl)
        self.patch(pprint.PrettyPrinter, "pformat", pformat)
        client = yield connect(server.port, token("cust1"))
        client.send({"type": "start", "ref": "s"})
        conv = (yield client.next_frame("conversation"))["conversation"]["id"]
        client.send({"type": "message", "ref": "m", "conversation": conv, "client_msg_id": "k", "body": "hi"})
        ack = yield client.next_frame("ack")
        self.assertEqual(ack["ref"], "m")
        yield close_client(client)
        self.assertEqual(calls, {"hl": 0, "pformat": 0})


class RegistryCountTests(unittest.TestCase):
    def test_count_follows_adds_and_removes(self) -> None:
        """The registry's size (the connections gauge) is kept, not
        recounted: adding a session twice counts once, removing one that is
        not there changes nothing, and the gauge hears every change."""
        seen: list[int] = []
        registry = ConnectionRegistry(on_change=seen.append)
        a = ClientSession(Principal("u1", "customer"), None)
        b = ClientSession(Principal("u1", "customer"), None)
        c = ClientSession(Principal("agent1", "agent"), None)
        for s in (a, a, b, c):
            registry.add(s)
        self.assertEqual(len(registry), 3)
        registry.remove(b)
        registry.remove(b)
        self.assertEqual(len(registry), 2)
        self.assertEqual(len(registry.sessions()), 2)
        self.assertEqual(seen, [1, 1, 2, 3, 2, 2])
