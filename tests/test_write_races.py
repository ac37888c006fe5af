"""A message is acknowledged only if its row was written.

Appends and persister flushes insert with an insert-ignore keyed on msg_id.
On SQLite and MySQL that statement also skips a row whose (conversation,
seq) another writer took between our read and our insert (a persister, a
gateway in degraded mode, another process on one SQLite file), which used
to acknowledge a message that was never stored. The Redis fail-over test
found it; here the race is reproduced by committing the rival row directly."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from supportchat.storage.database import RowSkipped
from supportchat.storage.models import Message
from supportchat.storage.persist import persist_batch_txn
from supportchat.storage.sql import SqlConversationStore
from tests.test_storage_contract import msg, threadless_sqlite


class SeqTakenByAnotherWriterTests(unittest.TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.db = threadless_sqlite(self)
        self.store = SqlConversationStore(self.db)
        self.conv, _ = yield self.store.open_conversation("cust", 1000.0)

    def rival(self, seq: int, msg_id: str = "m-rival") -> None:
        """Another writer's committed row at ``seq``; conversations.last_seq
        not yet raised (what this writer read before the other committed)."""
        def insert(cur: Any) -> None:
            cur.execute(
                "INSERT INTO messages (conversation_id, msg_id, seq, sender_id, sender_role, client_msg_id, kind,"
                " body, ts, data) VALUES (?, ?, ?, 'agent', 'agent', NULL, 'text', 'rival', 1001.0, NULL)",
                (self.conv.id, msg_id, seq))
        self.successResultOf(self.db.run_interaction("rival", insert))

    @inlineCallbacks
    def test_append_whose_seq_was_taken_is_not_acknowledged(self) -> Any:
        """The append fails (the sender gets an error and retries) instead of
        returning a result for a row that was skipped; its retry is stored."""
        self.rival(self.conv.last_seq + 1)
        failure = yield self.assertFailure(self.store.append(msg(self.conv.id, "cust", "k1")), RowSkipped)
        self.assertIn("clashed", str(failure))
        self.flushLoggedErrors(RowSkipped)  # the failed batch is logged
        rows = self.db_rows()
        self.assertNotIn("k1", [r[1] for r in rows])
        self.db_raise_last_seq()
        retry = yield self.store.append(msg(self.conv.id, "cust", "k1"))
        self.assertIn((retry.message.seq, "k1"), self.db_rows())

    def test_flush_whose_seq_was_taken_rolls_back(self) -> None:
        """A flushed message whose row is skipped makes the batch fail (the
        persister retries it) rather than being acknowledged in the stream."""
        stored = Message(self.conv.id, "m-redis", self.conv.last_seq + 1, "cust", "customer", "k2", "text", "hi",
                         1002.0, None)

        def racing(cur: Any, messages: list[Message], window: float) -> Any:
            # The rival commits after the batch checked which seqs are taken.
            original = cur.execute

            def execute(sql: str, args: Any = ()) -> None:
                if sql.lstrip().upper().startswith("INSERT") and "messages" in sql and "idempotency" not in sql:
                    original(
                        "INSERT INTO messages (conversation_id, msg_id, seq, sender_id, sender_role, client_msg_id,"
                        " kind, body, ts, data) VALUES (?, 'm-rival', ?, 'agent', 'agent', NULL, 'text', 'r', 1.0,"
                        " NULL)", (self.conv.id, stored.seq))
                original(sql, args)

            cur.execute = execute
            return persist_batch_txn(cur, messages, window)

        self.failureResultOf(self.db.run_interaction("persist", racing, [stored], 86400.0), RowSkipped)
        self.assertNotIn("k2", [r[1] for r in self.db_rows()])

    def db_rows(self) -> list[tuple[int, str]]:
        def read(cur: Any) -> Any:
            cur.execute("SELECT seq, client_msg_id FROM messages WHERE conversation_id = ? ORDER BY seq",
                        (self.conv.id,))
            return [(int(r[0]), r[1]) for r in cur.fetchall()]
        return list(self.successResultOf(self.db.run_interaction("read", read)))

    def db_raise_last_seq(self) -> None:
        def raise_it(cur: Any) -> None:
            cur.execute("UPDATE conversations SET last_seq = (SELECT MAX(seq) FROM messages WHERE conversation_id = ?)"
                        " WHERE id = ?", (self.conv.id, self.conv.id))
        self.successResultOf(self.db.run_interaction("raise", raise_it))


