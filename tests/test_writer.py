"""The one write path: every producer's append, then publish, with one set of rules."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from supportchat.bus.interfaces import Delivery
from supportchat.bus.memory import LocalBus
from supportchat.handlers.writer import MessageWriter
from supportchat.metrics import Metrics
from supportchat.storage.memory import MemoryConversationStore
from supportchat.storage.models import EVENT, TEXT, AppendRequest, AppendResult, Conflict, NotFound


class WriterTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = MemoryConversationStore()
        self.bus = LocalBus()
        self.metrics = Metrics()
        self.writer = MessageWriter(self.clock, self.store, self.bus, self.metrics)
        self.published: list[Delivery] = []
        self.bus.subscribe(self.published.append)
        conv, _ = self.successResultOf(self.store.open_conversation("cust", self.clock.seconds()))
        self.conv = conv.id

    def written(self, kind: str, result: str) -> float:
        value = self.metrics.registry.get_sample_value("messages_written_total", {"kind": kind, "result": result})
        return value or 0.0

    def text(self, key: str, body: str = "hello") -> AppendRequest:
        return AppendRequest(self.conv, "cust", "customer", TEXT, body, self.clock.seconds(), client_msg_id=key)

    def test_appends_then_publishes_to_participants(self) -> None:
        """A new message is stored with its seq and published once to every
        participant, leaving out the connection that sent it."""
        result = self.successResultOf(self.writer.write(self.text("k1"), exclude_connection="s-1"))
        assert result is not None
        self.assertEqual(result.message.seq, 1)
        self.assertEqual(len(self.published), 1)
        delivery = self.published[0]
        self.assertEqual(delivery.frame["seq"], 1)
        self.assertEqual(delivery.user_ids, ("cust",))
        self.assertEqual(delivery.exclude_connection, "s-1")
        self.assertEqual(self.written(TEXT, "new"), 1)

    def test_on_stored_runs_before_the_publish(self) -> None:
        """The producer's own answer (an ack) goes out before anyone else hears of the message."""
        order: list[str] = []
        self.bus.subscribe(lambda d: order.append("published"))

        def stored(result: AppendResult) -> None:
            order.append(f"stored {result.message.seq}")

        self.successResultOf(self.writer.write(self.text("k1"), on_stored=stored))
        self.assertEqual(order, ["stored 1", "published"])

    def test_a_duplicate_is_not_published_again(self) -> None:
        """The same idempotency key returns the stored message, counted as a
        duplicate and not delivered a second time."""
        self.successResultOf(self.writer.write(self.text("k1")))
        again = self.successResultOf(self.writer.write(self.text("k1", "hello again")))
        assert again is not None
        self.assertTrue(again.duplicate)
        self.assertEqual(again.message.body, "hello")
        self.assertEqual(len(self.published), 1)
        self.assertEqual(self.written(TEXT, "duplicate"), 1)

    def test_republish_delivers_a_stored_duplicate(self) -> None:
        """``republish`` (the bot finishing a crashed node's decision) delivers
        the stored message even when it was already recorded."""
        self.successResultOf(self.writer.write(self.text("k1")))
        self.successResultOf(self.writer.write(self.text("k1"), republish=True))
        self.assertEqual([d.frame["seq"] for d in self.published], [1, 1])

    def test_join_twice_records_or_skips_as_asked(self) -> None:
        """A join by someone already in the conversation writes the event
        without joining again (``record``) or writes nothing (``skip``)."""
        first = self.successResultOf(self.writer.event(self.conv, "ann", "agent", "joined", {}, "Ann joined",
                                                       join=True))
        assert first is not None
        self.assertEqual({p.user_id for p in first.participants}, {"cust", "ann"})
        skipped = self.successResultOf(self.writer.event(self.conv, "ann", "agent", "joined", {}, "Ann joined",
                                                         join=True, if_joined="skip"))
        self.assertIsNone(skipped)
        recorded = self.successResultOf(self.writer.event(self.conv, "ann", "agent", "assigned", {"by": "auto"},
                                                          "Ann was assigned", join=True))
        assert recorded is not None
        self.assertEqual(recorded.message.seq, 2)
        self.assertEqual(recorded.message.kind, EVENT)
        self.assertEqual([d.frame["seq"] for d in self.published], [1, 2])
        self.assertEqual(self.written(EVENT, "new"), 2)

    def test_store_refusals_reach_the_producer_and_publish_nothing(self) -> None:
        """A refused append (not a participant, no such conversation) raises
        the store's error and tells nobody anything."""
        stranger = AppendRequest(self.conv, "eve", "customer", TEXT, "hi", self.clock.seconds(), client_msg_id="e")
        self.failureResultOf(self.writer.write(stranger), NotFound, Conflict)
        missing = AppendRequest("nope", "cust", "customer", TEXT, "hi", self.clock.seconds(), client_msg_id="m")
        self.failureResultOf(self.writer.write(missing), NotFound)
        self.assertEqual(self.published, [])

    def test_events_are_idempotent_by_key(self) -> None:
        """A workflow event written twice with one key (two nodes seeing the
        same change) is stored and delivered once."""
        for _ in range(2):
            self.successResultOf(self.writer.event(self.conv, "workflow", "system", "queued", {"team": ""},
                                                   "waiting", require_participant=False, key="workflow:queued:x"))
        stored: Any = self.successResultOf(self.store.get_messages(self.conv, 0, 10))
        self.assertEqual([m.seq for m in stored], [1])
        self.assertEqual(len(self.published), 1)
