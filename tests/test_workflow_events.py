"""The conversation lifecycle as sequenced events: ``created`` and
``queued`` open every conversation's log (``queued`` after the bot's
handoff when the bot answers first), each entry into the queue is recorded
once however often it is observed, and reopening records ``reopened`` and
``queued`` again; on in-memory twins with a fixed clock."""

from __future__ import annotations

from twisted.trial import unittest

from supportchat.auth import Principal
from supportchat.handlers.connections import ClientSession
from tests.test_chat_handler import FakeTransport
from tests.test_workflow_hours import TUESDAY_TEN, HandlerHarness


class LifecycleEventTests(HandlerHarness, unittest.TestCase):
    def test_new_conversation_starts_with_created_then_queued(self) -> None:
        """A new conversation's log starts created (seq 1), queued (seq 2), both from the
        workflow, delivered live; a second start of the same conversation adds nothing."""
        self.make(TUESDAY_TEN)
        s, t, conv = self.start()
        live = [(f["seq"], f["sender"]["id"], f["event"]["name"]) for f in t.of_type("message")]
        self.assertEqual(live, [(1, "workflow", "created"), (2, "workflow", "queued")])
        self.assertEqual(t.of_type("message")[1]["event"]["reason"], "new")
        self.assertEqual(t.of_type("queue")[-1]["position"], 1)
        self.send(s, {"type": "start", "ref": "again"})
        self.assertEqual(self.events(conv), ["created", "queued"])

    def test_bot_first_is_queued_at_handoff_once(self) -> None:
        """With the bot first only created is logged at start; the handoff, seen twice
        (by the bot node and by an observer), logs queued once with reason handoff."""
        self.make(TUESDAY_TEN, bot_first=True)
        _, t, conv = self.start()
        self.assertEqual(self.events(conv), ["created"])
        self.successResultOf(self.workflow.on_handoff(conv))
        self.successResultOf(self.workflow.on_handoff(conv))
        self.assertEqual(self.events(conv), ["created", "queued"])
        self.assertEqual(t.of_type("message")[-1]["event"]["reason"], "handoff")

    def test_each_reopen_logs_reopened_and_queued(self) -> None:
        """Close then write: reopened and queued are logged before the message; a second
        close and reopen logs the pair again (one per close), never more."""
        self.make(TUESDAY_TEN)
        s, t, conv = self.start()
        for i in range(2):
            self.send(s, {"type": "close", "conversation": conv, "ref": f"close{i}"})
            self.clock.advance(5)
            self.send(s, {"type": "message", "conversation": conv, "client_msg_id": f"m{i}", "body": "one more"})
            self.send(s, {"type": "message", "conversation": conv, "client_msg_id": f"n{i}", "body": "and another"})
        self.assertEqual(self.events(conv), ["created", "queued"] + ["closed", "reopened", "queued"] * 2)
        stored = self.successResultOf(self.store.get_messages(conv, 0, 100))
        self.assertEqual([m.seq for m in stored], list(range(1, len(stored) + 1)))
        after_reopen = [m.kind for m in stored][4:6]
        self.assertEqual(after_reopen, ["event", "text"])  # queued, then the message that reopened it


class OfflineRequeueTests(HandlerHarness, unittest.TestCase):
    def agent(self, user_id: str) -> tuple[ClientSession, FakeTransport]:
        t = FakeTransport()
        s = ClientSession(Principal(user_id, "agent", user_id.title()), t)
        self.successResultOf(self.handler.on_open(s))
        return s, t

    def taken(self) -> tuple[FakeTransport, str, ClientSession]:
        self.make(TUESDAY_TEN)
        _, cust, conv = self.start()
        ann, _ = self.agent("ann")
        self.send(ann, {"type": "status", "status": "online", "ref": "on"})  # assigned to her at once
        return cust, conv, ann

    def sweep_at(self, seconds: float) -> None:
        """Advance to ``seconds`` after now and run the workflow timer's sweep."""
        self.clock.advance(seconds)
        self.successResultOf(self.workflow.sweep_agents())

    def test_an_agent_gone_too_long_loses_conversations_to_the_queue(self) -> None:
        """Ann takes a conversation and disconnects: at offline_grace (60 s) she is offline,
        her conversation still hers; at requeue_offline_after (300 s) it is back in the queue:
        a queued event (reason agent_offline), the customer's position, Ann no participant."""
        cust, conv, ann = self.taken()
        self.handler.on_close(ann)
        self.sweep_at(0)  # recorded absent now
        self.sweep_at(60)
        self.assertEqual(self.successResultOf(self.wf.get_agent("ann")).status, "offline")
        self.sweep_at(239)  # 299 s gone
        self.assertEqual(self.events(conv), ["created", "queued", "assigned"])
        self.sweep_at(1)
        self.assertEqual(self.events(conv), ["created", "queued", "assigned", "queued"])
        back = cust.of_type("message")[-1]["event"]
        self.assertEqual((back["reason"], back["from"]), ("agent_offline", {"id": "ann"}))
        self.assertEqual(cust.of_type("queue")[-1]["position"], 1)
        participants = self.successResultOf(self.store.get_participants(conv))
        self.assertNotIn("ann", [p.user_id for p in participants])
        self.assertEqual(self.successResultOf(self.wf.get_item(conv)).state, "queued")
        self.sweep_at(600)
        self.assertEqual(self.events(conv), ["created", "queued", "assigned", "queued"])  # once

    def test_a_connected_agent_keeps_their_conversations(self) -> None:
        """Ann sets herself offline but stays connected: nothing is taken from her however
        long; gone and back within the window, nothing either."""
        cust, conv, ann = self.taken()
        self.send(ann, {"type": "status", "status": "offline", "ref": "off"})
        self.sweep_at(0)
        self.sweep_at(3600)
        self.assertEqual(self.events(conv), ["created", "queued", "assigned"])
        self.handler.on_close(ann)
        self.sweep_at(0)
        self.sweep_at(200)
        again, _ = self.agent("ann")  # back before 300 s
        self.sweep_at(200)
        self.sweep_at(600)
        self.assertEqual(self.events(conv), ["created", "queued", "assigned"])
        self.assertEqual(self.successResultOf(self.wf.get_item(conv)).agent_id, "ann")
