"""Principals are (role namespace, id): a customer token whose ``sub``
equals an agent's id is another principal (issue 12, finding 6). The
handlers on the in-memory twins and on SQLite, the Redis stream codec, the
migration of data stored under plain ids, and a real server over sockets.
(The stores themselves, Redis included, are covered by the contract suites
in tests/test_storage_contract.py.)"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from supportchat.auth import AuthError, Principal, TokenVerifier, ensure_secret
from supportchat.background import BackgroundTasks
from supportchat.bus.memory import LocalBus
from supportchat.config import AuthConfig, ChatConfig
from supportchat.handlers.assemble import build_router
from supportchat.handlers.connections import ClientSession, ConnectionRegistry
from supportchat.metrics import Metrics
from supportchat.redis.codec import decode_message, encode_message
from supportchat.storage.database import Database, _blocking, _migrate_txn, _migrations, migrate_blocking
from supportchat.storage.engines import SqliteEngine, engine_from_url
from supportchat.storage.memory import MemoryConversationStore, MemoryPresenceStore
from supportchat.storage.models import Message, customer_key, principal_key, wire_id
from supportchat.storage.sql import SqlConversationStore
from supportchat.wire.frames import parse_frame
from tests import dbs
from tests.support import SECRET, close_client, connect, http_client, start_server, token
from tests.test_admin import _AdminCase
from tests.test_chat_handler import FakeTransport

# The schema version before identities were namespaced.
PLAIN_IDS_VERSION = 8


class KeyTests(unittest.SynchronousTestCase):
    def test_keys_namespace_customers_and_keep_staff_ids(self) -> None:
        """A customer's key differs from an agent's with the same id; an
        admin and an agent with one id are one principal (a role change
        within staff keeps the identity); the wire shows the id."""
        self.assertNotEqual(principal_key("customer", "bob"), principal_key("agent", "bob"))
        self.assertEqual(principal_key("agent", "bob"), principal_key("admin", "bob"))
        self.assertEqual(Principal("bob", "customer").key, customer_key("bob"))
        self.assertEqual(wire_id(customer_key("bob")), "bob")
        self.assertEqual(wire_id(principal_key("agent", "bob")), "bob")
        self.assertEqual(wire_id(customer_key("c:odd")), "c:odd")

    def test_staff_tokens_may_not_look_like_customer_keys(self) -> None:
        """A staff token whose sub begins with the customers' prefix is
        refused (it could otherwise pose as a customer); a customer's may."""
        verifier = TokenVerifier(AuthConfig(), SECRET)
        e = self.assertRaises(AuthError, verifier.verify, token("c:bob", "agent"))
        self.assertEqual(e.reason, "claims")
        self.assertEqual(verifier.verify(token("c:bob")).key, "c:c:bob")

    def test_stream_entries_of_older_nodes_are_read_as_keys(self) -> None:
        """A stream entry written before identities were namespaced (plain
        customer id, no marker) is read with the customer's key; new
        entries round-trip unchanged."""
        new = Message("c1", "m1", 1, customer_key("bob"), "customer", "k", "text", "hi", 1.0)
        self.assertEqual(decode_message(encode_message(new)), new)
        legacy = {"seq": 2, "conversation_id": "c1", "msg_id": "m2", "sender_id": "bob", "sender_role": "customer",
                  "client_msg_id": None, "kind": "text", "body": "old", "ts": 2.0, "data": None}
        self.assertEqual(decode_message(json.dumps(legacy)).sender_id, customer_key("bob"))
        legacy.update(sender_id="ann", sender_role="agent")
        self.assertEqual(decode_message(json.dumps(legacy)).sender_id, "ann")


class SameIdHandlerContract:
    """The handlers with a customer token whose sub equals an agent's id."""

    def make_store(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = self.make_store()
        self.background = BackgroundTasks()
        metrics = Metrics()
        self.handler = build_router(
            clock=self.clock, store=self.store, bus=LocalBus(), presence=MemoryPresenceStore(self.clock, 35),
            registry=ConnectionRegistry(), metrics=metrics, background=self.background,
            config=ChatConfig(frame_rate=50, frame_burst=100), heartbeat=30,
        )

    def tearDown(self) -> None:
        self.assertEqual(self.background.running, 0)

    def connect(self, user: str, role: str = "customer") -> tuple[ClientSession, FakeTransport]:
        t = FakeTransport()
        s = ClientSession(Principal(user, role), t)
        self.successResultOf(self.handler.on_open(s))
        return s, t

    def send(self, session: ClientSession, frame: dict[str, Any]) -> None:
        self.successResultOf(self.handler.on_frame(session, parse_frame(json.dumps(frame), 4000, 500)))

    def agents_conversation(self) -> tuple[Any, Any, Any, Any, str]:
        alice, alt = self.connect("alice")
        self.send(alice, {"type": "start", "ref": "s"})
        conv = str(alt.of_type("conversation")[-1]["conversation"]["id"])
        bob, bt = self.connect("bob", "agent")
        self.send(bob, {"type": "accept", "ref": "a", "conversation": conv})
        self.send(bob, {"type": "message", "ref": 1, "conversation": conv, "client_msg_id": "b1", "body": "hello alice"})
        return alice, alt, bob, bt, conv

    def test_customer_with_an_agents_id_gets_nothing_of_the_agents(self) -> None:
        """A customer token with sub == an agent's id: no agent conversation
        in hello, sync/message/read/typing answer not_found (nothing is
        stored), and the agent's next message is not delivered to it."""
        alice, alt, bob, bt, conv = self.agents_conversation()
        impostor, it = self.connect("bob")
        hello = it.sent[0]
        self.assertEqual(hello["user"], {"id": "bob", "role": "customer"})
        self.assertEqual(hello["conversations"], [])
        stored = len(self.successResultOf(self.store.get_messages(conv, 0, 100)))
        for frame in ({"type": "sync", "ref": "y", "conversation": conv, "after_seq": 0},
                      {"type": "message", "ref": "m", "conversation": conv, "client_msg_id": "b1", "body": "gotcha"},
                      {"type": "read", "ref": "r", "conversation": conv, "seq": 2},
                      {"type": "typing", "ref": "t", "conversation": conv}):
            self.send(impostor, frame)
            self.assertEqual((it.last()["type"], it.last()["code"]), ("error", "not_found"))
        self.assertEqual(len(self.successResultOf(self.store.get_messages(conv, 0, 100))), stored)
        self.send(bob, {"type": "message", "ref": 2, "conversation": conv, "client_msg_id": "b2", "body": "private"})
        self.assertEqual([m["body"] for m in alt.texts()], ["hello alice", "private"])
        self.assertEqual(it.of_type("message"), [])
        self.assertEqual(it.of_type("typing") + it.of_type("read"), [])

    def test_both_principals_keep_their_own_conversations(self) -> None:
        """The customer "bob" has a conversation of their own, with their
        own idempotency keys; the wire shows each sender as id and role."""
        alice, alt, bob, bt, conv = self.agents_conversation()
        impostor, it = self.connect("bob")
        self.send(impostor, {"type": "start", "ref": "s"})
        own = it.of_type("conversation")[-1]["conversation"]
        self.assertNotEqual(own["id"], conv)
        self.assertEqual(own["customer_id"], "bob")
        self.send(impostor, {"type": "message", "ref": 1, "conversation": own["id"], "client_msg_id": "b1", "body": "mine"})
        ack = it.of_type("ack")[-1]
        self.assertFalse(ack["duplicate"])  # the agent used b1 too
        self.assertEqual(ack["conversation"], own["id"])
        self.send(impostor, {"type": "sync", "ref": "y", "conversation": own["id"], "after_seq": 0})
        [mine] = [m for m in it.of_type("history")[-1]["messages"] if m["kind"] == "text"]
        self.assertEqual(mine["sender"], {"id": "bob", "role": "customer"})
        self.assertEqual(alt.texts()[0]["sender"], {"id": "bob", "role": "agent"})
        self.assertEqual(bt.texts(), [])  # the agent's own went as an ack
        again, at2 = self.connect("bob", "agent")
        self.assertEqual([c["id"] for c in at2.sent[0]["conversations"]], [conv])


class MemorySameIdHandlerTests(SameIdHandlerContract, unittest.SynchronousTestCase):
    def make_store(self) -> Any:
        return MemoryConversationStore()


class SqliteSameIdHandlerTests(SameIdHandlerContract, unittest.SynchronousTestCase):
    def make_store(self) -> Any:
        db = Database(SqliteEngine(self.mktemp() + ".db"), reactor=None, threadless=True)
        db.start()
        self.addCleanup(db.close)
        self.successResultOf(db.migrate())
        return SqlConversationStore(db)


def _old_schema(engine: Any) -> None:
    """Migrate ``engine`` up to the last version that stored plain ids."""
    old = [m for m in _migrations(engine.name) if m[0] <= PLAIN_IDS_VERSION]
    _blocking(engine, lambda cur: _migrate_txn(cur, old))


def _rows_of_old_version(engine: Any) -> None:
    """What an older version stored for customer "bob" served by agent
    "ann": plain ids in participants, senders, idempotency keys, the
    conversation and its work item."""
    rows = [
        ("INSERT INTO conversations (id, customer_id, status, created_at, last_seq, last_msg_id, last_ts)"
         " VALUES ('c1', 'bob', 'open', 1.0, 2, 'm2', 3.0)", ()),
        ("INSERT INTO participants (conversation_id, user_id, role, joined_at, last_read_seq, unread)"
         " VALUES ('c1', 'bob', 'customer', 1.0, 1, 1)", ()),
        ("INSERT INTO participants (conversation_id, user_id, role, joined_at, last_read_seq, unread)"
         " VALUES ('c1', 'ann', 'agent', 1.5, 2, 0)", ()),
        ("INSERT INTO messages (msg_id, conversation_id, seq, sender_id, sender_role, client_msg_id, kind, body, ts)"
         " VALUES ('m1', 'c1', 1, 'bob', 'customer', 'k1', 'text', 'where is my parcel', 2.0)", ()),
        ("INSERT INTO messages (msg_id, conversation_id, seq, sender_id, sender_role, client_msg_id, kind, body, ts)"
         " VALUES ('m2', 'c1', 2, 'ann', 'agent', 'a1', 'text', 'on its way', 3.0)", ()),
        ("INSERT INTO idempotency_keys (sender_id, client_msg_id, conversation_id, msg_id, seq, ts, expires_at)"
         " VALUES ('bob', 'k1', 'c1', 'm1', 1, 2.0, 9999999999.0)", ()),
        ("INSERT INTO idempotency_keys (sender_id, client_msg_id, conversation_id, msg_id, seq, ts, expires_at)"
         " VALUES ('ann', 'a1', 'c1', 'm2', 2, 3.0, 9999999999.0)", ()),
        ("INSERT INTO work_items (conversation_id, customer_id, team_id, state, agent_id, queued_at)"
         " VALUES ('c1', 'bob', '', 'assigned', 'ann', 1.0)", ()),
    ]

    def insert(cur: Any) -> None:
        for sql, args in rows:
            cur.execute(sql, args)

    _blocking(engine, insert)


class MigrationContract:
    """Data stored under plain ids by an older version, migrated: the same
    tokens see the same conversations, with unread counts, history and
    idempotency intact."""

    kind = "sqlite"

    def url(self) -> str:
        if self.kind == "sqlite":
            return "sqlite:///" + self.mktemp() + ".db"
        reason = dbs.unreachable(self.kind)
        if reason:
            raise unittest.SkipTest(reason)
        url, drop = dbs.create_database(self.kind)
        self.addCleanup(drop)
        return url

    def test_old_data_works_for_the_same_tokens(self) -> None:
        """After migration 009 the customer "bob" and the agent "ann" get
        their conversation in hello with the same unread counts, sync shows
        the same senders, a retried client_msg_id is still a duplicate, and
        a customer token "ann" sees nothing of the agent's."""
        engine = engine_from_url(self.url())
        _old_schema(engine)
        _rows_of_old_version(engine)
        version, applied = migrate_blocking(engine)
        self.assertEqual([n.split(".")[0] for n in applied][0], "009_principals")  # then any later ones
        db = Database(engine, reactor=None, threadless=True)
        db.start()
        self.addCleanup(db.close)
        store = SqlConversationStore(db)
        clock = Clock()
        clock.advance(100.0)
        background = BackgroundTasks()
        handler = build_router(
            clock=clock, store=store, bus=LocalBus(), presence=MemoryPresenceStore(clock, 35),
            registry=ConnectionRegistry(), metrics=Metrics(), background=background,
            config=ChatConfig(), heartbeat=30,
        )

        def connect(user: str, role: str) -> tuple[ClientSession, FakeTransport]:
            t = FakeTransport()
            s = ClientSession(Principal(user, role), t)
            self.successResultOf(handler.on_open(s))
            return s, t

        def send(session: ClientSession, frame: dict[str, Any]) -> None:
            self.successResultOf(handler.on_frame(session, parse_frame(json.dumps(frame), 4000, 500)))

        bob, bt = connect("bob", "customer")
        ann, at = connect("ann", "agent")
        impostor, it = connect("ann", "customer")
        self.assertEqual([(c["id"], c["unread"]) for c in bt.sent[0]["conversations"]], [("c1", 1)])
        self.assertEqual([(c["id"], c["unread"]) for c in at.sent[0]["conversations"]], [("c1", 0)])
        self.assertEqual(it.sent[0]["conversations"], [])
        send(bob, {"type": "sync", "ref": "y", "conversation": "c1", "after_seq": 0})
        history = bt.of_type("history")[-1]
        self.assertEqual([m["sender"] for m in history["messages"]],
                         [{"id": "bob", "role": "customer"}, {"id": "ann", "role": "agent"}])
        self.assertEqual(history["read"], [{"user_id": "ann", "seq": 2}])
        send(bob, {"type": "message", "ref": 1, "conversation": "c1", "client_msg_id": "k1", "body": "again"})
        self.assertEqual((bt.last()["duplicate"], bt.last()["seq"]), (True, 1))
        send(bob, {"type": "message", "ref": 2, "conversation": "c1", "client_msg_id": "k2", "body": "thanks"})
        self.assertEqual(at.texts()[-1]["sender"], {"id": "bob", "role": "customer"})
        send(impostor, {"type": "sync", "ref": "y", "conversation": "c1", "after_seq": 0})
        self.assertEqual(it.last()["code"], "not_found")
        conv = self.successResultOf(store.get_conversation("c1"))
        self.assertEqual(conv.to_wire()["customer_id"], "bob")
        self.assertEqual(background.running, 0)


class SqliteMigrationTests(MigrationContract, unittest.SynchronousTestCase):
    kind = "sqlite"


class PostgresMigrationTests(MigrationContract, unittest.SynchronousTestCase):
    kind = "postgresql"


class MariadbMigrationTests(MigrationContract, unittest.SynchronousTestCase):
    kind = "mysql"


class SameIdOverSocketsTests(unittest.TestCase):
    @inlineCallbacks
    def test_customer_token_with_an_agents_id_over_a_real_socket(self) -> Any:
        """End to end: a customer token whose sub is an agent's id gets no
        agent conversation in hello, not_found for sync and message, and
        none of the agent's live messages."""
        server = yield start_server(self)
        alice = yield connect(server.port, token("alice"))
        self.addCleanup(close_client, alice)
        alice.send({"type": "start", "ref": "s"})
        conv = (yield alice.next_frame("conversation"))["conversation"]["id"]
        bob = yield connect(server.port, token("bob", "agent", name="Bob"))
        self.addCleanup(close_client, bob)
        bob.send({"type": "accept", "ref": "a", "conversation": conv})
        yield bob.next_frame("conversation", lambda f: f.get("ref") == "a")
        impostor = yield connect(server.port, token("bob"))
        self.addCleanup(close_client, impostor)
        self.assertEqual(impostor.frames[0]["user"], {"id": "bob", "role": "customer"})
        self.assertEqual(impostor.frames[0]["conversations"], [])
        impostor.send({"type": "sync", "ref": "y", "conversation": conv, "after_seq": 0})
        self.assertEqual((yield impostor.next_frame("error"))["code"], "not_found")
        impostor.send({"type": "message", "ref": "m", "conversation": conv, "client_msg_id": "x", "body": "gotcha"})
        self.assertEqual((yield impostor.next_frame("error"))["code"], "not_found")
        bob.send({"type": "message", "ref": 1, "conversation": conv, "client_msg_id": "b1", "body": "for alice only"})
        got = yield alice.next_frame("message", lambda f: f.get("kind") == "text")
        self.assertEqual((got["body"], got["sender"]["id"], got["sender"]["role"]), ("for alice only", "bob", "agent"))
        # Deliveries to every local session happen together: once the
        # impostor's pong is back, anything meant for it would be before.
        impostor.send({"type": "ping", "ref": "p"})
        yield impostor.next_frame("pong")
        self.assertEqual([f for f in impostor.frames if f.get("type") == "message"], [])
        self.assertNotIn("gotcha", [m["body"] for m in alice.of_type("message")])

    @inlineCallbacks
    def test_rest_history_goes_by_principal_too(self) -> Any:
        """Over REST, a customer token whose sub is an agent's id gets 404
        for the agent's conversation and finds nothing of it in search; the
        agent's own token reads it."""
        server = yield start_server(self)
        alice = yield connect(server.port, token("alice"))
        self.addCleanup(close_client, alice)
        alice.send({"type": "start", "ref": "s"})
        conv = (yield alice.next_frame("conversation"))["conversation"]["id"]
        alice.send({"type": "message", "ref": 1, "conversation": conv, "client_msg_id": "k1", "body": "secret parcel"})
        yield alice.next_frame("ack")
        bob = yield connect(server.port, token("bob", "agent", name="Bob"))
        self.addCleanup(close_client, bob)
        bob.send({"type": "accept", "ref": "a", "conversation": conv})
        yield bob.next_frame("conversation", lambda f: f.get("ref") == "a")
        http = http_client()
        base = f"http://127.0.0.1:{server.port}/api/v1"

        @inlineCallbacks
        def get(path: str, role: str) -> Any:
            response = yield http.get(base + path, headers={"Authorization": f"Bearer {token('bob', role)}"})
            return response.code, json.loads((yield response.content()))

        code, body = yield get(f"/conversations/{conv}/messages", "customer")
        self.assertEqual((code, body["error"]["code"]), (404, "not_found"))
        code, body = yield get("/search?q=parcel", "customer")
        self.assertEqual((code, body["messages"]), (200, []))
        code, body = yield get(f"/conversations/{conv}/messages", "agent")
        self.assertEqual((code, body["conversation"]["customer_id"]), (200, "alice"))
        code, body = yield get("/search?q=parcel", "agent")
        self.assertEqual([m["sender"] for m in body["messages"]], [{"id": "alice", "role": "customer"}])


class AdminToolTests(_AdminCase):
    def test_staff_ids_in_the_customers_namespace_are_refused(self) -> None:
        """The admin tool mints no staff token and creates no admin account
        whose id begins with "c:" (exit 2, the reason on stderr); a customer
        token with such an id is fine."""
        ensure_secret(AuthConfig(), self.data_dir)
        code, out, err = self.run_main("token", "--user-id", "c:bob", "--role", "agent", "--data-dir", self.data_dir)
        self.assertEqual((code, out), (2, ""))
        self.assertIn("may not begin with 'c:'", err)
        code, out, _ = self.run_main("token", "--user-id", "c:bob", "--role", "customer", "--data-dir", self.data_dir)
        self.assertEqual(code, 0)
        code, _, err = self.run_main("create-admin", "--data-dir", self.data_dir, "--user-id", "c:boss",
                                     "--name", "Boss", "--password-file", os.path.join(self.data_dir, "none"))
        self.assertEqual(code, 2)
        self.assertIn("may not begin with 'c:'", err)
