"""The per-hop latency budget: parse, append (queue wait and commit),
publish and deliver, each timed into its histogram on /metrics."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from supportchat.auth import Principal
from supportchat.bus.interfaces import Delivery
from supportchat.bus.memory import LocalBus
from supportchat.handlers.connections import ClientSession, ConnectionRegistry
from supportchat.handlers.writer import MessageWriter
from supportchat.metrics import Metrics
from supportchat.storage.memory import MemoryConversationStore
from supportchat.storage.models import TEXT, AppendRequest
from supportchat.storage.sql import SqlConversationStore


class FakeTime:
    """A perf_counter the test moves."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class HeldDatabase:
    """run_interaction whose transactions the test commits by hand."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[AppendRequest], Deferred[Any]]] = []

    def run_interaction(self, name: str, fn: Any, requests: list[AppendRequest]) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.calls.append((requests, d))
        return d


class Sink:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_text(self, payload: str) -> None:
        self.sent.append(payload)

    def close(self, code: int, reason: str) -> None:
        pass


def sample(metrics: Metrics, name: str, suffix: str) -> float:
    return metrics.registry.get_sample_value(f"{name}_{suffix}") or 0.0


class HopTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.time = FakeTime()
        self.metrics = Metrics(now=self.time)

    def test_group_commit_splits_queue_wait_from_commit(self) -> None:
        """An append's wait for its batch goes to append_queue_seconds (one
        per message) and each batch's transaction to append_commit_seconds
        (one per batch)."""
        db = HeldDatabase()
        store = SqlConversationStore(db, metrics=self.metrics)  # type: ignore[arg-type]

        def req(key: str) -> AppendRequest:
            return AppendRequest("c1", "cust", "customer", TEXT, "hi", 1000.0, client_msg_id=key)

        store.append(req("a"))  # starts a transaction at once: no wait
        self.time.t += 1.0
        store.append(req("b"))
        store.append(req("c"))  # both wait behind the first transaction
        self.time.t += 2.0
        db.calls[0][1].callback([object()])  # first commit: 3 s after it started; b and c start now
        self.assertEqual(len(db.calls), 2)
        self.time.t += 0.5
        db.calls[1][1].callback([object(), object()])
        self.assertEqual(sample(self.metrics, "append_queue_seconds", "count"), 3)
        self.assertEqual(sample(self.metrics, "append_queue_seconds", "sum"), 4.0)  # 0 + 2 + 2
        self.assertEqual(sample(self.metrics, "append_commit_seconds", "count"), 2)
        self.assertEqual(sample(self.metrics, "append_commit_seconds", "sum"), 3.5)  # 3 + 0.5

    def test_writer_times_append_and_publish(self) -> None:
        """The writer times the store's append and the bus's publish of each
        new message; a duplicate is timed for its append only (not published)."""
        clock = Clock()
        store = MemoryConversationStore()
        bus = LocalBus()
        writer = MessageWriter(clock, store, bus, self.metrics)
        conv, _ = self.successResultOf(store.open_conversation("cust", 0.0))

        def publish_slowly(delivery: Delivery) -> None:
            self.time.t += 0.25

        bus.subscribe(publish_slowly)
        request = AppendRequest(conv.id, "cust", "customer", TEXT, "hi", 0.0, client_msg_id="k")
        self.successResultOf(writer.write(request))
        self.successResultOf(writer.write(request))
        self.assertEqual(sample(self.metrics, "message_append_seconds", "count"), 2)
        self.assertEqual(sample(self.metrics, "message_publish_seconds", "count"), 1)
        self.assertEqual(sample(self.metrics, "message_publish_seconds", "sum"), 0.25)

    def test_deliver_is_timed_when_it_reaches_a_connection(self) -> None:
        """Pushing a bus delivery to local sessions is timed into
        message_deliver_seconds; a delivery with no local recipient is not."""
        from supportchat.handlers.assemble import build_router
        from supportchat.background import BackgroundTasks
        from supportchat.config import ChatConfig
        from supportchat.storage.memory import MemoryPresenceStore

        clock = Clock()
        bus = LocalBus()
        registry = ConnectionRegistry()
        store = MemoryConversationStore()
        router = build_router(
            clock=clock, store=store, bus=bus, presence=MemoryPresenceStore(clock, 60), registry=registry,
            metrics=self.metrics, background=BackgroundTasks(), config=ChatConfig(), heartbeat=30,
            writer=MessageWriter(clock, store, bus, self.metrics),
        )
        self.addCleanup(router.stop)
        session = ClientSession(Principal(user_id="u1", role="customer", name="U"), Sink())
        session.ready = True
        registry.add(session)
        bus.publish(Delivery(frame={"type": "message", "body": "x"}, user_ids=("nobody",)))
        self.assertEqual(sample(self.metrics, "message_deliver_seconds", "count"), 0)
        bus.publish(Delivery(frame={"type": "message", "body": "x"}, user_ids=(session.user_id,)))
        self.assertEqual(sample(self.metrics, "message_deliver_seconds", "count"), 1)
