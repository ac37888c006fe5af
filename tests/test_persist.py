"""The persister's SQL step on every engine: insert-if-new by msg_id,
refusals that go to the dead-letter stream, and the conversation state."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from supportchat.storage.models import EVENT, TEXT, Message
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


class SqlitePersistTests(PersistContract, unittest.SynchronousTestCase):
    def make_db(self) -> Any:
        return threadless_sqlite(self)


class PostgresPersistTests(PersistContract, unittest.SynchronousTestCase):
    def make_db(self) -> Any:
        return threadless_db(self, "postgresql")


class MariadbPersistTests(PersistContract, unittest.SynchronousTestCase):
    def make_db(self) -> Any:
        return threadless_db(self, "mysql")
