"""One contract per storage seam, run against the in-memory twin and every
real implementation (SQLite here; later issues add PostgreSQL, MySQL, Redis)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from supportchat.bus.interfaces import Delivery
from supportchat.bus.memory import LocalBus
from supportchat.storage.database import Database
from supportchat.storage.engines import SqliteEngine
from supportchat.storage.memory import MemoryConversationStore, MemoryIdempotencyStore, MemoryPresenceStore
from supportchat.storage.models import EVENT, TEXT, AppendRequest, Conflict, IdempotencyRecord, NotFound
from supportchat.storage.sql import SqlConversationStore, SqlIdempotencyStore


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

    def ok(self, d: "Deferred[Any]") -> Any:
        return self.successResultOf(d)  # type: ignore[attr-defined]

    def open(self, customer: str = "cust", now: float = 1000.0) -> Any:
        conv, created = self.ok(self.store.open_conversation(customer, now))
        return conv

    def join(self, conv: str, agent: str = "agent", ts: float = 1001.0) -> Any:
        return self.ok(self.store.append(AppendRequest(
            conversation_id=conv, sender_id=agent, sender_role="agent", kind=EVENT,
            body="joined", ts=ts, data={"name": "joined"}, join=True,
        )))

    def test_open_conversation_is_reused_while_open(self) -> None:
        """A customer with an open conversation gets that one back."""
        conv, created = self.ok(self.store.open_conversation("cust", 1.0))
        again, created_again = self.ok(self.store.open_conversation("cust", 2.0))
        other, _ = self.ok(self.store.open_conversation("someone-else", 3.0))
        self.assertTrue(created)
        self.assertFalse(created_again)
        self.assertEqual(again.id, conv.id)
        self.assertNotEqual(other.id, conv.id)
        self.assertEqual(conv.status, "open")
        self.assertEqual(conv.customer_id, "cust")

    def test_seq_starts_at_one_without_gaps(self) -> None:
        """Each append gets the next seq: 1, 2, 3 ... per conversation."""
        a = self.open("a")
        b = self.open("b")
        seqs_a = [self.ok(self.store.append(msg(a.id, "a", f"k{i}"))).message.seq for i in range(5)]
        seqs_b = [self.ok(self.store.append(msg(b.id, "b", f"k{i}"))).message.seq for i in range(3)]
        self.assertEqual(seqs_a, [1, 2, 3, 4, 5])
        self.assertEqual(seqs_b, [1, 2, 3])
        conv = self.ok(self.store.get_conversation(a.id))
        self.assertEqual(conv.last_seq, 5)

    def test_repeated_client_msg_id_is_stored_once(self) -> None:
        """The same (sender, client_msg_id) returns the original result and stores nothing new."""
        conv = self.open()
        first = self.ok(self.store.append(msg(conv.id, "cust", "same", body="one")))
        second = self.ok(self.store.append(msg(conv.id, "cust", "same", body="one", ts=1005.0)))
        self.assertFalse(first.duplicate)
        self.assertTrue(second.duplicate)
        self.assertEqual(second.message.msg_id, first.message.msg_id)
        self.assertEqual(second.message.seq, first.message.seq)
        self.assertEqual(second.message.ts, first.message.ts)
        self.assertEqual(len(self.ok(self.store.get_messages(conv.id, 0, 100))), 1)

    def test_idempotency_window_expires(self) -> None:
        """After the window a client_msg_id may be used again for a new message."""
        conv = self.open()
        first = self.ok(self.store.append(msg(conv.id, "cust", "k", ts=1000.0, idempotency_window=300.0)))
        later = self.ok(self.store.append(msg(conv.id, "cust", "k", ts=1301.0, idempotency_window=300.0)))
        self.assertFalse(later.duplicate)
        self.assertEqual(later.message.seq, first.message.seq + 1)

    def test_same_client_msg_id_from_other_sender_is_distinct(self) -> None:
        """Idempotency keys are per sender."""
        conv = self.open()
        self.join(conv.id)
        a = self.ok(self.store.append(msg(conv.id, "cust", "k")))
        b = self.ok(self.store.append(msg(conv.id, "agent", "k", role="agent")))
        self.assertFalse(b.duplicate)
        self.assertNotEqual(a.message.msg_id, b.message.msg_id)

    def test_non_participant_cannot_append(self) -> None:
        """A user who is not in the conversation gets NotFound; a missing conversation too."""
        conv = self.open()
        self.failureResultOf(self.store.append(msg(conv.id, "intruder", "k")), NotFound)  # type: ignore[attr-defined]
        self.failureResultOf(self.store.append(msg("c-missing", "cust", "k")), NotFound)  # type: ignore[attr-defined]
        self.assertEqual(self.ok(self.store.get_messages(conv.id, 0, 10)), [])

    def test_join_is_a_sequenced_event_once(self) -> None:
        """Joining appends an event with a seq and adds the participant; joining again conflicts."""
        conv = self.open()
        result = self.join(conv.id)
        self.assertEqual(result.message.seq, 1)
        self.assertEqual(result.message.kind, EVENT)
        self.assertEqual(result.message.data, {"name": "joined"})
        users = sorted(p.user_id for p in self.ok(self.store.get_participants(conv.id)))
        self.assertEqual(users, ["agent", "cust"])
        self.assertEqual(sorted(p.user_id for p in result.participants), ["agent", "cust"])
        d = self.store.append(AppendRequest(
            conversation_id=conv.id, sender_id="agent", sender_role="agent", kind=EVENT,
            body="joined", ts=1002.0, join=True,
        ))
        self.failureResultOf(d, Conflict)  # type: ignore[attr-defined]

    def test_get_messages_pages_in_seq_order(self) -> None:
        """get_messages returns seq > after_seq ascending, at most limit."""
        conv = self.open()
        for i in range(7):
            self.ok(self.store.append(msg(conv.id, "cust", f"k{i}", body=f"b{i}", ts=1000.0 + i)))
        page = self.ok(self.store.get_messages(conv.id, 2, 3))
        self.assertEqual([m.seq for m in page], [3, 4, 5])
        self.assertEqual([m.body for m in page], ["b2", "b3", "b4"])
        self.assertEqual([m.seq for m in self.ok(self.store.get_messages(conv.id, 5, 100))], [6, 7])
        self.assertEqual(self.ok(self.store.get_messages(conv.id, 7, 100)), [])

    def test_message_fields_round_trip(self) -> None:
        """What is stored is what is read back, Unicode included."""
        conv = self.open()
        body = "你好, 👋 \"quoted\" \n newline"
        stored = self.ok(self.store.append(msg(conv.id, "cust", "k1", body=body, ts=1234.5))).message
        [read] = self.ok(self.store.get_messages(conv.id, 0, 10))
        self.assertEqual(read, stored)
        self.assertEqual(read.body, body)
        self.assertEqual(read.sender_id, "cust")
        self.assertEqual(read.client_msg_id, "k1")

    def test_unread_counts_and_last_message(self) -> None:
        """Unread counts the others' text messages; reading sets it to what follows the read seq."""
        conv = self.open()
        self.join(conv.id)
        for i in range(3):
            self.ok(self.store.append(msg(conv.id, "cust", f"c{i}", ts=1010.0 + i)))
        last = self.ok(self.store.append(msg(conv.id, "agent", "a0", role="agent", ts=1020.0))).message
        [agent_state] = self.ok(self.store.get_states("agent"))
        [cust_state] = self.ok(self.store.get_states("cust"))
        self.assertEqual(agent_state.unread, 0)  # sending marks everything before as read
        self.assertEqual(cust_state.unread, 1)
        self.assertEqual(cust_state.last_msg_id, last.msg_id)
        self.assertEqual(cust_state.last_ts, 1020.0)
        self.assertEqual(cust_state.last_seq, 5)
        unread = self.ok(self.store.mark_read("cust", conv.id, 5))
        self.assertEqual(unread, 0)
        self.ok(self.store.append(msg(conv.id, "agent", "a1", role="agent", ts=1021.0)))
        self.ok(self.store.append(msg(conv.id, "agent", "a2", role="agent", ts=1022.0)))
        self.assertEqual(self.ok(self.store.get_states("cust"))[0].unread, 2)
        self.assertEqual(self.ok(self.store.mark_read("cust", conv.id, 6)), 1)
        self.assertEqual(self.ok(self.store.get_states("cust"))[0].last_read_seq, 6)

    def test_mark_read_requires_participation(self) -> None:
        """Only participants have a read position."""
        conv = self.open()
        self.failureResultOf(self.store.mark_read("intruder", conv.id, 1), NotFound)  # type: ignore[attr-defined]

    def test_lists(self) -> None:
        """Users see their open conversations; agents see the unassigned queue oldest first."""
        c1 = self.open("c1", now=1.0)
        c2 = self.open("c2", now=2.0)
        self.join(c1.id, "agent")
        self.assertEqual([c.id for c in self.ok(self.store.list_conversations("agent"))], [c1.id])
        self.assertEqual([c.id for c in self.ok(self.store.list_conversations("c2"))], [c2.id])
        self.assertEqual([c.id for c in self.ok(self.store.list_unassigned(10))], [c2.id])
        self.assertIsNone(self.ok(self.store.get_conversation("nope")))


class MemoryConversationStoreTests(ConversationStoreContract, unittest.SynchronousTestCase):
    def make_store(self) -> Any:
        return MemoryConversationStore()


class SqliteConversationStoreTests(ConversationStoreContract, unittest.SynchronousTestCase):
    def make_store(self) -> Any:
        return SqlConversationStore(threadless_sqlite(self))


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


class PresenceStoreContract:
    def make_store(self, clock: Clock, ttl: float) -> Any:
        raise NotImplementedError

    def test_presence_expires_without_heartbeat(self) -> None:
        """Online until the TTL passes without a touch; removing a connection is immediate."""
        clock = Clock()
        store = self.make_store(clock, 35)
        ok = self.successResultOf  # type: ignore[attr-defined]
        ok(store.touch("u", "s1"))
        ok(store.touch("u", "s2"))
        clock.advance(30)
        ok(store.touch("u", "s1"))
        self.assertTrue(ok(store.is_online("u")))
        clock.advance(34)
        self.assertTrue(ok(store.is_online("u")))
        self.assertEqual(ok(store.online_users()), ["u"])
        clock.advance(2)
        self.assertFalse(ok(store.is_online("u")))
        ok(store.touch("v", "s3"))
        ok(store.remove("v", "s3"))
        self.assertFalse(ok(store.is_online("v")))
        self.assertEqual(ok(store.online_users()), [])


class MemoryPresenceTests(PresenceStoreContract, unittest.SynchronousTestCase):
    def make_store(self, clock: Clock, ttl: float) -> Any:
        return MemoryPresenceStore(clock, ttl)


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
