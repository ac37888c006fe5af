"""The retention pass: small batches, each in its own transaction, with a
reactor turn between them; one pass at a time; off when retention_days is 0."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from supportchat.storage.history import Retention, SqlHistoryStore
from supportchat.storage.models import TEXT, AppendRequest
from supportchat.storage.sql import SqlConversationStore
from tests.dbs import threadless_db
from tests.support import make_config


class RetentionTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.db = threadless_db(self, "sqlite")
        self.store = SqlConversationStore(self.db)
        self.history = SqlHistoryStore(self.db)
        self.batches: list[int] = []
        real = self.history.retention_batch

        def counting(cutoff: float, batch: int) -> Any:
            return real(cutoff, batch).addCallback(lambda n: self.batches.append(n) or n)

        self.history.retention_batch = counting  # type: ignore[method-assign]

    def closed_conversation(self, customer: str, closed_at: float, messages: int) -> str:
        conv, _ = self.successResultOf(self.store.open_conversation(customer, 1.0))
        for i in range(messages):
            self.successResultOf(self.store.append(AppendRequest(
                conversation_id=conv.id, sender_id=customer, sender_role="customer", kind=TEXT,
                body=f"m{i}", ts=2.0 + i)))
        self.successResultOf(self.history.close_conversation(conv.id, closed_at))
        return conv.id

    def test_batches_yield_to_the_reactor(self) -> None:
        """A pass deletes at most `batch` messages per transaction and waits
        for a reactor turn before the next; a tick during a pass starts nothing."""
        clock = Clock()
        clock.advance(40 * 86400)
        old = self.closed_conversation("old", 1000.0, 10)
        kept = self.closed_conversation("kept", clock.seconds() - 86400, 3)
        retention = Retention(clock, self.history, days=30, batch=4)
        d = retention.tick()
        assert d is not None
        self.assertEqual(self.batches, [4])
        self.assertIsNone(retention.tick())  # still running
        self.assertNoResult(d)
        while not d.called:
            clock.advance(0)
        self.assertEqual(self.batches[:3], [4, 4, 2 + 1 + 1])  # last batch: 2 messages, participant, conversation
        self.assertEqual(self.batches[-1], 0)
        self.assertIsNone(self.successResultOf(self.store.get_conversation(old)))
        self.assertIsNotNone(self.successResultOf(self.store.get_conversation(kept)))
        self.assertEqual(retention.deleted, 12)
        self.assertIsNotNone(retention.tick())

    def test_off_by_default(self) -> None:
        """retention_days = 0 keeps everything: no timer service, and tick does nothing."""
        from twisted.internet import reactor

        from supportchat.app.services import build_service
        from supportchat.server import SupportChatServer

        config = make_config(self.mktemp())
        self.assertEqual(config.database.retention_days, 0)
        server = SupportChatServer(reactor, config)
        names = [s.name for s in build_service(server)]
        self.assertNotIn("retention", names)
        self.assertIsNone(server.get_retention().tick())
        on = SupportChatServer(reactor, make_config(self.mktemp(), database={"retention_days": 30}))
        self.assertIn("retention", [s.name for s in build_service(on)])
