"""Business hours in the workflow: outside ``[bot] business_hours`` a
conversation entering the queue (at start, at the bot's handoff, on
reopen) gets one ``after_hours`` event saying when agents work again; on a
fixed clock, with the chat and workflow handlers on in-memory twins."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from supportchat.auth import Principal
from supportchat.background import BackgroundTasks
from supportchat.hours import BusinessHours
from supportchat.bus.memory import LocalBus
from supportchat.config import ChatConfig
from supportchat.config.model import WorkflowConfig
from supportchat.handlers.assemble import build_router
from supportchat.handlers.connections import ClientSession, ConnectionRegistry
from supportchat.handlers.queue import WorkQueue
from supportchat.handlers.writer import MessageWriter
from supportchat.metrics import Metrics
from supportchat.storage.memory import MemoryConversationStore, MemoryPresenceStore
from supportchat.workflow.memory import MemoryWorkflowStore
from supportchat.wire.frames import parse_frame
from tests.test_chat_handler import FakeTransport

SATURDAY_NOON = datetime(2025, 1, 4, 12, 0, tzinfo=timezone.utc).timestamp()
MONDAY_NINE = datetime(2025, 1, 6, 9, 0, tzinfo=timezone.utc).timestamp()
TUESDAY_TEN = datetime(2025, 1, 7, 10, 0, tzinfo=timezone.utc).timestamp()
HOURS = ["mon-fri 09:00-18:00"]


class HoursTests(unittest.SynchronousTestCase):
    def test_next_open(self) -> None:
        """next_open: now when open, the next opening otherwise (also across a time zone), None without rules."""
        hours = BusinessHours(HOURS)
        self.assertEqual(hours.next_open(SATURDAY_NOON), MONDAY_NINE)
        self.assertEqual(hours.next_open(TUESDAY_TEN), TUESDAY_TEN)
        self.assertEqual(hours.next_open(TUESDAY_TEN + 9 * 3600), TUESDAY_TEN + 23 * 3600)  # 19:00 -> Wed 09:00
        self.assertEqual(hours.describe(MONDAY_NINE), "Mon 06 Jan 09:00 UTC")
        shanghai = BusinessHours(HOURS, "Asia/Shanghai")
        self.assertEqual(shanghai.next_open(SATURDAY_NOON), MONDAY_NINE - 8 * 3600)
        self.assertIsNone(BusinessHours([]).next_open(SATURDAY_NOON))


class HandlerHarness:
    """The chat and workflow handlers on in-memory twins and a fixed clock."""

    def make(self, now: float, bot_first: bool = False, reply: bool = True) -> None:
        self.clock = Clock()
        self.clock.advance(now)
        self.store = MemoryConversationStore()
        self.wf = MemoryWorkflowStore(self.store)
        self.bus = LocalBus()
        self.background = BackgroundTasks()
        registry = ConnectionRegistry()
        presence = MemoryPresenceStore(self.clock, 35)
        metrics = Metrics()
        writer = MessageWriter(self.clock, self.store, self.bus, metrics)
        self.workflow = WorkQueue(self.clock, self.store, self.wf, writer, self.bus, registry, presence,
                                  self.background, WorkflowConfig(after_hours_reply=reply),
                                  bot_first=bot_first, hours=BusinessHours(HOURS))
        self.handler = build_router(
            clock=self.clock, store=self.store, bus=self.bus, presence=presence, registry=registry,
            metrics=metrics, background=self.background, config=ChatConfig(), heartbeat=30,
            writer=writer, queue=self.workflow,
        )
        self.addCleanup(self.workflow.stop)

    def start(self) -> tuple[ClientSession, FakeTransport, str]:
        t = FakeTransport()
        s = ClientSession(Principal("cust", "customer", None), t)
        self.successResultOf(self.handler.on_open(s))
        self.send(s, {"type": "start", "ref": "s"})
        return s, t, str(t.of_type("conversation")[-1]["conversation"]["id"])

    def send(self, session: ClientSession, frame: dict[str, Any]) -> None:
        self.successResultOf(self.handler.on_frame(session, parse_frame(json.dumps(frame), 4000, 500)))

    def events(self, conv: str) -> list[str]:
        """The names of the stored lifecycle events, in seq order."""
        stored = self.successResultOf(self.store.get_messages(conv, 0, 100))
        return [m.data["name"] for m in stored if m.kind == "event" and m.data]


class AfterHoursTests(HandlerHarness, unittest.TestCase):
    def after_hours(self, t: FakeTransport) -> list[dict[str, Any]]:
        return [f for f in t.of_type("message") if (f.get("event") or {}).get("name") == "after_hours"]

    def test_queued_outside_hours_gets_one_auto_reply(self) -> None:
        """Saturday noon: the queued customer gets an after_hours event naming Monday 09:00 (stored, in sync)."""
        self.make(SATURDAY_NOON)
        s, t, conv = self.start()
        [event] = self.after_hours(t)
        self.assertEqual((event["kind"], event["sender"]["role"], event["event"]["next_open"]),
                         ("event", "system", MONDAY_NINE))
        self.assertIn("Mon 06 Jan 09:00 UTC", event["body"])
        stored = self.successResultOf(self.store.get_messages(conv, 0, 10))
        self.assertEqual([m.data["name"] for m in stored if m.data], ["created", "queued", "after_hours"])
        self.send(s, {"type": "start", "ref": "s2"})  # the same open conversation again: no second reply
        self.assertEqual(len(self.after_hours(t)), 1)

    def test_within_hours_or_switched_off_no_reply(self) -> None:
        """Tuesday 10:00, or after_hours_reply = false: no automatic event."""
        self.make(TUESDAY_TEN)
        _, t, _ = self.start()
        self.assertEqual(self.after_hours(t), [])
        self.make(SATURDAY_NOON, reply=False)
        _, t, _ = self.start()
        self.assertEqual(self.after_hours(t), [])

    def test_bot_first_replies_at_handoff_once(self) -> None:
        """With the bot first nothing is said at start; the handoff queues it and says when agents work,
        once even if the handoff is seen twice."""
        self.make(SATURDAY_NOON, bot_first=True)
        _, t, conv = self.start()
        self.assertEqual((self.after_hours(t), t.of_type("queue")), ([], []))
        self.successResultOf(self.workflow.on_handoff(conv))
        self.successResultOf(self.workflow.on_handoff(conv))
        self.assertEqual(len(self.after_hours(t)), 1)
        self.assertEqual(t.of_type("queue")[-1]["position"], 1)
