"""People, not ids (issue 15): staff messages carry the writer's display name,
and an agent's unread count starts when they join."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from tests.support import close_client, connect, start_server, token


class SenderNameTests(unittest.TestCase):
    @inlineCallbacks
    def test_agent_messages_carry_the_agents_name(self) -> Any:
        """An agent's message reaches the visitor with ``sender.name`` (the
        name in the agent's token when they wrote it), and keeps it in
        ``sync``; a customer's message never carries a name, even when the
        customer's token has one (names of customers stay in profiles)."""
        server = yield start_server(self)
        cust = yield connect(server.port, token("v1", name="Private Person"))
        agent = yield connect(server.port, token("ann", "agent", name="Ann"))
        cust.send({"type": "start", "ref": "s"})
        conv = (yield cust.next_frame("conversation"))["conversation"]["id"]
        agent.send({"type": "accept", "ref": "a", "conversation": conv})
        while (yield agent.next_frame("conversation")).get("ref") != "a":
            pass
        agent.send({"type": "message", "ref": "m1", "conversation": conv, "client_msg_id": "a-1", "body": "Hello"})
        while True:
            got = yield cust.next_frame("message")
            if got["kind"] == "text" and got["sender"]["role"] == "agent":
                break
        self.assertEqual(got["sender"], {"id": "ann", "role": "agent", "name": "Ann"})
        self.assertNotIn("event", got)
        cust.send({"type": "message", "ref": "m2", "conversation": conv, "client_msg_id": "c-1", "body": "Hi"})
        while True:
            mine = yield agent.next_frame("message")
            if mine["kind"] == "text" and mine["sender"]["role"] == "customer":
                break
        self.assertEqual(mine["sender"], {"id": "v1", "role": "customer"})
        cust.send({"type": "sync", "ref": "y", "conversation": conv, "after_seq": 0})
        history = yield cust.next_frame("history")
        texts = [m for m in history["messages"] if m["kind"] == "text"]
        self.assertEqual([m["sender"].get("name") for m in texts if m["sender"]["role"] == "agent"], ["Ann"])
        self.assertEqual([m["sender"].get("name") for m in texts if m["sender"]["role"] == "customer"], [None])
        for c in (cust, agent):
            yield close_client(c)

    @inlineCallbacks
    def test_unread_counts_from_the_agents_join(self) -> Any:
        """What was said before an agent joined (the visitor, the bot) is not
        unread for them: after accepting, their unread count is 0 on a new
        connection's ``hello``, and counts only the customer's later
        messages."""
        server = yield start_server(self)
        cust = yield connect(server.port, token("v2"))
        cust.send({"type": "start", "ref": "s"})
        conv = (yield cust.next_frame("conversation"))["conversation"]["id"]
        for i in range(3):
            cust.send({"type": "message", "ref": f"m{i}", "conversation": conv, "client_msg_id": f"c{i}",
                       "body": f"before {i}"})
            yield cust.next_frame("ack")
        agent = yield connect(server.port, token("bob", "agent", name="Bob"))
        agent.send({"type": "accept", "ref": "a", "conversation": conv})
        while (yield agent.next_frame("conversation")).get("ref") != "a":
            pass
        yield close_client(agent)
        again = yield connect(server.port, token("bob", "agent", name="Bob"))
        [state] = [c for c in again.frames[0]["conversations"] if c["id"] == conv]
        self.assertEqual(state["unread"], 0)
        cust.send({"type": "message", "ref": "after", "conversation": conv, "client_msg_id": "c-after",
                   "body": "after"})
        yield cust.next_frame("ack")
        yield close_client(again)
        third = yield connect(server.port, token("bob", "agent", name="Bob"))
        [state] = [c for c in third.frames[0]["conversations"] if c["id"] == conv]
        self.assertEqual(state["unread"], 1)
        for c in (cust, third):
            yield close_client(c)
