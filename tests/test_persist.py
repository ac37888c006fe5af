"""The persister's SQL step on every engine: insert-if-new by msg_id,
refusals that go to the dead-letter stream, and the conversation state."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from supportchat.storage.models import EVENT, TEXT, AppendRequest, Message
from supportchat.storage.persist import persist_batch_txn
from supportchat.storage.sql import SqlConversationStore
from tests.dbs import threadless_db
from tests.test_storage_contract import threadless_sqlite


def m(conv: str, seq: int, sender: str = "cust", key: str | None = None, kind: str = TEXT, msg_id: str | None = None) -> Message:
    return Message(conv, msg_id or f"m-{conv}-{seq}", seq, sender, "customer", key if key is not None else f"k{seq}",
                   kind, f"body {seq}", 1000.0 + seq)


class PersistContract:
    def make_db(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.db = self.make_db()
        self.store = SqlConversationStore(self.db)
        self.conv, _ = self.successResultOf(self.store.open_conversation("cust", 1.0))  # type: ignore[attr-defined]

    def persist(self, messages: list[Message]) -> Any:
        return self.successResultOf(  # type: ignore[attr-defined]
            self.db.run_interaction("persist", persist_batch_txn, messages, 86400.0))

    def test_replayed_batch_changes_nothing(self) -> None:
        """A batch flushed twice (a persister died before XACK) is stored once."""
        batch = [m(self.conv.id, s) for s in range(1, 6)]
        self.assertEqual(self.persist(batch), (5, [], {}))
        self.assertEqual(self.persist(batch), (0, [], {}))
        rows = self.successResultOf(self.store.get_messages(self.conv.id, 0, 100))  # type: ignore[attr-defined]
        self.assertEqual(rows, batch)

    def test_conversation_and_session_state_follow(self) -> None:
        """last_seq/last_msg_id move forward only; unread counts the others' texts."""
        self.persist([m(self.conv.id, 2), m(self.conv.id, 1, kind=EVENT, sender="agent", key="")])
        self.persist([m(self.conv.id, 3, sender="agent", key="a3")])
        conv = self.successResultOf(self.store.get_conversation(self.conv.id))  # type: ignore[attr-defined]
        self.assertEqual((conv.last_seq, conv.last_msg_id), (3, f"m-{self.conv.id}-3"))
        self.persist([m(self.conv.id, 3, sender="agent", key="a3")])  # replay: nothing moves back
        [state] = self.successResultOf(self.store.get_states("cust"))  # type: ignore[attr-defined]
        self.assertEqual((state.unread, state.last_read_seq), (1, 2))

    def test_clashes_after_redis_lost_writes_are_repaired(self) -> None:
        """A seq taken by another message moves the newcomer to the end (and
        says so, so Redis's counter can be raised); a retry whose
        client_msg_id is stored as another message becomes a 'duplicate'
        event at its seq; an unknown conversation is refused. No hole, no loss."""
        self.persist([m(self.conv.id, 1), m(self.conv.id, 2)])
        taken = m(self.conv.id, 1, key="other", msg_id="m-dupe-seq")
        unknown = m("c-unknown", 1)
        retry = m(self.conv.id, 3, key="k1", msg_id="m-second-copy")
        fine = m(self.conv.id, 4, key="k4")
        result = self.persist([taken, unknown, retry, fine])
        self.assertEqual(result.refused, [unknown.msg_id])
        self.assertEqual(result.resequenced, {self.conv.id: 5})
        rows = self.successResultOf(self.store.get_messages(self.conv.id, 0, 100))  # type: ignore[attr-defined]
        self.assertEqual([r.seq for r in rows], [1, 2, 3, 4, 5])
        self.assertEqual((rows[2].kind, rows[2].data), (EVENT, {"name": "duplicate", "of": f"m-{self.conv.id}-1"}))
        self.assertEqual((rows[4].msg_id, rows[4].client_msg_id), ("m-dupe-seq", "other"))
        self.assertEqual(self.persist([taken, retry, fine]).inserted, 0)  # replays change nothing

    def test_a_retry_on_its_own_copys_seq_becomes_a_duplicate_at_the_end(self) -> None:
        """The fail-over case: a copy was committed to SQL (degraded mode)
        and the acknowledged retry through Redis got the same seq. The
        retry's entry is neither dropped nor stored twice: it becomes a
        'duplicate' event of the copy at the end, so its acknowledged
        msg_id exists and names the stored message."""
        self.persist([m(self.conv.id, 1), m(self.conv.id, 2, key="k2", msg_id="m-sql-copy")])
        retry = m(self.conv.id, 2, key="k2", msg_id="m-acked-retry")
        result = self.persist([retry])
        self.assertEqual(result.resequenced, {self.conv.id: 3})
        rows = self.successResultOf(self.store.get_messages(self.conv.id, 0, 100))  # type: ignore[attr-defined]
        self.assertEqual([(r.seq, r.msg_id, r.client_msg_id) for r in rows],
                         [(1, f"m-{self.conv.id}-1", "k1"), (2, "m-sql-copy", "k2"), (3, "m-acked-retry", None)])
        self.assertEqual((rows[2].kind, rows[2].data), (EVENT, {"name": "duplicate", "of": "m-sql-copy"}))
        self.assertEqual(self.persist([retry]).inserted, 0)  # a replay changes nothing

    def test_large_mixed_batch(self) -> None:
        """One batch of over a thousand messages over 250 conversations
        (more ids than one statement takes), interleaved as the stream has
        them: a replay of stored messages, a retry whose key is stored as
        another message (a 'duplicate' event at its seq), a seq stored
        already and a seq repeated inside the batch (both moved to the end
        and reported), an unknown conversation (refused). Seqs keep no hole,
        read positions and unread counts are what the append path gives
        (a sender has read up to their message; the others' texts after it
        are unread), and the whole batch replayed stores nothing."""
        t: Any = self
        convs = []
        for n in range(330):
            conv, _ = t.successResultOf(self.store.open_conversation(f"cust{n}", 1.0))
            t.successResultOf(self.store.append(AppendRequest(
                conversation_id=conv.id, sender_id=f"agent{n}", sender_role="agent", kind=EVENT, body="joined",
                ts=2.0, data={"name": "joined"}, join=True, msg_id=f"mj{n}")))
            convs.append(conv.id)

        def one(n: int, seq: int, sender: str, key: str, msg_id: str | None = None) -> Message:
            role = "agent" if sender == "agent" else "customer"
            return Message(convs[n], msg_id or f"m{n}-{seq}", seq, f"{sender}{n}", role, key, TEXT, f"b{seq}",
                           1000.0 + seq)

        early = [one(n, 2, "cust", f"p{n}") for n in range(20)]
        self.assertEqual(self.persist(early).inserted, 20)
        per_conv: list[list[Message]] = []
        for n in range(330):
            if n < 10:  # a replay, then a retry of the stored message under a new msg_id
                msgs = [early[n], one(n, 3, "cust", f"p{n}", msg_id=f"retry{n}")]
                msgs += [one(n, 4, "cust", f"a{n}"), one(n, 5, "agent", f"b{n}"), one(n, 6, "cust", f"c{n}")]
            elif n < 20:  # seq 2 is stored already
                msgs = [one(n, 2, "cust", f"clash{n}", msg_id=f"clash{n}")]
                msgs += [one(n, 3, "cust", f"a{n}"), one(n, 4, "agent", f"b{n}"), one(n, 5, "cust", f"c{n}")]
            else:
                msgs = [one(n, 2, "cust", f"a{n}"), one(n, 3, "agent", f"b{n}"), one(n, 4, "cust", f"c{n}")]
                if n == 30:  # seq 4 twice in the batch
                    msgs.append(one(n, 4, "cust", "twin", msg_id="twin"))
            per_conv.append(msgs)
        batch = [msgs[i] for i in range(5) for msgs in per_conv if i < len(msgs)]
        batch.insert(500, Message("c-unknown", "m-unknown", 1, "cust", "customer", "u", TEXT, "x", 1000.0))
        self.assertGreater(len(batch), 990)

        result = self.persist(batch)
        self.assertEqual(result.refused, ["m-unknown"])
        self.assertEqual(result.resequenced, {**{convs[n]: 6 for n in range(10, 20)}, convs[30]: 5})
        self.assertEqual(result.inserted, len(batch) - 10 - 1)  # the replays and the unknown one
        for n in range(330):
            rows = t.successResultOf(self.store.get_messages(convs[n], 0, 100))
            [cust] = t.successResultOf(self.store.get_states(f"cust{n}"))
            [agent] = t.successResultOf(self.store.get_states(f"agent{n}"))
            states = ((cust.last_read_seq, cust.unread), (agent.last_read_seq, agent.unread))
            if n < 10:
                self.assertEqual([r.seq for r in rows], [1, 2, 3, 4, 5, 6])
                self.assertEqual((rows[2].kind, rows[2].data), (EVENT, {"name": "duplicate", "of": f"m{n}-2"}))
                self.assertEqual(states, ((6, 0), (5, 1)))
            elif n < 20:
                self.assertEqual([(r.seq, r.msg_id) for r in rows][-2:], [(5, f"m{n}-5"), (6, f"clash{n}")])
                self.assertEqual(states, ((6, 0), (4, 2)))
            elif n == 30:
                self.assertEqual([(r.seq, r.msg_id) for r in rows][-2:], [(4, f"m{n}-4"), (5, "twin")])
                self.assertEqual(states, ((5, 0), (3, 2)))
            else:
                self.assertEqual([r.seq for r in rows], [1, 2, 3, 4])
                self.assertEqual(states, ((4, 0), (3, 1)))
            self.assertEqual((cust.last_seq, cust.last_msg_id), (rows[-1].seq, rows[-1].msg_id))

        again = self.persist(batch)
        self.assertEqual((again.inserted, again.resequenced), (0, {}))
        rows = t.successResultOf(self.store.get_messages(convs[30], 0, 100))
        self.assertEqual(len(rows), 5)
        [cust] = t.successResultOf(self.store.get_states("cust30"))
        self.assertEqual((cust.last_read_seq, cust.unread), (5, 0))


class SqlitePersistTests(PersistContract, unittest.SynchronousTestCase):
    def make_db(self) -> Any:
        return threadless_sqlite(self)


class PostgresPersistTests(PersistContract, unittest.SynchronousTestCase):
    def make_db(self) -> Any:
        return threadless_db(self, "postgresql")


class MariadbPersistTests(PersistContract, unittest.SynchronousTestCase):
    def make_db(self) -> Any:
        return threadless_db(self, "mysql")
