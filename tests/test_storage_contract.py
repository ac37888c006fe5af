"""One contract per storage seam, run against the in-memory twin and every
real implementation: SQLite, PostgreSQL and MariaDB (see tests/dbs.py for
the per-run databases on the shared servers)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from supportchat.bus.interfaces import Delivery
from supportchat.bus.memory import LocalBus
from supportchat.storage.database import Database
from supportchat.storage.engines import SqliteEngine
from supportchat.storage.history import SqlHistoryStore, repeat_batches
from supportchat.storage.memory import (
    MemoryConversationStore,
    MemoryHistoryStore,
    MemoryIdempotencyStore,
    MemoryPresenceStore,
)
from supportchat.storage.models import (
    EVENT,
    TEXT,
    AppendRequest,
    Conflict,
    IdempotencyRecord,
    NotFound,
    customer_key,
    principal_key,
)
from supportchat.storage.sql import SqlConversationStore, SqlIdempotencyStore
from tests.dbs import threadless_db


def threadless_sqlite(testcase: unittest.TestCase) -> Database:
    """Real SQLite, run inline on the test thread, migrated."""
    db = Database(SqliteEngine(testcase.mktemp() + ".db"), reactor=None, threadless=True)
    db.start()
    testcase.addCleanup(db.close)
    testcase.successResultOf(db.migrate())
    return db


def msg(conv: str, sender: str, key: str | None, body: str = "hi", ts: float = 1000.0, **kw: Any) -> AppendRequest:
    return AppendRequest(
        conversation_id=conv, sender_id=sender, sender_role=kw.pop("role", "customer"),
        kind=kw.pop("kind", TEXT), body=body, ts=ts, client_msg_id=key, **kw,
    )


class ConversationStoreContract:
    """Behaviour every ConversationStore (+ session state) must have."""

    def make_store(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.store = self.make_store()

    @inlineCallbacks
    def open(self, customer: str = "cust", now: float = 1000.0) -> Any:
        conv, created = yield self.store.open_conversation(customer, now)
        return conv

    def join(self, conv: str, agent: str = "agent", ts: float = 1001.0) -> Any:
        return self.store.append(AppendRequest(
            conversation_id=conv, sender_id=agent, sender_role="agent", kind=EVENT,
            body="joined", ts=ts, data={"name": "joined"}, join=True,
        ))

    @inlineCallbacks
    def test_open_conversation_is_reused_while_open(self) -> Any:
        """A customer with an open conversation gets that one back."""
        conv, created = (yield self.store.open_conversation("cust", 1.0))
        again, created_again = (yield self.store.open_conversation("cust", 2.0))
        other, _ = (yield self.store.open_conversation("someone-else", 3.0))
        self.assertTrue(created)
        self.assertFalse(created_again)
        self.assertEqual(again.id, conv.id)
        self.assertNotEqual(other.id, conv.id)
        self.assertEqual(conv.status, "open")
        self.assertEqual(conv.customer_id, "cust")

    @inlineCallbacks
    def test_seq_starts_at_one_without_gaps(self) -> Any:
        """Each append gets the next seq: 1, 2, 3 ... per conversation."""
        a = yield self.open("a")
        b = yield self.open("b")
        seqs_a = []
        for i in range(5):
            seqs_a.append((yield self.store.append(msg(a.id, "a", f"k{i}"))).message.seq)
        seqs_b = []
        for i in range(3):
            seqs_b.append((yield self.store.append(msg(b.id, "b", f"k{i}"))).message.seq)
        self.assertEqual(seqs_a, [1, 2, 3, 4, 5])
        self.assertEqual(seqs_b, [1, 2, 3])
        conv = (yield self.store.get_conversation(a.id))
        self.assertEqual(conv.last_seq, 5)

    @inlineCallbacks
    def test_repeated_client_msg_id_is_stored_once(self) -> Any:
        """The same (sender, client_msg_id) returns the original result and stores nothing new."""
        conv = yield self.open()
        first = (yield self.store.append(msg(conv.id, "cust", "same", body="one")))
        second = (yield self.store.append(msg(conv.id, "cust", "same", body="one", ts=1005.0)))
        self.assertFalse(first.duplicate)
        self.assertTrue(second.duplicate)
        self.assertEqual(second.message.msg_id, first.message.msg_id)
        self.assertEqual(second.message.seq, first.message.seq)
        self.assertEqual(second.message.ts, first.message.ts)
        self.assertEqual(len((yield self.store.get_messages(conv.id, 0, 100))), 1)

    @inlineCallbacks
    def test_idempotency_window_expires(self) -> Any:
        """After the window a client_msg_id may be used again for a new message."""
        conv = yield self.open()
        first = (yield self.store.append(msg(conv.id, "cust", "k", ts=1000.0, idempotency_window=300.0)))
        later = (yield self.store.append(msg(conv.id, "cust", "k", ts=1301.0, idempotency_window=300.0)))
        self.assertFalse(later.duplicate)
        self.assertEqual(later.message.seq, first.message.seq + 1)

    @inlineCallbacks
    def test_same_client_msg_id_from_other_sender_is_distinct(self) -> Any:
        """Idempotency keys are per sender."""
        conv = yield self.open()
        yield self.join(conv.id)
        a = (yield self.store.append(msg(conv.id, "cust", "k")))
        b = (yield self.store.append(msg(conv.id, "agent", "k", role="agent")))
        self.assertFalse(b.duplicate)
        self.assertNotEqual(a.message.msg_id, b.message.msg_id)

    @inlineCallbacks
    def test_non_participant_cannot_append(self) -> Any:
        """A user who is not in the conversation gets NotFound; a missing conversation too."""
        conv = yield self.open()
        yield self.assertFailure(self.store.append(msg(conv.id, "intruder", "k")), NotFound)  # type: ignore[attr-defined]
        yield self.assertFailure(self.store.append(msg("c-missing", "cust", "k")), NotFound)  # type: ignore[attr-defined]
        self.assertEqual((yield self.store.get_messages(conv.id, 0, 10)), [])

    @inlineCallbacks
    def test_join_is_a_sequenced_event_once(self) -> Any:
        """Joining appends an event with a seq and adds the participant; joining again conflicts."""
        conv = yield self.open()
        result = yield self.join(conv.id)
        self.assertEqual(result.message.seq, 1)
        self.assertEqual(result.message.kind, EVENT)
        self.assertEqual(result.message.data, {"name": "joined"})
        users = sorted(p.user_id for p in (yield self.store.get_participants(conv.id)))
        self.assertEqual(users, ["agent", "cust"])
        self.assertEqual(sorted(p.user_id for p in result.participants), ["agent", "cust"])
        d = self.store.append(AppendRequest(
            conversation_id=conv.id, sender_id="agent", sender_role="agent", kind=EVENT,
            body="joined", ts=1002.0, join=True,
        ))
        yield self.assertFailure(d, Conflict)  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_get_messages_pages_in_seq_order(self) -> Any:
        """get_messages returns seq > after_seq ascending, at most limit."""
        conv = yield self.open()
        for i in range(7):
            (yield self.store.append(msg(conv.id, "cust", f"k{i}", body=f"b{i}", ts=1000.0 + i)))
        page = (yield self.store.get_messages(conv.id, 2, 3))
        self.assertEqual([m.seq for m in page], [3, 4, 5])
        self.assertEqual([m.body for m in page], ["b2", "b3", "b4"])
        self.assertEqual([m.seq for m in (yield self.store.get_messages(conv.id, 5, 100))], [6, 7])
        self.assertEqual((yield self.store.get_messages(conv.id, 7, 100)), [])

    @inlineCallbacks
    def test_message_fields_round_trip(self) -> Any:
        """What is stored is what is read back, Unicode included."""
        conv = yield self.open()
        body = "你好, 👋 \"quoted\" \n newline"
        stored = (yield self.store.append(msg(conv.id, "cust", "k1", body=body, ts=1234.5))).message
        [read] = (yield self.store.get_messages(conv.id, 0, 10))
        self.assertEqual(read, stored)
        self.assertEqual(read.body, body)
        self.assertEqual(read.sender_id, "cust")
        self.assertEqual(read.client_msg_id, "k1")

    @inlineCallbacks
    def test_unread_counts_and_last_message(self) -> Any:
        """Unread counts the others' text messages; reading sets it to what follows the read seq."""
        conv = yield self.open()
        yield self.join(conv.id)
        for i in range(3):
            (yield self.store.append(msg(conv.id, "cust", f"c{i}", ts=1010.0 + i)))
        last = (yield self.store.append(msg(conv.id, "agent", "a0", role="agent", ts=1020.0))).message
        [agent_state] = (yield self.store.get_states("agent"))
        [cust_state] = (yield self.store.get_states("cust"))
        self.assertEqual(agent_state.unread, 0)  # sending marks everything before as read
        self.assertEqual(cust_state.unread, 1)
        self.assertEqual(cust_state.last_msg_id, last.msg_id)
        self.assertEqual(cust_state.last_ts, 1020.0)
        self.assertEqual(cust_state.last_seq, 5)
        unread = (yield self.store.mark_read("cust", conv.id, 5))
        self.assertEqual(unread, 0)
        (yield self.store.append(msg(conv.id, "agent", "a1", role="agent", ts=1021.0)))
        (yield self.store.append(msg(conv.id, "agent", "a2", role="agent", ts=1022.0)))
        self.assertEqual((yield self.store.get_states("cust"))[0].unread, 2)
        self.assertEqual((yield self.store.mark_read("cust", conv.id, 6)), 1)
        self.assertEqual((yield self.store.get_states("cust"))[0].last_read_seq, 6)
        positions = yield self.store.read_positions(conv.id)
        self.assertEqual(positions, {"cust": 6, "agent": 7})  # everyone's (sending reads); for the Seen marks
        self.assertEqual((yield self.store.read_positions("no-such-conversation")), {})

    @inlineCallbacks
    def test_mark_read_requires_participation(self) -> Any:
        """Only participants have a read position."""
        conv = yield self.open()
        yield self.assertFailure(self.store.mark_read("intruder", conv.id, 1), NotFound)  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_lists(self) -> Any:
        """Users see their open conversations; agents see the unassigned queue oldest first."""
        c1 = yield self.open("c1", now=1.0)
        c2 = yield self.open("c2", now=2.0)
        yield self.join(c1.id, "agent")
        self.assertEqual([c.id for c in (yield self.store.list_conversations("agent"))], [c1.id])
        self.assertEqual([c.id for c in (yield self.store.list_conversations("c2"))], [c2.id])
        self.assertEqual([c.id for c in (yield self.store.list_unassigned(10))], [c2.id])
        self.assertIsNone((yield self.store.get_conversation("nope")))

    @inlineCallbacks
    def test_a_customer_and_an_agent_with_the_same_id_are_two_principals(self) -> Any:
        """Stores key on principal keys: the customer "bob" is not listed in,
        cannot write to or mark read in, and shares no idempotency key with
        the conversations of the agent "bob"; the wire shows both as "bob"."""
        agent, impostor = principal_key("agent", "bob"), customer_key("bob")
        served = yield self.open(customer_key("alice"))
        yield self.join(served.id, agent)
        own = yield self.open(impostor, now=1002.0)
        self.assertEqual([c.id for c in (yield self.store.list_conversations(impostor))], [own.id])
        self.assertEqual([s.conversation_id for s in (yield self.store.get_states(impostor))], [own.id])
        self.assertEqual([c.id for c in (yield self.store.list_conversations(agent))], [served.id])
        yield self.assertFailure(self.store.append(msg(served.id, impostor, "x", ts=1003.0)), NotFound)  # type: ignore[attr-defined]
        yield self.assertFailure(self.store.mark_read(impostor, served.id, 1), NotFound)  # type: ignore[attr-defined]
        sent = yield self.store.append(msg(served.id, agent, "same-key", role="agent", ts=1004.0))
        mine = yield self.store.append(msg(own.id, impostor, "same-key", ts=1005.0))
        self.assertFalse(mine.duplicate)
        self.assertEqual(mine.message.conversation_id, own.id)
        self.assertEqual(sorted(p.user_id for p in sent.participants), sorted([customer_key("alice"), agent]))
        self.assertEqual(sent.message.to_wire()["sender"], {"id": "bob", "role": "agent"})
        self.assertEqual(mine.message.to_wire()["sender"], {"id": "bob", "role": "customer"})
        self.assertEqual(own.to_wire()["customer_id"], "bob")
        self.assertNotIn(impostor, (yield self.store.read_positions(served.id)))


class MemoryConversationStoreTests(ConversationStoreContract, unittest.TestCase):
    def make_store(self) -> Any:
        return MemoryConversationStore()


class SqliteConversationStoreTests(ConversationStoreContract, unittest.TestCase):
    def make_store(self) -> Any:
        return SqlConversationStore(threadless_sqlite(self))


class PostgresConversationStoreTests(ConversationStoreContract, unittest.TestCase):
    def make_store(self) -> Any:
        return SqlConversationStore(threadless_db(self, "postgresql"))


class MariadbConversationStoreTests(ConversationStoreContract, unittest.TestCase):
    def make_store(self) -> Any:
        return SqlConversationStore(threadless_db(self, "mysql"))


class HistoryStoreContract:
    """History pages, visibility, search, retention, export and erase, and
    appends retried with the msg_id of their first attempt."""

    def make_stores(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def setUp(self) -> None:
        self.store, self.history = self.make_stores()

    def ok(self, d: "Deferred[Any]") -> Any:
        return self.successResultOf(d)  # type: ignore[attr-defined]

    def conversation(self, customer: str, bodies: list[str], now: float = 1000.0, agent: str | None = None) -> Any:
        conv, _ = self.ok(self.store.open_conversation(customer, now))
        if agent is not None:
            self.ok(self.store.append(AppendRequest(
                conversation_id=conv.id, sender_id=agent, sender_role="agent", kind=EVENT,
                body=f"{agent} joined refund", ts=now, data={"name": "joined"}, join=True,
            )))
        for i, body in enumerate(bodies):
            self.ok(self.store.append(msg(conv.id, customer, f"{customer}-{now}-{i}", body=body, ts=now + 1 + i)))
        return conv

    def test_retried_append_with_same_msg_id_stores_once(self) -> None:
        """An append retried with the msg_id of the first attempt (a dropped
        connection after commit) returns the stored message, not a second row."""
        conv, _ = self.ok(self.store.open_conversation("cust", 1000.0))
        first = self.ok(self.store.append(msg(conv.id, "cust", "k1", body="once", msg_id="m-fixed-1")))
        again = self.ok(self.store.append(msg(conv.id, "cust", "k1", body="once", ts=1001.0, msg_id="m-fixed-1")))
        self.assertEqual(first.message.msg_id, "m-fixed-1")
        self.assertEqual(again.message, first.message)
        self.assertFalse(again.duplicate)
        self.assertEqual([m.msg_id for m in self.ok(self.store.get_messages(conv.id, 0, 10))], ["m-fixed-1"])
        self.assertEqual(self.ok(self.store.get_conversation(conv.id)).last_seq, 1)

    def test_pages_by_after_and_before_seq(self) -> None:
        """Keyset pages: after_seq ascending, before_seq gives the newest page below it, both bound a window."""
        conv = self.conversation("cust", [f"b{i}" for i in range(1, 11)])

        def page(after: int | None, before: int | None, limit: int) -> list[int]:
            return [m.seq for m in self.ok(self.history.messages_page(conv.id, after, before, limit))]

        self.assertEqual(page(None, None, 3), [1, 2, 3])
        self.assertEqual(page(3, None, 3), [4, 5, 6])
        self.assertEqual(page(8, None, 5), [9, 10])
        self.assertEqual(page(None, 11, 3), [8, 9, 10])
        self.assertEqual(page(None, 4, 5), [1, 2, 3])
        self.assertEqual(page(2, 6, 10), [3, 4, 5])
        self.assertEqual(page(10, None, 5), [])
        self.assertEqual(page(None, None, 100), list(range(1, 11)))

    def test_visibility(self) -> None:
        """Customers see their own conversations, agents those they joined, admins all; missing is None."""
        mine = self.conversation("alice", ["hello"], agent="ann")
        theirs = self.conversation("bob", ["hello"])

        def seen(cid: str, uid: str, role: str) -> Any:
            return self.ok(self.history.visible_conversation(cid, uid, role))

        self.assertEqual(seen(mine.id, "alice", "customer").id, mine.id)
        self.assertIsNone(seen(theirs.id, "alice", "customer"))
        self.assertEqual(seen(mine.id, "ann", "agent").id, mine.id)
        self.assertIsNone(seen(theirs.id, "ann", "agent"))
        self.assertEqual(seen(theirs.id, "root", "admin").id, theirs.id)
        self.assertIsNone(seen("c-missing", "root", "admin"))
        self.assertIsNone(seen(mine.id, "ALICE", "customer"))  # ids are case-sensitive

    def test_search_matches_words_within_reach(self) -> None:
        """Search finds messages with every word, any case, newest first, only where the user takes part; events never."""
        self.conversation("alice", ["Where is my refund", "the parcel arrived damaged", "REFUND please, parcel lost"],
                          agent="ann")
        self.conversation("bob", ["refund for invoice 7731", "thanks"], now=2000.0)

        def bodies(uid: str | None, q: str) -> list[str]:
            return [m.body for m in self.ok(self.history.search(uid, q, 10))]

        self.assertEqual(bodies("alice", "refund"), ["REFUND please, parcel lost", "Where is my refund"])
        self.assertEqual(bodies("ann", "parcel refund"), ["REFUND please, parcel lost"])
        self.assertEqual(bodies("bob", "refund"), ["refund for invoice 7731"])
        self.assertEqual(bodies(None, "refund"), ["refund for invoice 7731", "REFUND please, parcel lost", "Where is my refund"])
        self.assertEqual(bodies("carol", "refund"), [])
        self.assertEqual(bodies(None, "joined"), [])
        self.assertEqual(bodies(None, "   "), [])
        self.assertEqual(len(self.ok(self.history.search(None, "refund", 2))), 2)

    def test_retention_deletes_only_conversations_closed_before_the_cutoff(self) -> None:
        """Closed before the cutoff: gone (messages, participants); closed later or still open: kept."""
        old = self.conversation("old", [f"word{i}" for i in range(7)], agent="ann")
        recent = self.conversation("recent", ["keep me"])
        still_open = self.conversation("open", ["keep me too"])
        self.assertTrue(self.ok(self.history.close_conversation(old.id, 5000.0)))
        self.assertTrue(self.ok(self.history.close_conversation(recent.id, 9000.0)))
        self.assertFalse(self.ok(self.history.close_conversation(old.id, 5001.0)))
        self.assertEqual(self.ok(self.store.get_conversation(old.id)).status, "closed")
        total = self.ok(repeat_batches(lambda: self.history.retention_batch(6000.0, 3)))
        self.assertGreaterEqual(total, 9)
        self.assertIsNone(self.ok(self.store.get_conversation(old.id)))
        self.assertEqual(self.ok(self.store.get_messages(old.id, 0, 100)), [])
        self.assertEqual(self.ok(self.store.get_participants(old.id)), [])
        self.assertEqual(self.ok(self.store.list_conversations("ann")), [])
        self.assertEqual(self.ok(self.history.search(None, "word3", 10)), [])
        self.assertEqual(len(self.ok(self.store.get_messages(recent.id, 0, 100))), 1)
        self.assertEqual(len(self.ok(self.store.get_messages(still_open.id, 0, 100))), 1)
        self.assertEqual(self.ok(self.history.retention_batch(6000.0, 3)), 0)

    def test_export_then_erase_a_customer(self) -> None:
        """Export lists the customer's conversations with participants and
        messages; erase removes all of it and nothing of anyone else."""
        first = self.conversation("alice", ["my order one"], agent="ann")
        self.ok(self.history.close_conversation(first.id, 1500.0))
        second = self.conversation("alice", ["my order two"], now=2000.0)
        other = self.conversation("bob", ["not alice"])
        data = self.ok(self.history.export_customer("alice"))
        self.assertEqual(data["customer_id"], "alice")
        self.assertEqual([c["id"] for c in data["conversations"]], [first.id, second.id])
        self.assertEqual(data["conversations"][0]["status"], "closed")
        self.assertEqual(sorted(p["id"] for p in data["conversations"][0]["participants"]), ["alice", "ann"])
        self.assertEqual([m["body"] for m in data["conversations"][1]["messages"]], ["my order two"])
        self.assertEqual(data["conversations"][0]["messages"][1]["sender"], {"id": "alice", "role": "customer"})
        self.ok(repeat_batches(lambda: self.history.erase_customer_batch("alice", 2)))
        self.assertEqual(self.ok(self.history.export_customer("alice"))["conversations"], [])
        self.assertIsNone(self.ok(self.store.get_conversation(first.id)))
        self.assertEqual(self.ok(self.store.get_states("alice")), [])
        self.assertEqual(self.ok(self.history.search(None, "order", 10)), [])
        self.assertEqual([m.body for m in self.ok(self.store.get_messages(other.id, 0, 10))], ["not alice"])
        # A fresh conversation for the same id starts from nothing.
        again, created = self.ok(self.store.open_conversation("alice", 3000.0))
        self.assertTrue(created)
        reused_key = f"alice-{1000.0}-0"
        self.assertFalse(self.ok(self.store.append(msg(again.id, "alice", reused_key, body="x", ts=3001.0))).duplicate)

    def test_customer_keys_scope_visibility_search_export_and_erase(self) -> None:
        """History goes by principal key: the customer "bob" cannot read or
        search the agent "bob"'s conversations; exporting and erasing the
        customer touch nothing of the agent's (ids on the wire stay plain)."""
        impostor = customer_key("bob")
        served = self.conversation(customer_key("alice"), ["refund please"], agent="bob")
        self.ok(self.store.append(msg(served.id, "bob", "b1", body="refund approved", role="agent", ts=1100.0)))
        own = self.conversation(impostor, ["refund for me"], now=2000.0)
        self.assertIsNone(self.ok(self.history.visible_conversation(served.id, impostor, "customer")))
        self.assertEqual(self.ok(self.history.visible_conversation(served.id, "bob", "agent")).id, served.id)
        self.assertEqual([m.body for m in self.ok(self.history.search(impostor, "refund", 10))], ["refund for me"])
        self.assertEqual(sorted(m.body for m in self.ok(self.history.search("bob", "refund", 10))),
                         ["refund approved", "refund please"])
        data = self.ok(self.history.export_customer(impostor))
        self.assertEqual(data["customer_id"], "bob")
        self.assertEqual([c["id"] for c in data["conversations"]], [own.id])
        self.assertEqual(data["conversations"][0]["participants"], [{"id": "bob", "role": "customer"}])
        self.ok(repeat_batches(lambda: self.history.erase_customer_batch(impostor, 2)))
        self.assertIsNone(self.ok(self.store.get_conversation(own.id)))
        self.assertEqual([m.body for m in self.ok(self.store.get_messages(served.id, 0, 10)) if m.kind == TEXT],
                         ["refund please", "refund approved"])
        self.assertEqual([c.id for c in self.ok(self.store.list_conversations("bob"))], [served.id])


class MemoryHistoryTests(HistoryStoreContract, unittest.SynchronousTestCase):
    def make_stores(self) -> tuple[Any, Any]:
        store = MemoryConversationStore()
        return store, MemoryHistoryStore(store)


class SqliteHistoryTests(HistoryStoreContract, unittest.SynchronousTestCase):
    def make_stores(self) -> tuple[Any, Any]:
        db = threadless_sqlite(self)
        return SqlConversationStore(db), SqlHistoryStore(db)


class PostgresHistoryTests(HistoryStoreContract, unittest.SynchronousTestCase):
    def make_stores(self) -> tuple[Any, Any]:
        db = threadless_db(self, "postgresql")
        return SqlConversationStore(db), SqlHistoryStore(db)


class MariadbHistoryTests(HistoryStoreContract, unittest.SynchronousTestCase):
    def make_stores(self) -> tuple[Any, Any]:
        db = threadless_db(self, "mysql")
        return SqlConversationStore(db), SqlHistoryStore(db)


class IdempotencyStoreContract:
    def make_store(self) -> Any:
        raise NotImplementedError

    def test_record_lookup_expire_purge(self) -> None:
        """A recorded outcome is found until it expires, then purged."""
        store = self.make_store()
        ok = self.successResultOf  # type: ignore[attr-defined]
        rec = IdempotencyRecord("c1", "m1", 3, 100.0)
        self.assertIsNone(ok(store.lookup("u", "k", 100.0)))
        self.assertTrue(ok(store.record("u", "k", rec, 400.0)))
        self.assertEqual(ok(store.lookup("u", "k", 399.0)), rec)
        self.assertIsNone(ok(store.lookup("other", "k", 399.0)))
        self.assertFalse(ok(store.record("u", "k", IdempotencyRecord("c1", "m2", 4, 101.0), 500.0)))
        self.assertEqual(ok(store.lookup("u", "k", 399.0)), rec)
        self.assertIsNone(ok(store.lookup("u", "k", 400.0)))
        self.assertEqual(ok(store.purge(400.0)), 1)
        self.assertEqual(ok(store.purge(400.0)), 0)


class MemoryIdempotencyTests(IdempotencyStoreContract, unittest.SynchronousTestCase):
    def make_store(self) -> Any:
        return MemoryIdempotencyStore()


class SqliteIdempotencyTests(IdempotencyStoreContract, unittest.SynchronousTestCase):
    def make_store(self) -> Any:
        return SqlIdempotencyStore(threadless_sqlite(self))


class PostgresIdempotencyTests(IdempotencyStoreContract, unittest.SynchronousTestCase):
    def make_store(self) -> Any:
        return SqlIdempotencyStore(threadless_db(self, "postgresql"))


class MariadbIdempotencyTests(IdempotencyStoreContract, unittest.SynchronousTestCase):
    def make_store(self) -> Any:
        return SqlIdempotencyStore(threadless_db(self, "mysql"))


class PresenceStoreContract:
    def make_store(self, clock: Clock, ttl: float) -> Any:
        raise NotImplementedError

    @inlineCallbacks
    def test_presence_expires_without_heartbeat(self) -> Any:
        """Online until the TTL passes without a touch; removing a connection is immediate."""
        clock = Clock()
        clock.advance(1_800_000_000)
        store = self.make_store(clock, 35)
        yield store.touch("u", "s1")
        yield store.touch("u", "s2")
        clock.advance(30)
        yield store.touch("u", "s1")
        self.assertTrue((yield store.is_online("u")))
        clock.advance(34)
        self.assertTrue((yield store.is_online("u")))
        self.assertEqual((yield store.online_users()), ["u"])
        clock.advance(2)
        self.assertFalse((yield store.is_online("u")))
        yield store.touch("v", "s3")
        yield store.remove("v", "s3")
        self.assertFalse((yield store.is_online("v")))
        self.assertEqual((yield store.online_users()), [])


class MemoryPresenceTests(PresenceStoreContract, unittest.TestCase):
    def make_store(self, clock: Clock, ttl: float) -> Any:
        return MemoryPresenceStore(clock, ttl)


class RedisPresenceTests(PresenceStoreContract, unittest.TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        from tests.redis_support import connected_client, shared

        server = shared()
        server.cli("FLUSHALL")
        self.redis = yield connected_client(self, server.url)

    def make_store(self, clock: Clock, ttl: float) -> Any:
        from supportchat.redis.presence import RedisPresenceStore

        return RedisPresenceStore(clock, self.redis, ttl, "node-a")

    @inlineCallbacks
    def test_nodes_for_routes_to_live_connections(self) -> Any:
        """nodes_for names the nodes where a user has live connections."""
        clock = Clock()
        clock.advance(1_800_000_000)
        from supportchat.redis.presence import RedisPresenceStore

        a = RedisPresenceStore(clock, self.redis, 35, "node-a")
        b = RedisPresenceStore(clock, self.redis, 35, "node-b")
        yield a.touch("u", "s1")
        clock.advance(20)
        yield b.touch("u", "s2")
        self.assertEqual((yield a.nodes_for("u")), {"node-a", "node-b"})
        clock.advance(20)  # node-a's connection missed its heartbeats
        self.assertEqual((yield a.nodes_for("u")), {"node-b"})


class MessageBusContract:
    def make_bus(self) -> Any:
        raise NotImplementedError

    def test_publish_reaches_every_subscriber_until_unsubscribed(self) -> None:
        """Every subscriber sees each delivery in order; unsubscribing stops it."""
        bus = self.make_bus()
        seen_a: list[Delivery] = []
        seen_b: list[Delivery] = []
        unsubscribe_a = bus.subscribe(seen_a.append)
        bus.subscribe(seen_b.append)
        one = Delivery(frame={"type": "x", "n": 1}, user_ids=("u",))
        two = Delivery(frame={"type": "x", "n": 2}, roles=("agent",))
        self.successResultOf(bus.publish(one))  # type: ignore[attr-defined]
        unsubscribe_a()
        self.successResultOf(bus.publish(two))  # type: ignore[attr-defined]
        self.assertEqual(seen_a, [one])
        self.assertEqual(seen_b, [one, two])

    def test_delivery_json_round_trip(self) -> None:
        """A delivery survives the JSON form used between nodes."""
        d = Delivery(frame={"type": "m", "body": "é"}, user_ids=("a", "b"), roles=("agent",), exclude_connection="s1")
        self.assertEqual(Delivery.from_json(d.to_json()), d)


class LocalBusTests(MessageBusContract, unittest.SynchronousTestCase):
    def make_bus(self) -> Any:
        return LocalBus()


class _ManualDatabase:
    """Runs each interaction on a real threadless SQLite database, but only
    when the test releases it, so appends can pile up behind a batch."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.engine = db.engine
        self.calls: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def run_interaction(self, desc: str, fn: Any, *args: Any) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.calls.append((d, fn, args))
        return d

    def release(self) -> None:
        d, fn, args = self.calls.pop(0)
        self._db.run_interaction("released", fn, *args).chainDeferred(d)


class GroupCommitTests(unittest.SynchronousTestCase):
    def test_appends_queued_behind_a_batch_share_one_transaction(self) -> None:
        """While one batch commits, new appends wait and go together in the
        next transaction; none is acknowledged before its commit."""
        db = threadless_sqlite(self)
        store = SqlConversationStore(db)
        conv, _ = self.successResultOf(store.open_conversation("cust", 1.0))
        manual = _ManualDatabase(db)
        store._db = manual  # type: ignore[assignment]
        first = store.append(msg(conv.id, "cust", "k0"))
        rest = [store.append(msg(conv.id, "cust", f"k{i}")) for i in range(1, 5)]
        self.assertEqual(len(manual.calls), 1)
        self.assertNoResult(first)
        manual.release()
        self.assertEqual(self.successResultOf(first).message.seq, 1)
        for d in rest:
            self.assertNoResult(d)
        self.assertEqual(len(manual.calls), 1)  # the four queued ones: one transaction
        manual.release()
        self.assertEqual([self.successResultOf(d).message.seq for d in rest], [2, 3, 4, 5])
        self.assertEqual(store.batches, 2)
        done = store.drain()
        self.successResultOf(done)

    def test_failed_batch_fails_its_waiters_and_keeps_going(self) -> None:
        """A batch whose transaction fails errbacks its waiters (no ack) and
        later appends still commit."""
        db = threadless_sqlite(self)
        store = SqlConversationStore(db)
        conv, _ = self.successResultOf(store.open_conversation("cust", 1.0))
        manual = _ManualDatabase(db)
        store._db = manual  # type: ignore[assignment]
        doomed = store.append(msg(conv.id, "cust", "k0"))
        d, _, _ = manual.calls.pop(0)
        d.errback(RuntimeError("disk I/O error"))
        self.failureResultOf(doomed, RuntimeError)
        later = store.append(msg(conv.id, "cust", "k0"))
        manual.release()
        self.assertEqual(self.successResultOf(later).message.seq, 1)
        self.flushLoggedErrors(RuntimeError)


__all__ = ["succeed"]


class RedisConversationStoreTests(ConversationStoreContract, unittest.TestCase):
    """The contract on Redis (a private server) with SQLite behind it."""

    @inlineCallbacks
    def setUp(self) -> Any:
        from tests.redis_support import connected_client, shared

        server = shared()
        server.cli("FLUSHALL")
        self.redis = yield connected_client(self, server.url)
        super().setUp()

    def make_store(self) -> Any:
        from twisted.internet import reactor

        from supportchat.redis.store import RedisChatStore

        return RedisChatStore(reactor, self.redis, SqlConversationStore(threadless_sqlite(self)))

    @inlineCallbacks
    def test_idempotency_window_expires(self) -> Any:
        """Redis keeps each idempotency key for the window (as a TTL) and
        accepts the client_msg_id again once the key has expired."""
        conv = yield self.open()
        first = yield self.store.append(msg(conv.id, "cust", "k", idempotency_window=300.0))
        key = f"{self.store.prefix}dedup:cust:k"
        ttl = int((yield self.redis.execute("TTL", key)))
        self.assertTrue(290 <= ttl <= 300, ttl)
        yield self.redis.execute("DEL", key)  # what Redis does when the TTL runs out
        later = yield self.store.append(msg(conv.id, "cust", "k", idempotency_window=300.0))
        self.assertFalse(later.duplicate)
        self.assertEqual(later.message.seq, first.message.seq + 1)

    @inlineCallbacks
    def test_keys_written_by_older_nodes_are_not_read(self) -> Any:
        """Redis keys of the layout before identities were namespaced hold
        plain customer ids: they are never read. The members are seeded
        again from SQL, so the customer keeps writing, an agent whose id is
        the customer's plain id gets not_found, and an old idempotency key
        is no one's duplicate."""
        conv = yield self.open(customer_key("bob"))
        p = self.store.prefix
        yield self.redis.execute("HSET", f"{p}parts:{conv.id}", "bob", "customer")
        yield self.redis.execute("SET", f"{p}idem:bob:k", "{}")
        yield self.assertFailure(self.store.append(msg(conv.id, "bob", "k", role="agent")), NotFound)
        first = yield self.store.append(msg(conv.id, customer_key("bob"), "k"))
        self.assertFalse(first.duplicate)
        self.assertEqual(first.message.seq, 1)
        self.assertEqual(
            sorted((yield self.redis.execute("HKEYS", f"{p}members:{conv.id}"))), [customer_key("bob")])

    @inlineCallbacks
    def test_messages_not_yet_flushed_are_readable_and_survive_flush(self) -> Any:
        """Before the persister runs, sync reads from Redis; after it
        flushed and trimmed, the same messages come from SQL."""
        from supportchat.storage.persist import persist_batch_txn

        conv = yield self.open()
        sent = []
        for i in range(4):
            sent.append((yield self.store.append(msg(conv.id, "cust", f"k{i}", body=f"b{i}"))).message)
        self.assertEqual((yield self.store._sql.get_messages(conv.id, 0, 10)), [])
        self.assertEqual((yield self.store.get_messages(conv.id, 0, 10)), sent)
        yield self.store._sql._db.run_interaction("persist", persist_batch_txn, sent[:2], 86400.0)
        yield self.redis.execute("ZREMRANGEBYSCORE", f"{self.store.prefix}recent:{conv.id}", "-inf", 2)
        self.assertEqual((yield self.store.get_messages(conv.id, 0, 10)), sent)
        self.assertEqual((yield self.store.get_messages(conv.id, 1, 2)), sent[1:3])

    @inlineCallbacks
    def test_degraded_mode_commits_to_sql_and_writes_back(self) -> Any:
        """With Redis unreachable, appends commit to SQL above every seq this
        node saw, repeats are still recognised, and after recovery Redis
        continues the sequence and knows the idempotency keys."""
        conv = yield self.open()
        first = yield self.store.append(msg(conv.id, "cust", "r1"))
        self.assertEqual(first.message.seq, 1)  # in Redis only, not yet flushed
        self.store._redis_state(False)
        degraded = yield self.store.append(msg(conv.id, "cust", "d1"))
        again = yield self.store.append(msg(conv.id, "cust", "d1"))
        self.assertEqual(degraded.message.seq, 2)  # room left for seq 1, still in Redis
        self.assertTrue(again.duplicate)
        self.assertEqual(again.message.msg_id, degraded.message.msg_id)
        self.store._redis_state(True)
        yield self.store._recovering
        self.assertFalse(self.store.degraded)
        after = yield self.store.append(msg(conv.id, "cust", "r2"))
        self.assertEqual(after.message.seq, 3)
        repeat = yield self.store.append(msg(conv.id, "cust", "d1"))
        self.assertEqual((repeat.duplicate, repeat.message.msg_id), (True, degraded.message.msg_id))
        history = yield self.store.get_messages(conv.id, 0, 10)
        self.assertEqual([m.seq for m in history], [1, 2, 3])


class AppendBatchContract:
    """The group-commit transaction itself (storage/append.py), on a batch
    larger than one statement's chunk, against every SQL engine."""

    def make_db(self) -> Database:
        raise NotImplementedError

    def test_large_batch_across_conversations(self) -> None:
        """One batch of 1,200 appends over 300 conversations: each
        conversation's messages get its next seqs in request order, a key
        repeated inside the batch is a duplicate of the first, a missing
        conversation and a non-participant are refused alone, unread counts
        and last messages are what one-by-one appends would give; the same
        batch run again (a retry after an unknown commit) stores nothing
        twice and returns the same messages."""
        from supportchat.storage.append import append_batch_txn

        db = self.make_db()
        store = SqlConversationStore(db)
        t = self  # type: Any
        convs = []
        for n in range(300):
            conv, _ = t.successResultOf(store.open_conversation(f"cust{n}", 1000.0))
            t.successResultOf(store.append(AppendRequest(
                conversation_id=conv.id, sender_id=f"agent{n}", sender_role="agent", kind=EVENT,
                body="joined", ts=1001.0, data={"name": "joined"}, join=True, msg_id=f"mj{n}")))
            convs.append(conv.id)
        batch = []
        for n, conv_id in enumerate(convs):
            batch += [
                msg(conv_id, f"cust{n}", f"k{n}a", body="one", ts=1010.0, msg_id=f"m{n}a"),
                msg(conv_id, f"cust{n}", f"k{n}b", body="two", ts=1011.0, msg_id=f"m{n}b"),
                msg(conv_id, f"cust{n}", f"k{n}a", body="one", ts=1012.0, msg_id=f"m{n}dup"),
                msg(conv_id, f"agent{n}", f"k{n}c", role="agent", body="three", ts=1013.0, msg_id=f"m{n}c"),
            ]
        batch.append(msg("c-missing", "cust0", "x", msg_id="mx"))
        batch.append(msg(convs[0], "intruder", "y", msg_id="my"))

        first = t.successResultOf(db.run_interaction("append_batch", append_batch_txn, batch))
        again = t.successResultOf(db.run_interaction("append_batch", append_batch_txn, batch))
        self.assertIsInstance(first[-2], NotFound)
        self.assertIsInstance(first[-1], NotFound)
        for n, conv_id in enumerate(convs):
            a, b, dup, c = first[4 * n:4 * n + 4]
            self.assertEqual([a.message.seq, b.message.seq, c.message.seq], [2, 3, 4])  # the join is 1
            self.assertEqual((dup.duplicate, dup.message.msg_id), (True, a.message.msg_id))
            self.assertEqual([r.message.msg_id for r in again[4 * n:4 * n + 4]],
                             [f"m{n}a", f"m{n}b", f"m{n}a", f"m{n}c"])
            messages = t.successResultOf(store.get_messages(conv_id, 0, 10))
            self.assertEqual([m.seq for m in messages], [1, 2, 3, 4])
            [cust] = t.successResultOf(store.get_states(f"cust{n}"))
            [agent] = t.successResultOf(store.get_states(f"agent{n}"))
            self.assertEqual((cust.unread, cust.last_read_seq, cust.last_seq, cust.last_msg_id), (1, 3, 4, f"m{n}c"))
            self.assertEqual((agent.unread, agent.last_read_seq), (0, 4))


class SqliteAppendBatchTests(AppendBatchContract, unittest.TestCase):
    def make_db(self) -> Database:
        return threadless_sqlite(self)


class PostgresAppendBatchTests(AppendBatchContract, unittest.TestCase):
    def make_db(self) -> Database:
        return threadless_db(self, "postgresql")


class MariadbAppendBatchTests(AppendBatchContract, unittest.TestCase):
    def make_db(self) -> Database:
        return threadless_db(self, "mysql")
