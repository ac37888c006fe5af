"""The Redis hot path's round trips: the APPEND script fans a message out to
the other nodes in the same round trip, and presence writes are coalesced
(real Redis: the shared private test server)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from supportchat.bus.interfaces import Delivery
from supportchat.storage.models import AppendRequest, customer_key
from supportchat.storage.sql import SqlConversationStore
from tests.test_storage_contract import threadless_sqlite


class Channels:
    """A subscriber connection on every node channel, recording what arrives."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def on_message(self, channel: str, message: str) -> None:
        self.got.append((channel, json.loads(message)))
        for n, d in list(self._waiting):
            if len(self.got) >= n:
                self._waiting.remove((n, d))
                d.callback(None)

    def wait_for(self, n: int) -> "Deferred[None]":
        d: Deferred[None] = Deferred()
        if len(self.got) >= n:
            d.callback(None)
        else:
            self._waiting.append((n, d))
        return d


class RedisBase(unittest.TestCase):
    """A fresh shared private Redis, a subscriber on node channels, SQLite."""

    @inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor

        from supportchat.redis.connection import RedisClient
        from tests.redis_support import connected_client, shared

        server = shared()
        server.cli("FLUSHALL")
        self.redis = yield connected_client(self, server.url)
        self.channels = Channels()
        subscribed: Deferred[None] = Deferred()

        def hook(proto: Any) -> Any:
            d = proto.subscribe(["sc:node:node-a", "sc:node:node-b", "sc:node:node-c"])
            d.addCallback(lambda _: subscribed.called or subscribed.callback(None))
            return d

        sub = RedisClient(reactor, server.url, subscriber=True, on_connect=hook, on_message=self.channels.on_message)
        sub.service.startService()
        self.addCleanup(sub.service.stopService)
        yield subscribed
        self.sql = SqlConversationStore(threadless_sqlite(self))

    def store(self, **kwargs: Any) -> Any:
        from twisted.internet import reactor

        from supportchat.redis.store import RedisChatStore

        return RedisChatStore(reactor, self.redis, self.sql, **kwargs)

    def presence(self, node: str, clock: Any = None) -> Any:
        from twisted.internet import reactor

        from supportchat.redis.presence import RedisPresenceStore

        return RedisPresenceStore(clock or reactor, self.redis, 35, node)

    @inlineCallbacks
    def conversation(self) -> Any:
        conv, _ = yield self.sql.open_conversation(customer_key("cu"), 1.0)
        yield self.sql.add_participant(conv.id, "ag", "agent", 2.0)
        return conv.id

    def text(self, conv: str, body: str, key: str, data: Any = None) -> AppendRequest:
        return AppendRequest(conversation_id=conv, sender_id=customer_key("cu"), sender_role="customer",
                             client_msg_id=key, kind="text", body=body, ts=3.0, data=data)


class FanoutTests(RedisBase):
    """Fan-out in the append's round trip, stream fields, presence batches."""

    @inlineCallbacks
    def test_the_append_publishes_to_the_other_nodes_in_its_round_trip(self) -> Any:
        """With a node id, the APPEND script publishes the delivery to each
        other node where a participant has a live connection (once per
        node), never to the sender's own node or a node whose presence has
        lapsed; the delivery is what the bus would publish (the stored
        message's frame, every participant), and the result says so."""
        conv = yield self.conversation()
        lapsed = Clock()  # node-c's entry expired long ago
        yield gatherResults([
            self.presence("node-a").touch(customer_key("cu"), "s1"),
            self.presence("node-b").touch("ag", "s2"),
            self.presence("node-b").touch("ag", "s3"),
            self.presence("node-c", lapsed).touch("ag", "s4"),
        ])
        store = self.store(node_id="node-a")
        first = yield store.append(self.text(conv, "héllo \"there\"", "k1"))
        self.assertTrue(first.fanned_out)
        second = yield store.append(self.text(conv, "again", "k2"))
        yield self.channels.wait_for(2)
        self.assertEqual([c for c, _ in self.channels.got], ["sc:node:node-b", "sc:node:node-b"])
        for (_, payload), result in zip(self.channels.got, (first, second)):
            self.assertEqual(payload["origin"], "node-a")
            delivery = Delivery.from_json(payload)
            self.assertEqual(delivery.frame, result.message.to_wire())
            self.assertEqual(sorted(delivery.user_ids), sorted(p.user_id for p in result.participants))
        self.assertEqual(self.channels.got[0][1]["frame"]["body"], "héllo \"there\"")

    @inlineCallbacks
    def test_duplicates_attachments_and_no_node_id_are_left_to_the_bus(self) -> Any:
        """A duplicate is not fanned out again; a message with attachments
        (its frame gets signed links per node) and a store without a node
        id leave the fan-out to the bus: nothing is published by the
        script, and the result says so."""
        conv = yield self.conversation()
        yield self.presence("node-b").touch("ag", "s2")
        store = self.store(node_id="node-a")
        yield store.append(self.text(conv, "one", "k1"))
        again = yield store.append(self.text(conv, "one", "k1"))
        self.assertTrue(again.duplicate)
        self.assertFalse(again.fanned_out)
        files = yield store.append(self.text(conv, "", "k2", data={"attachments": [{"id": "a1"}]}))
        self.assertFalse(files.fanned_out)
        plain = yield self.store().append(self.text(conv, "no node", "k3"))
        self.assertFalse(plain.fanned_out)
        last = yield store.append(self.text(conv, "last", "k4"))
        yield self.channels.wait_for(2)
        self.assertEqual([p["frame"]["body"] for _, p in self.channels.got], ["one", "last"])
        self.assertEqual(last.message.seq, 4)

    @inlineCallbacks
    def test_stream_entries_name_conversation_role_and_kind(self) -> Any:
        """Each stream entry carries c, r and k beside the message, so
        consumers can skip it without decoding the JSON."""
        conv = yield self.conversation()
        yield self.store(node_id="node-a").append(self.text(conv, "hi", "k1"))
        [[_, flat]] = yield self.redis.execute("XRANGE", "sc:stream", "-", "+")
        fields = dict(zip(flat[::2], flat[1::2]))
        self.assertEqual((fields["c"], fields["r"], fields["k"]), (conv, "customer", "text"))
        self.assertEqual(json.loads(fields["m"])["body"], "hi")

    @inlineCallbacks
    def test_presence_writes_made_together_go_in_one_script(self) -> Any:
        """Touches made while one is in flight wait and go together, in
        order: fifty touches cost two round trips, and a touch followed by a
        remove of the same connection leaves no entry."""
        presence = self.presence("node-a")
        users = [f"u{i}" for i in range(50)]
        yield gatherResults([presence.touch(u, f"s-{u}") for u in users])
        self.assertEqual(presence.batches, 2)
        found = yield gatherResults([presence.nodes_for(u) for u in users])
        self.assertEqual(found, [{"node-a"}] * 50)
        yield gatherResults([presence.touch("x", "s1"), presence.touch("y", "s2"), presence.remove("y", "s2")])
        self.assertEqual((yield presence.nodes_for("x")), {"node-a"})
        self.assertEqual((yield presence.nodes_for("y")), set())
        self.assertEqual((yield presence.online_users())[:2], ["u0", "u1"])


class ReplyDeadlineTests(unittest.TestCase):
    """The command connection's liveness deadline (redis/connection.py
    _Protocol), on a fake transport and clock."""

    def connect(self) -> tuple[Any, Any, Clock]:
        from twisted.internet.testing import StringTransport

        from supportchat.redis.connection import _Protocol

        clock = Clock()
        proto = _Protocol(clock, replyTimeout=5.0, charset="utf-8", errors="strict", convertNumbers=False)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, clock

    def test_slow_replies_are_not_a_dead_connection(self) -> None:
        """Replies that keep arriving keep the connection alive however long
        each command waits: the second command, owed for 9 s while bytes
        arrived 4 s before, still gets its reply; only 5 s of silence with
        replies owed fails what is owed (TimeoutError) and aborts."""
        import txredisapi

        proto, transport, clock = self.connect()
        first = proto.execute_command("GET", "a")
        second = proto.execute_command("GET", "b")
        clock.advance(4.0)
        proto.dataReceived(b"$1\r\nx\r\n")
        self.assertEqual(self.successResultOf(first), "x")
        clock.advance(4.5)  # 8.5 s owed, 4.5 s silent
        self.assertNoResult(second)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b"$1\r\ny\r\n")
        self.assertEqual(self.successResultOf(second), "y")
        third = proto.execute_command("GET", "c")
        clock.advance(5.0)
        self.failureResultOf(third, txredisapi.TimeoutError)
        self.assertTrue(transport.disconnecting)

    def test_an_idle_connection_is_not_dead_and_the_timer_stops_with_it(self) -> None:
        """Owing nothing, silence is fine: a command sent after a minute
        of quiet gets the full 5 s; losing the connection cancels the timer."""
        from twisted.python.failure import Failure
        from twisted.internet.error import ConnectionDone

        proto, transport, clock = self.connect()
        clock.advance(60.0)
        self.assertFalse(transport.disconnecting)
        late = proto.execute_command("GET", "a")
        clock.advance(4.0)
        self.assertNoResult(late)
        self.assertFalse(transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(late)
        self.assertEqual(clock.getDelayedCalls(), [])


class BotStreamTests(RedisBase):
    """What the APPEND script gives the bots' stream ({p}bot)."""

    @inlineCallbacks
    def bot_entries(self) -> Any:
        rows = yield self.redis.execute("XRANGE", "sc:bot", "-", "+")
        return [dict(zip(flat[::2], flat[1::2])) for _, flat in rows or []]

    @inlineCallbacks
    def test_only_what_the_bot_can_answer_reaches_its_stream(self) -> Any:
        """Once a bot node made the bots' stream, a customer's text in a
        conversation without an agent goes there, and so does a system
        event; staff and bot messages do not, and once an agent is a
        member neither do the customer's texts. Every message is in the
        main stream regardless."""
        from supportchat.storage.models import EVENT

        yield self.redis.execute("XGROUP", "CREATE", "sc:bot", "bots", "0", "MKSTREAM")
        conv, _ = yield self.sql.open_conversation(customer_key("cu"), 1.0)
        store = self.store(node_id="node-a", bot_keep=3600.0)
        yield store.append(self.text(conv.id, "hello bot", "k1"))
        yield store.append(AppendRequest(conversation_id=conv.id, sender_id="workflow", sender_role="system",
                                         client_msg_id=None, kind=EVENT, body="", ts=3.0, data={"name": "created"},
                                         require_participant=False))
        yield store.append(AppendRequest(conversation_id=conv.id, sender_id="bot", sender_role="bot",
                                         client_msg_id="b1", kind="text", body="hi", ts=3.0,
                                         require_participant=False))
        yield store.append(AppendRequest(conversation_id=conv.id, sender_id="ag", sender_role="agent",
                                         client_msg_id="j1", kind=EVENT, body="", ts=3.0, data={"name": "joined"},
                                         join=True))
        yield store.append(self.text(conv.id, "now a human has it", "k2"))
        entries = yield self.bot_entries()
        self.assertEqual([(e["r"], e["k"]) for e in entries], [("customer", "text"), ("system", "event")])
        self.assertEqual(json.loads(entries[0]["m"])["body"], "hello bot")
        self.assertEqual((yield self.redis.execute("XLEN", "sc:stream")), 5)

    @inlineCallbacks
    def test_no_bot_no_bots_stream_and_old_entries_are_trimmed(self) -> Any:
        """Before any bot node made the bots' stream nothing is written
        there; once it exists, entries older than bot_keep go as it grows."""
        solo, _ = yield self.sql.open_conversation(customer_key("solo"), 1.0)
        old = self.store(bot_keep=3600.0)
        yield old.append(AppendRequest(conversation_id=solo.id, sender_id=customer_key("solo"),
                                       sender_role="customer", client_msg_id="s0", kind="text", body="early",
                                       ts=3.0))
        self.assertEqual((yield self.redis.execute("EXISTS", "sc:bot")), 0)
        for i in range(300):
            yield self.redis.execute("XADD", "sc:bot", "1000-%d" % (i + 1), "m", "{}")
        yield old.append(AppendRequest(conversation_id=solo.id, sender_id=customer_key("solo"),
                                       sender_role="customer", client_msg_id="s1", kind="text", body="late",
                                       ts=3.0))
        entries = yield self.bot_entries()
        self.assertLess(len(entries), 301)
        self.assertEqual(json.loads(entries[-1]["m"])["body"], "late")
